"""The rules that make depthwise, gated, grouped and shuffled networks lose their dead
channels (README: "what is removed, what is kept, and why"), each on a planted pattern whose
removable channels are known by hand: the test asserts which channels went and which
stayed with which reason, and the proof is run in float64, where an exact removal is equal
to rounding (1e-12 of max |output|)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from implicit_sparsity.measure import trace_features
from implicit_sparsity.prune import prune_model
from implicit_sparsity.prune.surgery import SHUFFLE_REASON, _prune_grouped_inputs
from implicit_sparsity.prune.surgery import zero_input_outputs
from zoo import GroupedNet, MobileNetLike, ShuffleNetLike, warm_up

EXACT = 1e-12  # float64: an exact removal differs by rounding only


def _plant(bn: nn.BatchNorm2d, channels, beta: float) -> None:
    with torch.no_grad():
        bn.weight[list(channels)] = 0.0
        bn.bias[list(channels)] = beta


def _prune64(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, 16, 16, generator=generator, dtype=torch.float64)
    check = torch.randn(16, 3, 16, 16, generator=generator, dtype=torch.float64)
    result = prune_model(model, x, criterion="gamma", check_data=[check], tolerance=EXACT)
    assert result.verified(EXACT), result.equivalence.describe()
    with torch.no_grad():
        assert float((model(check) - result.model(check)).abs().max()) <= EXACT * float(
            model(check).abs().max())
    return {d.name: d for d in result.layers}


def test_the_trace_finds_depthwise_chains_and_squeeze_excitation_gates():
    traced = trace_features(MobileNetLike())
    by_name = {f.name: f for f in traced.features}
    gated = by_name["blocks.0.depthwise.0"]
    assert gated.chain_from == "blocks.0.expand.0" and gated.gated
    assert {"blocks.0.se.reduce", "blocks.0.se.expand"} <= set(gated.gate_modules)
    assert not gated.coupled and "blocks.0.project.0" in gated.consumers
    assert by_name["blocks.0.expand.0"].chain_to == "blocks.0.depthwise.0"
    plain = by_name["blocks.1.depthwise.0"]
    assert plain.chain_from == "blocks.1.expand.0" and not plain.gated
    assert by_name["stem.0"].chain_to is None  # read by the expansion conv, not depthwise


def test_inverted_residuals_lose_dead_expansion_and_depthwise_channels():
    torch.manual_seed(0)
    model = warm_up(MobileNetLike(), torch.Generator().manual_seed(0)).double()
    blocks = model.blocks
    # block 1 (no gate): dead expansion channels make depthwise constants, folded into the
    # 1x1 projection; constant depthwise channels fold too
    _plant(blocks[1].expand[1], (0, 5, 9), -1.0)
    _plant(blocks[1].depthwise[1], (2, 7), 0.7)
    # block 0 (squeeze-and-excitation gate): only channels that are exactly zero go
    _plant(blocks[0].depthwise[1], (1, 4), -1.0)     # zero: goes with its gate's channel
    _plant(blocks[0].depthwise[1], (3,), 0.5)        # a constant the gate scales: stays
    _plant(blocks[0].expand[1], (10, 11, 12), -1.0)  # zero input to the depthwise conv
    with torch.no_grad():
        blocks[0].depthwise[1].bias[[10, 11]] = -50.0  # its constant is then ReLU6(<0) = 0
    gated = {f.name: f for f in trace_features(model).features}["blocks.0.depthwise.0"]
    assert float(zero_input_outputs(gated)[12]) != 0.0  # so channel 12 must stay

    plain = {f.name: f for f in trace_features(model).features}["blocks.1.depthwise.0"]
    constants = zero_input_outputs(plain)  # what the depthwise channels become
    to_fold = {c for c in (0, 5, 9) if float(constants[c]) != 0.0}
    assert to_fold  # the pattern exercises the fold (seeded)

    layers = _prune64(model)
    e1, d1 = layers["blocks.1.expand.0"], layers["blocks.1.depthwise.0"]
    assert set(e1.removed) == set(d1.removed) == {0, 5, 9, 2, 7}
    assert set(e1.removed_through) == {2, 7} and set(d1.removed_through) == {0, 5, 9}
    assert set(e1.folded) == to_fold and set(d1.folded) == {2, 7}
    e0, d0 = layers["blocks.0.expand.0"], layers["blocks.0.depthwise.0"]
    assert set(e0.removed) == set(d0.removed) == {1, 4, 10, 11}
    assert d0.kept_constant == [3]
    assert 12 in e0.kept_unsafe and any("non-zero constant" in r for r in e0.reasons)
    assert model.blocks[0].se.expand.out_channels == 24  # the original is untouched


def test_grouped_convs_lose_as_many_dead_channels_in_every_group():
    model = warm_up(GroupedNet(), torch.Generator().manual_seed(1)).double()
    block = model.block  # a: 1x1 -> 16; b: 3x3, 4 groups of 4; c: 1x1
    _plant(block.a[1], (0, 5, 9, 14, 1), -1.0)  # one per group, and a second in group 0
    _plant(block.b[1], (3, 6, 8, 15), -1.0)     # one per group of b's outputs
    layers = _prune64(model)
    a, b = layers["block.a.0"], layers["block.b.0"]
    assert len(a.removed) == 4 and {r // 4 for r in a.removed} == {0, 1, 2, 3}
    assert len(a.kept_unsafe) == 1 and any("4 groups of the grouped conv block.b.0" in r
                                           for r in a.reasons)
    assert sorted(b.removed) == [3, 6, 8, 15]


def test_a_grouped_conv_loses_each_groups_own_input_columns():
    """Hand check of the cut: the pruned conv on the kept inputs equals the original on
    inputs whose removed channels are zero (float64, exact)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 6, 3, padding=1, groups=3).double()
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64)
    gone = [1, 6, 11]  # a different position in each group of 4
    zeroed = x.clone()
    zeroed[:, gone] = 0.0
    expected = conv(zeroed)
    _prune_grouped_inputs(conv, gone)
    kept = [i for i in range(12) if i not in gone]
    assert conv.in_channels == 9 and conv.weight.shape == (6, 3, 3, 3)
    with torch.no_grad():  # equal up to the order of float64 sums
        assert float((conv(x[:, kept]) - expected).abs().max()) <= EXACT * float(
            expected.abs().max())


def test_shuffle_units_lose_their_branch_channels_and_say_why_the_rest_stay():
    model = warm_up(ShuffleNetLike(), torch.Generator().manual_seed(2)).double()
    branch = model.unit.branch  # 1x1 cbr -> depthwise 3x3 -> BN -> 1x1 cbr, then the shuffle
    _plant(branch[0][1], (0, 2), -1.0)  # dead inner channels: the shuffle never sees them
    _plant(branch[3][1], (1,), -1.0)    # the branch's output: concatenated and shuffled
    layers = _prune64(model)
    assert sorted(layers["unit.branch.0.0"].removed) == [0, 2]
    assert sorted(layers["unit.branch.1"].removed) == [0, 2]  # its depthwise partner
    last = layers["unit.branch.3.0"]
    # torch-pruning maps this small shuffle (the stem's live channels share the group) or,
    # as in torchvision's ShuffleNet, cannot: then the reason says so
    assert last.removed == [] and last.kept_coupled + last.kept_unsafe == [1]
    assert set(last.reasons) <= {SHUFFLE_REASON}


def test_an_analysis_past_its_time_budget_is_refused_in_one_line(monkeypatch):
    import time

    from implicit_sparsity.errors import AnalysisBudgetError
    from implicit_sparsity.prune import surgery

    model = warm_up(MobileNetLike(), torch.Generator().manual_seed(0))
    _plant(model.blocks[1].expand[1], (0, 5), -1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(surgery._Surgery, "_build_graph", lambda self: time.sleep(30))
    x = torch.randn(4, 3, 16, 16)
    started = time.monotonic()
    with pytest.raises(AnalysisBudgetError) as error:
        prune_model(model, x, check_data=[x], analysis_seconds=0.5)
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "\n" not in message and "ran past 0.5 s" in message
    assert "dependency graph" in message and "--analysis-seconds" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_analysis_past_its_memory_budget_is_refused(monkeypatch):
    from implicit_sparsity.errors import AnalysisBudgetError
    from implicit_sparsity.prune import budget

    if budget.resident_bytes() is None:
        pytest.skip("no /proc here to read the memory from")
    monkeypatch.setattr(budget, "available_bytes", lambda: 64 * 2**20)  # 32 MiB allowed
    held = []
    with pytest.raises(AnalysisBudgetError, match="grew by more than 0.0 GiB .50% of the "
                       "memory available. at layer X"):
        with budget.analysis_budget(lambda: "layer X", seconds=60):
            for _ in range(200):  # up to 800 MiB, refused long before
                held.append(torch.ones(2**20, dtype=torch.float32))
                import time
                time.sleep(0.01)
    del held


def test_a_trace_that_fails_where_the_model_runs_is_refused_in_one_line():
    """timm's LeViT caches attention biases by device in eval mode, and its fx trace fails
    with an UnboundLocalError: the refusal names the trace, not a foreign traceback."""
    from implicit_sparsity.errors import ModelTraceError
    from implicit_sparsity.measure import activation_statistics

    model = warm_up(GroupedNet(), torch.Generator().manual_seed(0))
    x = torch.randn(4, 3, 16, 16)
    traced = trace_features(model)

    def broken(*args):
        raise UnboundLocalError("cannot access local variable 'getitem_6'")

    traced.graph_module.forward = broken
    with pytest.raises(ModelTraceError, match="trace of GroupedNet fails where the model "
                       "runs .UnboundLocalError") as error:
        activation_statistics(model, [x], traced=traced)
    assert "\n" not in str(error.value) and "--criterion gamma" in str(error.value)
    with pytest.raises(RuntimeError):  # the model's own error is its own
        activation_statistics(model, [torch.randn(4, 5, 16, 16)])


def test_a_grouped_conv_loses_whole_groups_whose_inputs_are_all_dead():
    model = warm_up(GroupedNet(), torch.Generator().manual_seed(3)).double()
    block = model.block  # a: 1x1 -> 16; b: 3x3, 4 groups of 4; c: 1x1
    _plant(block.a[1], (4, 5, 6, 7, 0), -1.0)  # all of group 1, and one channel of group 0
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 16, 16, generator=generator, dtype=torch.float64)
    result = prune_model(model, x, criterion="gamma", check_data=[x], tolerance=EXACT)
    assert result.verified(EXACT), result.equivalence.describe()
    layers = {d.name: d for d in result.layers}
    a, b = layers["block.a.0"], layers["block.b.0"]
    assert sorted(a.removed) == [4, 5, 6, 7] and a.kept_unsafe == [0]
    assert sorted(b.removed) == sorted(b.removed_through) == [4, 5, 6, 7]
    slim = result.model.block.b[0]
    assert (slim.groups, slim.in_channels, slim.out_channels) == (3, 12, 12)
    assert result.model.block.c[0].in_channels == 12


class _TinyViT(nn.Module):
    """A patch embedding (conv 4x4, stride 4), a class token, a position embedding and one
    residual MLP block over the tokens: the layout that made torch-pruning's groups grow."""

    def __init__(self, dim=16):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.position
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.head(tokens[:, 0])


def test_a_patch_embeddings_channels_are_kept_as_tokens_without_a_group_search(monkeypatch):
    from implicit_sparsity.prune import surgery

    model = _TinyViT().eval()
    with torch.no_grad():
        model.embed.weight[:3] = 0.0
        model.embed.bias[:3] = 0.0  # three filters that output zero everywhere
    assert trace_features(model).features[0].tokens
    searched = []
    original = surgery._Surgery._group
    monkeypatch.setattr(surgery._Surgery, "_group",
                        lambda self, f, c: searched.append(f.name) or original(self, f, c))
    x = torch.randn(4, 3, 16, 16)
    result = prune_model(model, x, criterion="activation", corpus=[x], check_data=[x])
    embed = result.layers[0]
    assert embed.removed == [] and sorted(embed.kept_unsafe) == [0, 1, 2]
    assert list(embed.reasons) == [surgery.TOKENS_REASON] and "embed" not in searched


@pytest.mark.parametrize("criterion", ["gamma", "activation"])
@pytest.mark.parametrize("replica", [MobileNetLike, ShuffleNetLike])
def test_the_replicas_lose_what_the_rules_say_by_either_criterion(replica, criterion):
    """The real-family property (tests/planted.py) on the zoo's depthwise and shuffle
    replicas, in float64, over a few seeds. (The grouped replica's planted channels all meet
    its grouped conv or its residual add, which depend on other channels: its rules are
    tested by hand above.)"""
    from planted import prune_planted

    removable_total = taken_total = 0
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = warm_up(replica(), generator).double()
        run = prune_planted(model, generator, criterion, (16, 3, 16, 16), EXACT)
        assert run.result.verified(EXACT), run.result.equivalence.describe()
        removable_total += len(run.removable)
        taken_total += run.taken
    assert removable_total > 0 and taken_total >= 0.9 * removable_total
