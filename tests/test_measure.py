"""Sparsity by |gamma| and by activation, universality, % params, on our nets and others."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implicit_sparsity.cli import main
from implicit_sparsity.measure import (ModelTraceError, NoBatchNormError,
                                       activation_statistics, analyze, trace_features)
from implicit_sparsity.models import build_model, feature_layers
from resnets import TinyResNet


def tiny_basicnet():
    torch.manual_seed(0)
    return build_model("basicnet", in_channels=1, num_classes=10, width=0.125).eval()


def corpus(n=24, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 28, 28, generator=g) for _ in range(n // batch)]


def test_known_dead_features_by_both_criteria():
    model = tiny_basicnet()
    layers = dict(feature_layers(model))
    with torch.no_grad():
        for block in layers.values():  # non-negative weights and inputs, beta = 1:
            block.conv.weight.abs_()       # every feature is alive to begin with
            block.bn.bias.fill_(1.0)
        layers["C2"].bn.weight[[0, 5]] = 0.0      # gamma = 0, beta < 0: dead by both
        layers["C2"].bn.bias[[0, 5]] = -0.3
        layers["C3"].conv.weight[[1, 2, 3]] = 0.0  # zeroed filters, beta < 0: dead by act only
        layers["C3"].bn.bias[[1, 2, 3]] = -0.2
        layers["C4"].bn.weight[[7]] = 1e-4        # gamma ~ 0 but beta > 0: a constant, alive
        layers["C4"].bn.bias[[7]] = 0.5
    report = analyze(model, [x.abs() for x in corpus()])
    by_name = {l.name: l for l in report.layers}
    assert (by_name["C2"].inactive_gamma, by_name["C2"].inactive_activation) == (2, 2)
    assert (by_name["C3"].inactive_gamma, by_name["C3"].inactive_activation) == (0, 3)
    assert (by_name["C4"].inactive_gamma, by_name["C4"].inactive_activation) == (1, 0)
    assert by_name["C4"].agree == 31 and by_name["C3"].agree == 13
    assert report.total("gamma") == (3, 232) and report.total("activation") == (5, 232)
    assert report.samples == 24
    # the dead C2 features have 0% universality; the constant C4 feature is universal
    assert by_name["C2"].universality[0] == 0.0 and by_name["C4"].universality[7] == 100.0


def test_percent_params_pruned_by_hand():
    model = tiny_basicnet()  # widths 8, 16, 16, 32, 32, 64, 64; C1 5x5 on 1 channel
    with torch.no_grad():
        dict(feature_layers(model))["C1"].bn.weight[:3] = 0.0
        dict(feature_layers(model))["C7"].bn.weight[:10] = 0.0
    report = analyze(model, criterion="gamma")
    total = (1 * 8 * 25 + 8 * 16 * 9 + 16 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9
             + 64 * 64 * 9)
    # C1 keeps 5 of 8 filters (and C2 reads 5 input channels); C7 keeps 54 of 64 filters
    freed = 3 * 25 + 3 * 16 * 9 + 10 * 64 * 9
    assert report.conv_params == total
    assert report.conv_params_kept["gamma"] == total - freed
    assert report.percent_params_pruned("gamma") == pytest.approx(100 * freed / total)


class ThresholdNet(nn.Module):
    """1x1 conv (weight 1) -> BN (identity statistics, gamma 1, beta -0.5) -> ReLU: the
    pooled activation of a sample is max(0, max pixel - 0.5)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.bn.bias.fill_(-0.5)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def images_with_max(values):
    x = torch.zeros(len(values), 1, 3, 3)
    x[:, 0, 1, 1] = torch.tensor(values)
    return x


def test_a_feature_alive_on_one_sample_only_is_alive():
    model = ThresholdNet().eval()
    values = [0.0] * 30 + [0.9] + [0.2] * 9
    stats = activation_statistics(model, [images_with_max(values[:20]),
                                          images_with_max(values[20:])])
    name = next(iter(stats.max_activation))
    assert stats.max_activation[name].item() == pytest.approx(0.4, abs=1e-5)
    assert not stats.inactive()[name].item()
    assert stats.universality[name].item() == pytest.approx(100 / 40)
    dead = activation_statistics(model, [images_with_max([0.3] * 10)])
    assert dead.inactive()[name].item() and dead.universality[name].item() == 0.0


def test_universality_on_hand_made_activations():
    model = ThresholdNet().eval()
    # pooled activations 1.0, 0.01, 0.002, 0.0005, 0: normalized by 1.0 -> 3 exceed 1e-3
    values = [1.5, 0.51, 0.502, 0.5005, 0.1]
    stats = activation_statistics(model, [images_with_max(values)])
    assert stats.universality["conv"].item() == pytest.approx(60.0)
    strict = activation_statistics(model, [images_with_max(values)], universality_threshold=0.05)
    assert strict.universality["conv"].item() == pytest.approx(20.0)


def test_residual_model_features_and_coupling():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    traced = trace_features(model)
    features = {f.name: f for f in traced.features}
    assert list(features) == ["stem.0", "layer1.conv1", "layer1.conv2", "layer2.conv1",
                              "layer2.conv2", "layer2.down.0"]
    assert all(f.bn is not None for f in features.values())
    # a block's first conv feeds only the second: its channels can go on their own
    assert not features["layer1.conv1"].coupled and features["layer1.conv1"].has_activation
    assert features["layer1.conv1"].consumers == ["layer1.conv2"]
    # the stem output and every branch end meet in residual adds: coupled
    for name in ("stem.0", "layer1.conv2", "layer2.conv2", "layer2.down.0"):
        assert features[name].coupled, name
    assert not features["layer2.conv2"].has_activation  # bn2 -> add: BN output recorded
    with torch.no_grad():
        model.layer1.bn1.weight[:2] = 0.0
        model.layer1.bn1.bias[:2] = -1.0
        model.layer2.bn2.weight[:3] = 0.0
        model.layer2.bn2.bias[:3] = -1.0  # gamma 0 but adds -1 to the residual sum: alive
    x = torch.randn(6, 1, 12, 12)
    before = model(x)
    report = analyze(model, [x])
    layers = {l.name: l for l in report.layers}
    assert (layers["layer1.conv1"].inactive_gamma, layers["layer1.conv1"].inactive_activation) \
        == (2, 2)
    assert (layers["layer2.conv2"].inactive_gamma, layers["layer2.conv2"].inactive_activation) \
        == (3, 0)
    # coupled features free no parameters; layer1.conv1's dead channels free its own filters
    # and layer1.conv2's input slices
    freed = 2 * 8 * 9 + 8 * 2 * 9
    assert report.conv_params - report.conv_params_kept["gamma"] == freed
    assert torch.equal(model(x), before)  # measuring changed nothing in the model
    assert model.training is False


def test_model_without_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    with pytest.raises(NoBatchNormError, match="no BatchNorm2d directly after a convolution"):
        analyze(model, criterion="gamma")
    with torch.no_grad():
        model[0].weight[1] = 0.0
        model[0].bias[1] = -1.0
    report = analyze(model, [torch.randn(4, 1, 8, 8)], criterion="activation")
    assert report.layers[0].inactive_activation == 1 and report.layers[0].inactive_gamma is None


def test_untraceable_model_is_a_clear_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ModelTraceError, match="cannot trace DataDependent"):
        analyze(DataDependent(), criterion="gamma")


def test_names_follow_the_paper_for_our_networks():
    model = build_model("vgg11", in_channels=3, num_classes=10, width=0.125)
    names = [f.name for f in trace_features(model).features]
    assert names == [f"C{i}" for i in range(1, 9)]
    assert not any(f.coupled for f in trace_features(model).features)


def test_monitor_in_the_training_loop(fashion_dir, tmp_path):
    from implicit_sparsity.measure import SparsityMonitor
    from implicit_sparsity.train import TrainConfig, load_bn_history, train

    config = TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[2])
    data = corpus(n=16, batch=8)
    monitor = SparsityMonitor(tmp_path / "monitor", data=data, tensorboard=False)
    train(config, tmp_path / "run", callbacks=(monitor,), verbose=False)
    lines = [json.loads(l) for l in (tmp_path / "monitor" / "sparsity.jsonl").read_text()
             .splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert set(lines[0]["sparsity_gamma"]) == {f"C{i}" for i in range(1, 8)}
    assert "sparsity_activation_total" in lines[0]
    assert load_bn_history(tmp_path / "monitor")["C3"]["gamma"].shape == (2, 8)


def test_monitor_writes_tensorboard_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from implicit_sparsity.measure import SparsityMonitor

    monitor = SparsityMonitor(tmp_path, tensorboard=True)
    monitor(1, tiny_basicnet())
    assert any((tmp_path / "tensorboard").iterdir())


def test_analyze_command(fashion_dir, tmp_path, capsys):
    from implicit_sparsity.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[2], lam=1e-3), run,
          verbose=False)
    assert main(["analyze", str(run), "--json", str(tmp_path / "a.json"),
                 "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "(116)" in out and "|gamma| < 0.001" in out and "act <= 1e-12" in out
    payload = json.loads((tmp_path / "a.json").read_text())
    assert [l["name"] for l in payload["layers"]] == [f"C{i}" for i in range(1, 8)]
    assert payload["samples"] == 120 and payload["layers"][0]["universality_histogram"]
    for name in ("layer_sparsity.png", "universality.png", "gamma_beta_history.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    assert main(["analyze", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_redo_dormancy_and_the_sensitivity_table_by_hand():
    """Three units with constant outputs 1, 3 and 0 after ReLU: mean |h| (1, 3, 0), layer
    mean 4/3, ReDo scores (0.75, 2.25, 0); |gamma| (1, 1e-3.5, 2e-2)."""
    from implicit_sparsity.measure.activation import activation_statistics
    from implicit_sparsity.measure.sensitivity import (sensitivity, sensitivity_json,
                                                       sensitivity_table)

    model = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.zero_()  # the conv outputs 0: the BN output is beta
        model[1].weight.copy_(torch.tensor([1.0, 10 ** -3.5, 2e-2]))
        model[1].bias.copy_(torch.tensor([1.0, 3.0, -1.0]))
    model.eval()
    x = [torch.randn(4, 1, 5, 5), torch.randn(3, 1, 5, 5)]
    stats = activation_statistics(model, x, universality=False, mean_abs=True)
    name = next(iter(stats.mean_abs))
    assert torch.allclose(stats.mean_abs[name], torch.tensor([1.0, 3.0, 0.0]))
    assert torch.allclose(stats.dormancy()[name], torch.tensor([0.75, 2.25, 0.0]))
    table = sensitivity(model, x, gamma_thresholds=(1e-4, 1e-3, 1e-1),
                        activation_thresholds=(0.0, 0.5), taus=(0.0, 0.8, 3.0))[name]
    assert table["gamma"] == {1e-4: 0, 1e-3: 1, 1e-1: 2}
    assert table["activation"] == {0.0: 1, 0.5: 1}
    assert table["dormant"] == {0.0: 1, 0.8: 2, 3.0: 3}
    text = sensitivity_table({name: table})
    assert "ReDo tau <= 0.8" in text and "|gamma| < 0.001" in text
    assert sensitivity_json({name: table})[name]["dormant"] == {"0": 1, "0.8": 2, "3": 3}


def test_analyze_prints_the_sensitivity_table(tmp_path, fashion_dir, capsys):
    import json

    from implicit_sparsity.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[1], lam=1e-3), run,
          verbose=False)
    assert main(["analyze", str(run), "--sensitivity", "--no-universality", "--json",
                 str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "ReDo tau <= 0.1" in out and "act <= 1e-12" in out and "|gamma| < 0.01" in out
    saved = json.loads((tmp_path / "a.json").read_text())["sensitivity"]
    assert set(saved["C1"]) == {"features", "gamma", "activation", "dormant"}
