"""Honest timing (one definition for every reported speed-up) and the latency-tuned slim
model: quartiles and the noise verdict by hand, rounded widths that keep dead filters
exactly, and every deployment candidate proven equal to the original."""

import pytest
import torch

from implicit_sparsity.models import build_model
from implicit_sparsity.prune import prune_model
from implicit_sparsity.prune.api import keep_for_width
from implicit_sparsity.prune.cost import (conv_times, describe_latency, latency_row, macs,
                                          quartiles, speedup_cell, within_noise)
from implicit_sparsity.prune.tune import ROUNDING_GAIN, per_layer_rounding, tune_slim

from test_prune import kill_random_features, with_running_stats


def test_quartiles_speedup_and_noise_by_hand():
    before = [10.0, 12.0, 11.0, 30.0, 10.5]   # one round hit by load
    after = [5.0, 6.0, 5.5, 5.2, 20.0]
    assert quartiles(before) == (10.5, 12.0)  # inclusive: sorted 10, 10.5, 11, 12, 30
    row = latency_row(before, after, 64, "cpu", 2)
    ratios = sorted([2.0, 2.0, 2.0, 30 / 5.2, 0.525])
    assert row["speedup"] == pytest.approx(ratios[2])
    assert (row["speedup_q1"], row["speedup_q3"]) == pytest.approx((2.0, 2.0))
    assert row["before_ms"] == pytest.approx(11e3) and row["after_iqr_ms"] == pytest.approx(
        1e3 * (6.0 - 5.2))
    assert not row["within_noise"] and speedup_cell(row) == "2.00x"
    # ratios 0.952, 1.158, 0.75: IQR (inclusive) 0.851-1.055 includes 1
    same = latency_row([1.0, 1.1, 0.9], [1.05, 0.95, 1.2], 1, "cpu", 1)
    assert within_noise([1.0, 1.1, 0.9], [1.05, 0.95, 1.2]) and same["within_noise"]
    # load drifting between rounds: the timings' own IQRs overlap, every round agrees
    drift_before, drift_after = [10.0, 20.0, 30.0, 40.0], [8.0, 16.0, 24.0, 32.0]
    assert not within_noise(drift_before, drift_after)
    assert speedup_cell(same).endswith("x~") and "within noise" in describe_latency(same)
    assert speedup_cell(None) == "-"


def test_rounded_widths_keep_the_strongest_dead_units():
    dead = {"a": torch.tensor([True, True, False, True, False, True, True, True, True, True]),
            "b": torch.ones(20, dtype=torch.bool)}
    strength = {"a": torch.tensor([0.1, 0.5, 9, 0.3, 9, 0.0, 0.2, 0.4, 0.0, 0.0]),
                "b": torch.zeros(20)}
    rounded = keep_for_width(dead, strength, 4)
    assert (~rounded["a"]).nonzero().flatten().tolist() == [1, 2, 4, 7]  # 2 alive + 0.5, 0.4
    assert int((~rounded["b"]).sum()) == 4  # an all-dead layer keeps one multiple
    assert keep_for_width(dead, strength, 1) is dead
    assert int((~keep_for_width(dead, strength, 16)["a"]).sum()) == 10  # capped at the width
    per_layer = keep_for_width(dead, strength, {"a": 4})  # "b" not named: left as it is
    assert torch.equal(per_layer["a"], rounded["a"]) and per_layer["b"] is dead["b"]
    assert keep_for_width(dead, strength, {"a": 1, "b": 1}) is dead


def _widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def _basicnet_with_dead_filters():
    """BasicNet at width 0.25, 60% of its filters dead, float64, eval mode."""
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=3, num_classes=10, width="0.25")
    kill_random_features(model, fraction=0.6, seed=1)
    return with_running_stats(model, (16, 3, 32, 32)).double()


def test_per_layer_rounding_keeps_only_what_lowers_the_cost():
    model = _basicnet_with_dead_filters()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)

    def build(rounding):
        return prune_model(model, x, fold_bn=True, latency_batches=(), round_to=rounding).model

    exact = build({})
    base = _widths(exact)
    # a made-up cost: C2 wider by its rounding is 10% cheaper, any other change 1% cheaper
    # (below ROUNDING_GAIN) or dearer

    def cost(slim):
        widths = _widths(slim)
        changed = [i for i, (a, b) in enumerate(zip(widths, base)) if a != b]
        if changed == [1]:
            return 0.9
        return 0.99 if changed == [2] else 1.0 + 0.1 * len(changed)

    assert ROUNDING_GAIN > 0.01
    layers = [f"C{i}" for i in range(1, 8)]
    choice, trials = per_layer_rounding(build, layers, cost, roundings=(1, 8))
    widths = _widths(build(choice))
    assert {k: v for k, v in choice.items() if v > 1} == {"C2": 8}, trials
    assert widths[1] % 8 == 0 and widths[1] > base[1] and widths[2:] == base[2:]
    assert trials[0]["kept"] and [t["kept"] for t in trials].count(True) == 2
    # a rounding that leaves a layer's width unchanged (a multiple of 8 already, or the
    # full width) is not tried
    full = _widths(model)
    roundable = [i for i in range(7) if base[i] % 8 and base[i] < full[i]]
    assert len(trials) == 1 + len(roundable) and 1 in roundable
    with torch.no_grad():  # every width the search builds is exact
        assert torch.allclose(build(choice)(x), model(x), rtol=0, atol=1e-9)


def test_conv_times_time_each_conv_on_the_input_it_sees():
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=3, num_classes=10, width="0.25").eval()
    x = torch.randn(2, 3, 32, 32)
    cache = {}
    times = conv_times(model, x, threads=1, min_run_time=0.01, cache=cache)
    assert list(times) == list(macs(model, x[:1])["per_module"])[:7]  # the 7 convs, in order
    assert all(t > 0 for t in times.values()) and len(cache) == 7
    # C4 (16x16 input) and C5: distinct shapes; a second call reuses every timing
    assert conv_times(model, x, threads=1, min_run_time=0.01, cache=cache) == times
    assert len(cache) == 7


def test_tuned_candidates_are_exact_and_timed_against_the_original():
    model = _basicnet_with_dead_filters()
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    tuned = tune_slim(model, x, check_data=[x], batch_sizes=(1, 4), target_batch=4,
                      min_run_time=0.01, rounds=3, roundings=(1, 8))
    assert [c.name for c in tuned.candidates][0] == "exact minimum"
    # exact minimum, 2 roundings x 2 layouts, and a per-layer rounding per layout if one
    # measured faster (on this tiny model's convs it may or may not)
    per_layer = [c for c in tuned.candidates if isinstance(c.rounding, dict)]
    assert len(tuned.candidates) == 1 + 2 * 2 + len(per_layer) and tuned.best in tuned.candidates
    assert set(tuned.searches) == {"contiguous", "channels_last"}
    for trials in tuned.searches.values():
        assert trials[0]["kept"] and all(t["ms"] > 0 for t in trials)
        kept = [t["rounding"] for t in trials if t["kept"]][-1]
        assert any(c.rounding == kept for c in per_layer) == any(m > 1 for m in kept.values())
    with torch.no_grad():
        reference = model(x)
        for c in tuned.candidates:
            assert torch.allclose(c.model(x), reference, rtol=0, atol=1e-9), c.name
            assert [row["batch"] for row in c.latency] == [1, 4]
            assert all(row["rounds"] == 3 and row["speedup"] > 0 for row in c.latency)
    rounded = next(c for c in tuned.candidates if c.rounding == 8)
    widths = [m.out_channels for m in rounded.model.modules() if isinstance(m, torch.nn.Conv2d)]
    full = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 or w == f for w, f in zip(widths, full))
    assert rounded.macs >= tuned.candidates[0].macs
    assert "latency-tuned" in tuned.table()
    minimum = prune_model(model, x, check_data=[x], latency_batches=())
    assert tuned.exact.mac_reduction == pytest.approx(minimum.mac_reduction)


def test_candidates_of_a_model_without_batchnorm_do_not_claim_a_fold():
    from test_mlp_units import GroupNormNet, _dead_after_norm

    torch.manual_seed(0)
    model = GroupNormNet().double().eval()
    _dead_after_norm(model.n2, [1, 5])  # per-channel groups: removable
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    tuned = tune_slim(model, x, check_data=[x], batch_sizes=(2,), target_batch=2,
                      min_run_time=0.01, rounds=3, roundings=(1,), per_layer=False,
                      criterion="activation", corpus=[x])
    assert [c.name for c in tuned.candidates] == [
        "exact minimum", "exact widths, contiguous", "exact widths, channels_last"]
    assert not any(c.folded for c in tuned.candidates)
    assert tuned.exact.model.c2.out_channels == 6
