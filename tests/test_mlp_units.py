"""Units beyond conv filters: MLP hidden units (Linear -> [BatchNorm1d] -> activation) and a
Transformer block's MLP units are found, measured (activation, ReDo's dormancy) and, when
exactly dead, removed with the same proof as conv filters; the paper's default counts conv
filters only."""

import pytest
import torch
from torch import nn

from implicit_sparsity.errors import ImplicitSparsityError
from implicit_sparsity.measure.activation import activation_statistics
from implicit_sparsity.measure.features import ALL_UNITS, MLP_UNITS, trace_features
from implicit_sparsity.measure.report import analyze
from implicit_sparsity.measure.sensitivity import sensitivity
from implicit_sparsity.models import build_model
from implicit_sparsity.prune import prune_model
from implicit_sparsity.train.recycle import recyclable


class MLP(nn.Module):
    """Linear -> ReLU -> Linear -> BN1d -> ReLU -> Linear."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(20, 32), nn.ReLU()
        self.fc2, self.bn2, self.act2 = nn.Linear(32, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU()
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.act2(self.bn2(self.fc2(self.act1(self.fc1(x))))))


class Block(nn.Module):
    """A pre-norm Transformer block written by hand (tokens [B, T, C])."""

    def __init__(self, dim=16, hidden=48, heads=2):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads,
                                                                         batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.act, self.drop, self.fc2 = (nn.Linear(dim, hidden), nn.GELU(),
                                                   nn.Dropout(0.1), nn.Linear(hidden, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm2(x)))))


class TinyViT(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 7, stride=7)  # 28x28 -> 4x4 patches
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(1))


def kill_linear_units(linear: nn.Linear, units, bias: float) -> None:
    """Rows of zeros and a constant bias: ReLU(bias < 0) = 0, GELU(0) = 0, for every input."""
    with torch.no_grad():
        linear.weight[units] = 0.0
        linear.bias[units] = bias


def test_mlp_units_are_found_only_when_asked():
    model = MLP()
    assert trace_features(model).features == []  # the paper counts conv filters only
    features = {f.name: f for f in trace_features(model, ALL_UNITS).features}
    assert set(features) == {"fc1", "fc2"}  # the head has no activation: no hidden units
    assert features["fc1"].consumers == ["fc2"] and not features["fc1"].coupled
    assert features["fc2"].bn is model.bn2 and features["fc2"].gamma is model.bn2.weight
    assert features["fc2"].consumers == ["head"] and features["fc1"].num_features == 32
    vit = {f.name: f for f in trace_features(TinyViT(), ALL_UNITS).features}
    assert set(vit) == {"embed", "blocks.0.fc1", "blocks.1.fc1"}
    assert vit["blocks.0.fc1"].consumers == ["blocks.0.fc2"]  # through GELU and dropout
    assert vit["embed"].coupled  # its tokens feed attention and residual adds
    # BasicNet's fc layer is an MLP unit layer too, named by its path beside C1..C7
    names = [f.name for f in trace_features(build_model("basicnet", in_channels=1,
                                                        num_classes=10, width=0.125),
                                            ALL_UNITS).features]
    assert names[:7] == [f"C{i}" for i in range(1, 8)] and names[7:] == ["classifier.0"]


def test_activation_and_dormancy_of_mlp_and_token_units_by_hand():
    torch.manual_seed(0)
    model = MLP().eval()
    kill_linear_units(model.fc1, [3, 7], -1.0)
    x = torch.randn(64, 20)
    stats = activation_statistics(model, [x], universality=False, mean_abs=True,
                                  units=ALL_UNITS)
    hidden = torch.relu(model.fc1(x)).detach()
    assert torch.allclose(stats.max_activation["fc1"], hidden.abs().amax(0))
    assert torch.allclose(stats.mean_abs["fc1"], hidden.abs().mean(0), atol=1e-6)
    assert stats.inactive()["fc1"].nonzero().flatten().tolist() == [3, 7]
    scores = stats.dormancy()["fc1"]
    assert torch.allclose(scores, hidden.mean(0) / hidden.mean(0).mean(), atol=1e-6)
    # tokens: max and mean over samples and tokens, per unit of the last dimension
    vit = TinyViT().eval()
    images = torch.randn(6, 1, 28, 28)
    stats = activation_statistics(vit, [images], universality=False, mean_abs=True,
                                  units=ALL_UNITS)
    captured = {}
    hook = vit.blocks[0].act.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    with torch.no_grad():
        vit(images)
    hook.remove()
    acts = captured["a"]  # [B, tokens, 48]
    assert stats.max_activation["blocks.0.fc1"].shape == (48,)
    assert torch.allclose(stats.max_activation["blocks.0.fc1"], acts.abs().amax(dim=(0, 1)))
    assert torch.allclose(stats.mean_abs["blocks.0.fc1"], acts.abs().mean(dim=(0, 1)),
                          atol=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_removing_dead_mlp_units_is_exact(seed):
    """The conv zoo's property, for MLP units: any dead pattern, removed, changes nothing
    (float64); the layer keeps one unit when every unit is dead."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLP().double().eval()
    vit = TinyViT().double().eval()
    plans = [(model, model.fc1, -0.5), (vit, vit.blocks[0].fc1, 0.0),
             (vit, vit.blocks[1].fc1, 0.0)]
    for _net, layer, bias in plans:
        dead = torch.rand(layer.out_features, generator=generator) < 0.5
        if seed == 0:
            dead[:] = True  # every unit dead: one stays
        kill_linear_units(layer, dead.nonzero().flatten().tolist(), bias)
    with torch.no_grad():  # dead by |gamma| too: BN1d with gamma 0 and beta <= 0
        keep = torch.rand(16, generator=generator) < 0.5
        model.bn2.weight[~keep] = 0.0
        model.bn2.bias[~keep] = -0.25
    for net, x in ((model, torch.randn(32, 20, dtype=torch.float64, generator=generator)),
                   (vit, torch.randn(8, 1, 28, 28, dtype=torch.float64, generator=generator))):
        result = prune_model(net, x, criterion="activation", corpus=[x], check_data=[x],
                             latency_batches=(), units=ALL_UNITS)
        with torch.no_grad():
            assert torch.allclose(result.model(x), net(x), rtol=0, atol=1e-12)
        for decision in result.layers:
            assert decision.filters_after >= 1
            if decision.dead and decision.name != "embed":
                assert decision.filters_after == decision.filters_before - len(decision.removed)
                assert len(decision.removed) == min(decision.dead, decision.filters_before - 1)


class TorchEncoderNet(nn.Module):
    """Tokens through torch's own nn.TransformerEncoder (an fx leaf with a fused path)."""

    def __init__(self, batch_first: bool, norm_first: bool, dim=16, hidden=40):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, 2, hidden, dropout=0.1, activation="relu",
                                           batch_first=batch_first, norm_first=norm_first)
        self.embed = nn.Linear(6, dim)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.extra = nn.TransformerEncoderLayer(dim, 2, hidden, dropout=0.0,
                                                activation=nn.GELU(), batch_first=batch_first)
        self.head, self.batch_first = nn.Linear(dim, 3), batch_first

    def forward(self, x):  # x: [B, T, 6]
        tokens = self.embed(x if self.batch_first else x.transpose(0, 1))
        out = self.extra(self.encoder(tokens))
        return self.head(out.mean(1 if self.batch_first else 0))


@pytest.mark.parametrize("batch_first,norm_first", [(True, True), (False, False)])
def test_torch_transformer_encoder_units_are_measured_and_removed_exactly(batch_first,
                                                                          norm_first):
    """nn.TransformerEncoder(Layer)'s MLP units: found through the modules' training path,
    measured per sample whatever the layout, and their dead ones removed exactly (float64;
    the model's eval forward takes torch's fused path where it can)."""
    torch.manual_seed(0)
    model = TorchEncoderNet(batch_first, norm_first).double().eval()
    names = ["encoder.layers.0.linear1", "encoder.layers.1.linear1", "extra.linear1"]
    traced = trace_features(model, ALL_UNITS)
    assert [f.name for f in traced.features] == names
    assert all(not f.coupled and f.kind == "linear" for f in traced.features)
    assert traced.features[0].consumers == ["encoder.layers.0.linear2"]
    dead = {"encoder.layers.0.linear1": [0, 3, 7], "encoder.layers.1.linear1": [1],
            "extra.linear1": [2, 5]}
    for name, units in dead.items():
        kill_linear_units(model.get_submodule(name), units, -1.0 if "encoder" in name else 0.0)
    x = torch.randn(12, 5, 6, dtype=torch.float64)
    stats = activation_statistics(model, [x], units=ALL_UNITS)
    assert stats.samples == 12  # per sample, not per token, in either layout
    for name, units in dead.items():
        assert stats.max_activation[name].eq(0).nonzero().flatten().tolist() == units
    result = prune_model(model, x, criterion="activation", corpus=[x], check_data=[x],
                         latency_batches=(), units=ALL_UNITS)
    assert {d.name: len(d.removed) for d in result.layers} == {n: len(u) for n, u in dead.items()}
    assert result.model.encoder.layers[0].linear1.out_features == 40 - 3
    assert result.model.encoder.layers[0].linear2.in_features == 40 - 3
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), rtol=0, atol=1e-12)


def test_sensitivity_counts_mlp_units():
    torch.manual_seed(1)
    model = MLP().eval()
    kill_linear_units(model.fc1, [0, 1, 2], -1.0)
    x = torch.randn(50, 20)
    table = sensitivity(model, [x], units=ALL_UNITS)
    assert table["fc1"]["features"] == 32 and table["fc1"]["activation"][0.0] >= 3
    assert table["fc1"]["dormant"][0.0] >= 3 and table["fc2"]["gamma"][1e-3] == 0


USER_MODULE = '''
from torch import nn


def build():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 4))
'''


def test_prune_and_analyze_mlp_units_from_the_command_line(tmp_path, monkeypatch, capsys):
    import json

    from implicit_sparsity.cli import main

    (tmp_path / "mlpnets.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from mlpnets import build

    torch.manual_seed(0)
    model = build()
    kill_linear_units(model[5], [2, 5, 11, 20], -0.3)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.save({"x": torch.rand(12, 3, 10, 10), "y": torch.arange(12) % 4}, tmp_path / "d.pt")
    source = ["--model", "mlpnets:build", "--weights", "weights.pt", "--data", "d.pt",
              "--device", "cpu"]
    assert main(["analyze", *source, "--criterion", "activation", "--no-universality",
                 "--sensitivity", "--units", "all", "--json", "a.json"]) == 0
    written = json.loads((tmp_path / "a.json").read_text())
    layers = {layer["name"]: layer for layer in written["layers"]}
    assert layers["5"]["kind"] == "linear" and layers["5"]["inactive_activation"] >= 4
    sensitivity = written["sensitivity"]
    assert sensitivity["5"]["features"] == 24 and sensitivity["5"]["activation"]["0"] >= 4
    capsys.readouterr()
    assert main(["prune", *source, "--criterion", "activation", "--units", "all",
                 "--out", "slim", "--no-latency"]) == 0
    assert "0 of 12 predictions changed" in capsys.readouterr().out
    exported = torch.export.load(tmp_path / "slim" / "slim.pt2").module()
    assert exported.state_dict()["5.weight"].shape[0] <= 20  # the dead units are gone
    x = torch.rand(5, 3, 10, 10)
    with torch.no_grad():
        assert torch.allclose(exported(x), model.eval()(x), atol=1e-5)
    # without --units all, MLP units are left alone (the paper's conv filters only)
    assert main(["prune", *source, "--criterion", "activation", "--out", "slim-conv",
                 "--no-latency", "--force"]) == 0
    kept = torch.export.load(tmp_path / "slim-conv" / "slim.pt2").module()
    assert kept.state_dict()["5.weight"].shape[0] == 24


def test_the_monitor_reports_every_criterion_for_every_unit_type(tmp_path):
    import json

    from implicit_sparsity.measure import SparsityMonitor

    torch.manual_seed(2)
    vit = TinyViT().eval()
    kill_linear_units(vit.blocks[1].fc1, [0, 5, 9], 0.0)
    images = [torch.randn(4, 1, 28, 28) for _ in range(3)]
    monitor = SparsityMonitor(tmp_path / "vit", data=images, units=ALL_UNITS,
                              tensorboard=False)
    record = monitor(1, vit)
    assert "sparsity_gamma" not in record  # no BatchNorm: activation and dormancy only
    assert record["sparsity_activation"]["blocks.1.fc1"] == pytest.approx(100 * 3 / 48)
    assert record["sparsity_dormant"]["blocks.1.fc1"] >= 100 * 3 / 48
    # the first batch only: an estimate, and the record says so
    cheap = SparsityMonitor(tmp_path / "cheap", data=images, units=ALL_UNITS,
                            max_batches=1, tensorboard=False)(1, vit)
    assert cheap["activation_batches"] == 1
    line = json.loads((tmp_path / "vit" / "sparsity.jsonl").read_text().splitlines()[0])
    assert set(line["sparsity_dormant"]) == {"embed", "blocks.0.fc1", "blocks.1.fc1"}
    with pytest.raises(Exception, match="no BatchNorm"):
        SparsityMonitor(tmp_path / "none", tensorboard=False)(1, vit)


def test_analyze_counts_dormant_units_by_hand():
    from implicit_sparsity.measure.report import analyze

    torch.manual_seed(4)
    model = MLP().eval()
    x = torch.randn(40, 20)
    report = analyze(model, [x], criterion="activation", units=ALL_UNITS, dormancy_tau=0.5,
                     universality=False)
    hidden = torch.relu(model.fc1(x)).detach()
    scores = hidden.mean(0) / hidden.mean(0).mean()
    layer = {l.name: l for l in report.layers}["fc1"]
    assert layer.inactive_dormant == int((scores <= 0.5).sum()) and layer.kind == "linear"
    assert "ReDo <= 0.5" in report.table()


def test_mlp_weights_freed_by_hand():
    """A model measured on MLP units only counts MLP weights: a dead unit frees its row of
    the Linear making it and its column of every Linear reading it."""
    torch.manual_seed(0)
    model = MLP().eval()
    kill_linear_units(model.fc1, [0, 1, 2, 3], -1.0)
    with torch.no_grad():  # fc2's units alive (beta 1) but one, dead by gamma 0, beta < 0
        model.bn2.bias[:] = 1.0
        model.bn2.weight[5], model.bn2.bias[5] = 0.0, -1.0
    x = torch.randn(64, 20)
    report = analyze(model, [x], criterion="activation", units=MLP_UNITS, universality=False)
    assert [l.inactive_activation for l in report.layers] == [4, 1]
    # fc1 20x32, fc2 32x16 (reads fc1), head 16x5 (reads fc2)
    assert report.conv_params == 20 * 32 + 32 * 16 + 16 * 5
    kept = 28 * 20 + 15 * 28 + 5 * 15
    assert report.conv_params_kept["activation"] == kept
    assert report.percent_params_pruned("activation") == pytest.approx(
        100 * (1 - kept / report.conv_params))


class GroupNormNet(nn.Module):
    """conv -> GroupNorm -> ReLU twice, a conv -> LayerNorm([C, H, W]) -> ReLU, GAP, fc."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(8, 8)
        self.c3, self.n3 = nn.Conv2d(8, 4, 3, padding=1), nn.LayerNorm([4, 6, 6])
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.n1(self.c1(x)))
        x = torch.relu(self.n2(self.c2(x)))
        x = torch.relu(self.n3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


def _dead_after_norm(norm, channels):
    with torch.no_grad():  # dead after the norm: zero scale, negative shift
        norm.weight[channels], norm.bias[channels] = 0.0, -1.0


def test_group_and_layer_norm_conv_units_are_measured_after_the_norm_and_go_by_whole_groups():
    torch.manual_seed(0)
    model = GroupNormNet().double().eval()
    _dead_after_norm(model.n1, [1, 6])  # GroupNorm(2, 8): one dead channel in each group
    _dead_after_norm(model.n2, [3])     # GroupNorm(8, 8): a group per channel
    _dead_after_norm(model.n3, [2])     # LayerNorm([4, 6, 6]): all channels together
    traced = trace_features(model)
    assert [(f.name, f.shared_norm, f.norm_groups, f.coupled, f.gamma)
            for f in traced.features] == [
        ("c1", "GroupNorm", 2, False, None), ("c2", "GroupNorm", 8, False, None),
        ("c3", "LayerNorm", 1, True, None)]
    x = torch.randn(10, 3, 6, 6, dtype=torch.float64)
    report = analyze(model, [x], criterion="activation")
    assert [l.inactive_activation for l in report.layers] == [2, 1, 1]
    # by hand: conv weights 8*3*9 + 8*8*9 + 4*8*9 = 1080; only c2's dead channel can go
    # (its own group): its filter (8*9) and c3's input slice for it (4*9)
    assert report.conv_params == 1080
    assert report.percent_params_pruned("activation") == pytest.approx(100 * 108 / 1080)
    assert [len(l.universality) for l in report.layers] == [8, 8, 4]
    assert report.layers[0].universality[1] == report.layers[0].universality[6] == 0.0
    result = prune_model(model, x, criterion="activation", corpus=[x], check_data=[x],
                         latency_batches=())
    assert [(d.filters_before, d.filters_after) for d in result.layers] == [
        (8, 8), (8, 7), (4, 4)]
    reason = "normalized together with other channels ({})"
    assert result.layers[0].reasons == {reason.format("GroupNorm"): 2}
    assert result.layers[2].reasons == {reason.format("LayerNorm"): 1}
    assert result.model.n2.num_groups == 7 and result.model.c3.in_channels == 7
    with torch.no_grad():  # float64: only the sums over fewer (zero) inputs reorder
        assert torch.allclose(result.model(x), model(x), rtol=0, atol=1e-12)
    # recycling a unit would move its group's statistics: none is recyclable
    assert recyclable(traced.features, model) == []
    # an explicit selection (no proof) must take whole groups too: refused in one line
    selection = {"c1": torch.tensor([False, True] + [False] * 6)}
    with pytest.raises(ImplicitSparsityError, match="part of a group of its GroupNorm"):
        prune_model(model, x, selection=selection, latency_batches=())
    whole = prune_model(model, x, selection={"c1": torch.arange(8) >= 4}, latency_batches=())
    assert (whole.model.n1.num_groups, whole.model.n1.num_channels) == (1, 4)


class GroupNormBlock(nn.Module):
    """A ResNet basic block with GroupNorm (as in detection backbones): conv -> GN(4) ->
    ReLU -> conv -> GN(4), added to the input, ReLU; GAP and fc."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.c1, self.n1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.GroupNorm(4, c)
        self.c2, self.n2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.GroupNorm(4, c)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.n1(self.c1(x)))
        x = torch.relu(self.n2(self.c2(y)) + x)
        return self.fc(x.mean((2, 3)))


def test_a_group_norm_residual_block_loses_its_dead_inner_groups_exactly():
    torch.manual_seed(2)
    model = GroupNormBlock().double().eval()
    _dead_after_norm(model.n1, list(range(4, 8)) + [12])  # group 2 whole, one of group 4
    _dead_after_norm(model.n2, list(range(8, 12)))        # dead, but added to the input
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    result = prune_model(model, x, criterion="activation", corpus=[x], check_data=[x],
                         latency_batches=())
    by_name = {d.name: d for d in result.layers}
    assert sorted(by_name["c1"].removed) == [4, 5, 6, 7]
    assert (result.model.n1.num_groups, result.model.c2.in_channels) == (3, 12)
    assert by_name["c2"].removed == []  # its channels reach the residual add
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), rtol=0, atol=1e-12)


def test_whole_dead_groups_of_a_group_norm_are_removed_exactly():
    torch.manual_seed(1)
    model = GroupNormNet().double().eval()
    _dead_after_norm(model.n1, [4, 5, 6, 7, 1])  # c1's second group whole, one of the first
    _dead_after_norm(model.n2, list(range(8)))   # every channel of c2: one group stays
    x = torch.randn(10, 3, 6, 6, dtype=torch.float64)
    result = prune_model(model, x, criterion="activation", corpus=[x], check_data=[x],
                         latency_batches=())
    c1, c2 = result.layers[:2]
    assert sorted(c1.removed) == [4, 5, 6, 7] and c1.kept_unsafe == [1]
    assert (result.model.n1.num_groups, result.model.n1.num_channels) == (1, 4)
    assert (c2.filters_after, len(c2.kept_last)) == (1, 1)  # a layer is never emptied
    assert result.model.n2.num_groups == 1 and result.model.c2.in_channels == 4
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), rtol=0, atol=1e-12)
    report = analyze(model, [x], criterion="activation")
    # by hand (% Param counts what the criterion marks, as for BatchNorm features): c1 keeps
    # its first group (4 filters x 3 inputs x 9); c2 is all dead, so c2 keeps nothing and
    # c3 reads no live input
    assert report.conv_params_kept["activation"] == 4 * 3 * 9


class StdConv2d(nn.Conv2d):
    """A weight-standardized conv as timm's (BiT): each filter standardized over its inputs
    in forward. A Conv2d subclass from outside torch: fx would trace into it."""

    def forward(self, x):
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return nn.functional.conv2d(x, (w - mean) / torch.sqrt(var + 1e-6), self.bias,
                                    self.stride, self.padding)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm with its ReLU inside, as timm's."""

    def forward(self, x):
        return torch.relu(super().forward(x))


class StdConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.n1 = StdConv2d(3, 8, 3, padding=1, bias=False), GroupNormAct(4, 8)
        self.c2, self.n2 = StdConv2d(8, 8, 3, padding=1, bias=False), GroupNormAct(4, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.n2(self.c2(self.n1(self.c1(x)))).mean((2, 3)))


def test_conv_subclasses_are_measured_and_pruned_exactly_or_kept():
    """A Conv2d subclass (weight standardization) is a feature's conv, not traced into; its
    dead units after a GroupNorm-with-activation are found; a whole dead group read by a
    Linear goes, one read by a standardized conv stays (its standardization would move)."""
    torch.manual_seed(3)
    model = StdConvNet().double().eval()
    _dead_after_norm(model.n1, [2, 3])  # a whole group, read by the standardized c2
    _dead_after_norm(model.n2, [4, 5])  # a whole group, read by the Linear
    traced = trace_features(model)
    assert [(f.name, type(f.conv).__name__, f.shared_norm, f.norm_groups)
            for f in traced.features] == [("c1", "StdConv2d", "GroupNormAct", 4),
                                          ("c2", "StdConv2d", "GroupNormAct", 4)]
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    report = analyze(model, [x], criterion="activation")
    assert [l.inactive_activation for l in report.layers] == [2, 2]
    result = prune_model(model, x, criterion="activation", corpus=[x], check_data=[x],
                         latency_batches=())
    c1, c2 = result.layers
    assert c1.removed == [] and c1.kept_unsafe == [2, 3]
    assert sorted(c2.removed) == [4, 5] and result.model.n2.num_groups == 3
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), rtol=0, atol=1e-12)


FUNCTIONAL_MODULE = '''
import torch
from torch import nn


class Mixed(nn.Module):
    """A Conv2d feature, a conv computed by F.conv2d on a parameter, and a Conv1d."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.w2 = nn.Parameter(torch.randn(6, 8, 3, 3) * 0.1)
        self.seq = nn.Conv1d(6, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(nn.functional.conv2d(x, self.w2, padding=1))
        return self.fc(self.seq(x.flatten(2)).mean(2))


def build():
    return Mixed()
'''


def test_convolutions_no_feature_covers_are_named(tmp_path, monkeypatch, capsys):
    """A conv computed by a function on a parameter, or a Conv1d, has filters this toolkit
    cannot measure: the trace lists them, the report carries them, the commands say so."""
    from implicit_sparsity.cli import main

    (tmp_path / "mixednets.py").write_text(FUNCTIONAL_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from mixednets import build

    torch.manual_seed(0)
    model = build().eval()
    traced = trace_features(model)
    assert [f.name for f in traced.features] == ["c1"]
    assert traced.unmeasured == ["conv2d: conv2d", "seq: Conv1d"]
    assert "2 convolution(s) not measured" in traced.describe_unmeasured()
    x = torch.rand(6, 3, 8, 8)
    report = analyze(model, [x], criterion="activation")
    assert report.to_dict()["unmeasured_convolutions"] == traced.unmeasured
    assert trace_features(GroupNormNet()).describe_unmeasured() is None
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.save({"x": x, "y": torch.arange(6) % 3}, tmp_path / "d.pt")
    assert main(["analyze", "--model", "mixednets:build", "--weights", "weights.pt",
                 "--data", "d.pt", "--device", "cpu", "--no-universality"]) == 0
    printed = capsys.readouterr().out
    assert "2 convolution(s) not measured (only nn.Conv2d modules are conv features): " \
           "conv2d: conv2d, seq: Conv1d" in printed
