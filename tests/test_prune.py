"""Removing dead filters: exact equivalence, shapes, coupling, saving and loading."""

import json
import warnings

import pytest
import torch
from torch import nn

from implicit_sparsity.cli import main
from implicit_sparsity.errors import ProofError
from implicit_sparsity.measure import trace_features
from implicit_sparsity.models import build_model, feature_layers
from implicit_sparsity.prune import prune_model
from implicit_sparsity.train.slim_io import (EquivalenceError, check_before_writing, load_slim,
                                             save_slim)
from resnets import ResNet18Style


def kill_random_features(model, fraction=0.5, seed=0, positive_beta=0.3):
    """gamma = 0 on a random `fraction` of every BN feature; beta < 0 on most of them
    (a zero output) and beta > 0 on the rest (a constant output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for f in trace_features(model).features:
            dead = torch.rand(f.num_features, generator=g) < fraction
            f.bn.weight[dead] = 0.0
            beta = torch.where(torch.rand(f.num_features, generator=g) < positive_beta,
                               torch.tensor(0.4), torch.tensor(-0.4))
            f.bn.bias[dead] = beta[dead]


def with_running_stats(model, shape, steps=3, seed=0):
    """Give every BatchNorm non-trivial running statistics, then switch to eval mode."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(*shape, generator=g) * 2 + 0.5)
    return model.eval()


def assert_equivalent(model, slim, x, rtol=1e-5):
    with torch.no_grad():
        a, b = model(x), slim(x)
    assert (a - b).abs().max() <= rtol * a.abs().max(), (a - b).abs().max()


@pytest.mark.parametrize("name, shape", [("basicnet", (8, 3, 32, 32)),
                                         ("vgg16", (8, 3, 32, 32))])
def test_our_networks_prune_exactly(name, shape):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=10, width=0.125)
    kill_random_features(model)
    with_running_stats(model, shape)
    x = torch.randn(*shape)
    result = prune_model(model, x, check_data=[x], latency_batches=())
    assert_equivalent(model, result.model, torch.randn(*shape))
    assert result.verified() and result.equivalence.changed_predictions == 0
    removed = sum(len(l.removed) for l in result.layers)
    assert removed > 0 and result.macs["after"] < result.macs["before"]
    # shapes: each conv lost exactly its removed filters, the next conv the matching inputs
    convs = [block.conv for _, block in feature_layers(result.model)]
    for layer, conv in zip(result.layers, convs):
        assert conv.out_channels == layer.filters_after == \
            layer.filters_before - len(layer.removed)
        assert conv.weight.shape[0] == layer.filters_after
    for previous, conv in zip(convs, convs[1:]):
        assert conv.in_channels == previous.out_channels
    bns = [block.bn for _, block in feature_layers(result.model)]
    assert [bn.num_features for bn in bns] == [c.out_channels for c in convs]
    first_fc = result.model.classifier[0]
    assert first_fc.in_features == convs[-1].out_channels


def test_constant_filters_fold_into_the_fc_layer_or_stay():
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.125)
    layers = dict(feature_layers(model))
    with torch.no_grad():
        layers["C7"].bn.weight[:5] = 0.0   # constants 0.4 before GAP -> fc: foldable
        layers["C7"].bn.bias[:5] = 0.4
        layers["C3"].bn.weight[:2] = 0.0   # constants before a zero-padded conv: kept
        layers["C3"].bn.bias[:2] = 0.4
    with_running_stats(model, (8, 1, 28, 28))
    x = torch.randn(8, 1, 28, 28)
    result = prune_model(model, x, check_data=[x], latency_batches=())
    by_name = {l.name: l for l in result.layers}
    assert by_name["C7"].folded == [0, 1, 2, 3, 4] and by_name["C7"].filters_after == 59
    assert by_name["C3"].kept_constant == [0, 1] and by_name["C3"].filters_after == 16
    assert_equivalent(model, result.model, torch.randn(8, 1, 28, 28))


def test_a_layer_never_empties():
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.125)
    layers = dict(feature_layers(model))
    with torch.no_grad():
        layers["C4"].bn.weight.zero_()
        layers["C4"].bn.weight[9] = 1e-5      # the "most alive" of the dead
        layers["C4"].bn.bias.fill_(-1.0)
    with_running_stats(model, (8, 1, 28, 28))
    x = torch.randn(8, 1, 28, 28)
    result = prune_model(model, x, check_data=[x], latency_batches=())
    c4 = {l.name: l for l in result.layers}["C4"]
    assert c4.filters_after == 1 and c4.kept_last == [9]
    assert dict(feature_layers(result.model))["C4"].conv.out_channels == 1
    assert_equivalent(model, result.model, torch.randn(8, 1, 28, 28))


def test_residual_network_prunes_only_whole_coupled_groups():
    torch.manual_seed(0)
    model = ResNet18Style(width=8)
    kill_random_features(model, fraction=0.4, seed=1)
    with torch.no_grad():
        # channel 3 of the first stage's tensor: dead in the stem and zero in both residual
        # branches that add to it -> removable from the whole group
        model.stem[1].weight[3] = 0.0
        model.stem[1].bias[3] = -1.0
        for block in model.stages[:2]:
            block.bn2.weight[3] = 0.0
            block.bn2.bias[3] = 0.0
        # channel 5: dead in the stem, but a branch adds a constant -> must stay everywhere
        model.stem[1].weight[5] = 0.0
        model.stem[1].bias[5] = -1.0
        model.stages[0].bn2.weight[5] = 0.7
    with_running_stats(model, (4, 3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    result = prune_model(model, x, check_data=[x], latency_batches=())
    assert_equivalent(model, result.model, torch.randn(4, 3, 32, 32))
    layers = {l.name: l for l in result.layers}
    assert 3 in layers["stem.0"].removed and 5 not in layers["stem.0"].removed
    assert 5 in layers["stem.0"].kept_coupled
    assert 3 in layers["stages.0.conv2"].removed and 3 in layers["stages.1.conv2"].removed
    assert result.model.stem[0].out_channels == result.model.stages[0].conv2.out_channels
    # a block's inner feature is not coupled: its dead filters go when their output is zero
    assert any(layers[f"stages.{i}.conv1"].removed for i in range(8))
    # residual branch ends with gamma = 0 and beta != 0 add a constant: they stay
    assert sum(len(l.kept_constant) for l in result.layers) > 0


def test_activation_criterion_and_batchnorm_folding():
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.125)
    kill_random_features(model, positive_beta=0.0)
    with_running_stats(model, (8, 1, 28, 28))
    corpus = [torch.randn(8, 1, 28, 28) for _ in range(3)]
    result = prune_model(model, corpus[0], criterion="activation", corpus=corpus,
                         check_data=corpus, fold_bn=True, latency_batches=())
    assert result.folded_batchnorm == 7
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    assert_equivalent(model, result.model, corpus[1], rtol=1e-4)
    assert sum(len(l.removed) for l in result.layers) > 0


def test_save_refuse_and_load(tmp_path, fashion_dir):
    from implicit_sparsity.train import TrainConfig

    torch.manual_seed(0)
    config = TrainConfig(data_dir=str(fashion_dir), width="0.125")
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.125)
    kill_random_features(model)
    with_running_stats(model, (8, 1, 28, 28))
    x = torch.randn(8, 1, 28, 28)
    result = prune_model(model, x, check_data=[x], latency_batches=())
    files = save_slim(result, tmp_path / "slim", x, config=config.resolved().to_dict())
    loaded = load_slim(files["slim"])
    exported = torch.export.load(files["exported"]).module()  # no code of ours needed
    with torch.no_grad():
        expected = result.model(x)
        assert torch.equal(loaded(x), expected)
        assert torch.allclose(exported(x), expected, atol=1e-6)
        assert torch.allclose(exported(x[:3]), expected[:3], atol=1e-6)  # any batch size
        with warnings.catch_warnings():  # PyTorch deprecates TorchScript; it still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(files["torchscript"]))
        assert torch.allclose(scripted(x), expected, atol=1e-6)
    report = json.loads(files["report"].read_text())
    assert report["equivalence"]["changed_predictions"] == 0 and not report["forced"]
    # a threshold that calls live filters dead: each removal is checked and undone, so the
    # result stays exact and says what it kept and why
    wide = prune_model(model, x, check_data=[x], gamma_threshold=2.0, latency_batches=())
    assert wide.verified()
    assert sum(len(l.kept_unsafe) for l in wide.layers) > 0
    assert any("outputs moved by" in r for l in wide.layers for r in l.reasons)
    assert "whose removal would not be exact" in wide.table()


def test_a_proof_that_fails_raises_unless_forced(tmp_path):
    """A channel dead on the corpus (and the example batch) but alive on the check data:
    the per-removal check passes, the proof on the check data does not."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 1.0]).reshape(2, 1, 1, 1))
        model[0].weight[1] = -1.0
    model.eval()
    negative, positive = -torch.rand(4, 1, 5, 5) - 0.1, torch.rand(4, 1, 5, 5) + 0.1
    kwargs = dict(criterion="activation", corpus=[negative], check_data=[positive],
                  latency_batches=())
    with pytest.raises(ProofError, match="changed the outputs"):  # exact or refused
        prune_model(model, negative, **kwargs)
    bad = prune_model(model, negative, force=True, **kwargs)
    assert not bad.verified() and bad.layers[0].filters_after == 1
    with pytest.raises(EquivalenceError, match="refusing to write"):
        save_slim(bad, tmp_path / "bad", negative)
    assert not (tmp_path / "bad").exists()
    check_before_writing(bad, 1e-4, force=True)  # the override lets it through


def test_prune_command(tmp_path, fashion_dir, capsys):
    from implicit_sparsity.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[2], lam=1e-3), run,
          verbose=False)
    code = main(["prune", str(run), "--out", str(tmp_path / "slim"), "--json",
                 str(tmp_path / "p.json"), "--no-latency"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "proof on 60 samples" in out and "reloaded outputs differ by at most 0.0e+00" in out
    report = json.loads((tmp_path / "p.json").read_text())
    assert [l["name"] for l in report["layers"]] == [f"C{i}" for i in range(1, 8)]
    assert (tmp_path / "slim" / "slim.pt2").is_file()
    # a threshold that calls every filter dead: only what is exact goes, the rest is kept
    # with its reason, and the model written predicts what the original did
    assert main(["prune", str(run), "--out", str(tmp_path / "wide"), "--gamma-threshold", "5",
                 "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "whose removal would not be exact" in out and "0 of 60 predictions changed" in out


def test_prune_command_tunes_for_latency(tmp_path, fashion_dir, capsys):
    """--tune: every candidate proven and timed; the fastest (if not the exact minimum) is
    written beside the exact-minimum model and loads back to the same outputs."""
    from implicit_sparsity.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[1], lam=1e-3), run,
          verbose=False)
    assert main(["prune", str(run), "--out", str(tmp_path / "slim"), "--gamma-threshold",
                 "0.9", "--no-latency", "--tune", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "exact minimum" in out and "BN folded, widths to x8, channels_last" in out
    assert "<- latency-tuned" in out and "interleaved rounds" in out
    tuned = tmp_path / "slim" / "latency_tuned"
    assert ("nothing more to write" in out) != tuned.is_dir()
    if tuned.is_dir():
        report = json.loads((tuned / "prune_report.json").read_text())
        assert report["layout"] in ("contiguous", "channels_last")
        # 7 global candidates, one per layout whose per-layer rounding measured faster
        per_layer = [c for c in report["latency_candidates"] if "per layer" in c["name"]]
        assert len(report["latency_candidates"]) == 7 + len(per_layer) <= 9
        assert set(report["per_layer_rounding_trials"]) == {"contiguous", "channels_last"}
        x = torch.randn(4, 1, 28, 28)
        with torch.no_grad():
            assert torch.allclose(load_slim(tuned)(x), load_slim(tmp_path / "slim")(x),
                                  atol=1e-4)
