"""Any CNN, exactly or not at all: the structural-pattern zoo (tests/zoo.py), each with
random dead patterns, measured and pruned; the slim model computes what the original did
(within 1e-5 of max |output|) or the removal is refused with one line. Never a crash."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from implicit_sparsity.errors import ProofError
from implicit_sparsity.measure import analyze, trace_features
from implicit_sparsity.prune import prune_model
from implicit_sparsity.prune.surgery import constant_outputs
from zoo import ZOO, BNActNet, ConvClassifier, NoAffine, SlotsAndActivations, plant_dead, warm_up

PATTERNS_PER_MODEL = 20
TOLERANCE = 1e-5  # of max |output|; float32 rounding of an exact removal is ~1e-7 of it


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-12))


#: A refusal is not a result: over its PATTERNS_PER_MODEL patterns each replica must remove at
#: least this many planted filters (half of what was removed on 2026-12-01), and refuse at
#: most MAX_REFUSED patterns. 0 for ConvNeXt's LayerNorm, which the rules never remove under.
MIN_REMOVED = {"inverted-residual-se": 730, "grouped-conv": 54, "channel-shuffle": 116,
               "densenet-preact": 77, "convnext-layernorm": 0, "conv-classifier": 106,
               "bn-act-module": 38, "identity-slot-clamp-softplus": 113, "linear-in-add": 107,
               "padded-avgpool": 110, "bn-without-affine": 106, "resnet": 489, "vgg": 199}
MAX_REFUSED = 2


@pytest.mark.parametrize("name", list(ZOO))
def test_random_dead_patterns_prune_exactly_or_are_refused(name):
    worst, removed, refused = 0.0, 0, 0
    for seed in range(PATTERNS_PER_MODEL):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = warm_up(ZOO[name](), generator)
        plant_dead(model, generator)
        x = torch.randn(16, 3, 16, 16, generator=generator)
        fresh = torch.randn(16, 3, 16, 16, generator=generator)
        criterion = "gamma" if seed % 2 == 0 else "activation"
        # by |gamma| a dead channel is dead on any input: prove it on other data; by
        # activation it is dead on the corpus: prove it there
        check = fresh if criterion == "gamma" else x
        try:
            result = prune_model(model, x, criterion=criterion, corpus=[x],
                                 check_data=[check], latency_batches=(), tolerance=TOLERANCE)
        except ProofError as error:  # a clean refusal is allowed, a crash is not
            assert "\n" not in str(error)
            refused += 1
            continue
        assert result.verified(TOLERANCE)
        with torch.no_grad():
            worst = max(worst, relative(model(check), result.model(check)))
        traced = trace_features(result.model)
        for decision, feature in zip(result.layers, traced.features):  # counts are exact
            assert decision.filters_after == feature.num_features
            assert decision.filters_before - decision.filters_after == len(decision.removed)
            assert len(set(decision.removed)) == len(decision.removed)
            # alive channels go only through a depthwise partner that lost that channel
            assert set(decision.removed_through) <= set(decision.removed)
            assert len(decision.removed) - len(decision.removed_through) <= decision.dead
        removed += sum(len(l.removed) for l in result.layers)
    print(f"{name}: worst relative difference {worst:.1e}, {removed} filters removed, "
          f"{refused} of {PATTERNS_PER_MODEL} refused")
    assert worst <= TOLERANCE
    assert removed >= MIN_REMOVED[name] and refused <= MAX_REFUSED, (removed, refused)


def test_a_models_outputs_are_never_pruned():
    generator = torch.Generator().manual_seed(0)
    model = warm_up(ConvClassifier(), generator)
    with torch.no_grad():  # half the class scores dead: they stay, the output keeps 10
        model.classifier[1].weight[:5] = 0.0
        model.classifier[1].bias[:5] = -1.0
    x = torch.randn(8, 3, 16, 16, generator=generator)
    result = prune_model(model, x, check_data=[x], latency_batches=())
    assert result.model(x).shape == (8, 10)
    last = result.layers[-1]
    assert last.filters_after == 10 and "model's output" in " ".join(last.reasons)


def test_the_finder_understands_bn_act_modules_slots_and_activations():
    traced = trace_features(BNActNet())
    assert all(f.gamma is not None and f.bn_has_activation for f in traced.features)
    model = BNActNet()
    with torch.no_grad():
        model.bn1.weight.zero_()
        model.bn1.bias.copy_(torch.linspace(-1, 1, 8))
    first = trace_features(model).features[0]
    expected = nn.functional.silu(torch.linspace(-1, 1, 8))  # the module's own activation
    assert torch.allclose(constant_outputs(first), expected)

    slots = trace_features(SlotsAndActivations()).features
    assert [f.has_activation for f in slots] == [True, True, True]
    assert [f.nonnegative_output for f in slots] == [True, True, False]  # clamp, hardtanh
    model = SlotsAndActivations()
    with torch.no_grad():
        model.bn3.weight.zero_()
        model.bn3.bias.zero_()
    softplus = trace_features(model).features[2]
    assert torch.allclose(constant_outputs(softplus), torch.full((16,), 0.6931), atol=1e-4)


def test_batchnorm_without_affine_is_measured_by_activation():
    model = warm_up(NoAffine(), torch.Generator().manual_seed(0))
    x = torch.randn(8, 3, 16, 16)
    report = analyze(model, [x], criterion="both")
    by_name = {l.name: l for l in report.layers}
    no_gamma = [f.name for f in trace_features(model).features if f.gamma is None]
    assert len(no_gamma) == 1
    assert by_name[no_gamma[0]].inactive_gamma is None
    assert by_name[no_gamma[0]].inactive_activation is not None


USER_MODULE = '''
import torch
from torch import nn


def build(width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, groups=1, bias=False),
        nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * width, 4))
'''


def test_analyze_and_prune_a_users_own_model_from_the_command_line(tmp_path, monkeypatch,
                                                                   capsys):
    """`--model module:function --weights state.pt --data folder`: a factory in the user's
    folder, a state dict with dead filters, an image folder of PNGs (class folders)."""
    import numpy as np

    from conftest import save_png
    from implicit_sparsity.cli import main

    (tmp_path / "usernets.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from usernets import build

    torch.manual_seed(0)
    model = build(width=8)
    warm = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, 12, 12, generator=warm))
        model[1].weight[:3] = 0.0   # three dead filters in the first layer (beta < 0)
        model[1].bias[:3] = -0.2
        model[4].weight[5:9] = 0.0  # four in the second, constant (beta > 0): folded
        model[4].bias[5:9] = 0.3
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    rng = np.random.default_rng(0)
    for i in range(12):
        save_png(tmp_path / "images" / f"class{i % 2}" / f"{i}.png",
                 rng.integers(0, 255, (3, 12, 12), dtype=np.uint8))
    source = ["--model", "usernets:build", "--model-args", "{width: 8}", "--weights",
              "weights.pt", "--data", "images", "--device", "cpu"]
    assert main(["analyze", *source, "--json", "a.json"]) == 0
    out = capsys.readouterr().out
    assert "Sequential from usernets:build; 12 images from images" in out
    import json

    layers = json.loads((tmp_path / "a.json").read_text())["layers"]
    assert [l["inactive_gamma"] for l in layers] == [3, 4]
    assert main(["prune", *source, "--out", "slim", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "0 of 12 predictions changed" in out
    exported = torch.export.load(tmp_path / "slim" / "slim.pt2").module()
    x = torch.rand(5, 3, 12, 12)
    with torch.no_grad():
        assert relative(model.eval()(x), exported(x)) <= TOLERANCE
    assert exported.state_dict()["0.weight"].shape[0] == 5  # the dead filters are gone
    # a tensor file works as data too; a bad factory is one line
    torch.save({"x": torch.rand(6, 3, 12, 12), "y": torch.zeros(6, dtype=torch.long)},
               tmp_path / "data.pt")
    assert main(["analyze", "--model", "usernets:build", "--weights", "weights.pt",
                 "--data", "data.pt", "--no-universality"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--model", "usernets:nothing", "--data", "data.pt"]) == 2
    assert "has no function nothing" in capsys.readouterr().err
