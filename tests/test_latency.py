"""Honest timing (one definition for every reported speed-up) and the latency-tuned slim
model: quartiles and the noise verdict by hand, rounded widths that keep dead filters
exactly, and every deployment candidate proven equal to the original."""

import pytest
import torch

from implicit_sparsity.models import build_model
from implicit_sparsity.prune import prune_model
from implicit_sparsity.prune.api import keep_for_width
from implicit_sparsity.prune.cost import (describe_latency, latency_row, quartiles,
                                          speedup_cell, within_noise)
from implicit_sparsity.prune.tune import tune_slim

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


def test_tuned_candidates_are_exact_and_timed_against_the_original():
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=3, num_classes=10, width="0.25")
    kill_random_features(model, fraction=0.6, seed=1)
    model = with_running_stats(model, (16, 3, 32, 32)).double()
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    tuned = tune_slim(model, x, check_data=[x], batch_sizes=(1, 4), target_batch=4,
                      min_run_time=0.01, rounds=3, roundings=(1, 8))
    assert [c.name for c in tuned.candidates][0] == "exact minimum"
    assert len(tuned.candidates) == 1 + 2 * 2 and tuned.best in tuned.candidates
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
