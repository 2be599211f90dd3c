"""Implicit sparsity against the explicit baselines, end to end on a tiny model."""

import json

from implicit_sparsity.cli import main
from implicit_sparsity.explicit.compare import compare
from implicit_sparsity.models import feature_layers
from implicit_sparsity.train import TrainConfig
from implicit_sparsity.train.restore import load_trained


def test_all_methods_end_to_end(fashion_dir, tmp_path):
    base = TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[2], lam=1e-3)
    points = compare(base, tmp_path, implicit_batch_sizes=(40, 20),
                     slimming_ratios=(0.25, 0.5), finetune_epochs=(1,), latency=False)
    assert [(p.method, p.setting) for p in points] == [
        ("implicit", "batch 40"), ("implicit", "batch 20"), ("slimming", "ratio 0.25"),
        ("slimming", "ratio 0.5"), ("l1norm", "per-layer shares")]
    for p in points:
        assert p.filters_before == 116 and p.filters_after <= 116
        assert p.conv_params_after <= p.conv_params_before and p.macs_after <= p.macs_before
    implicit = points[0]
    assert implicit.error_pruned == implicit.error_before  # exact: the proof holds
    assert implicit.error_finetuned is None and implicit.epochs == 2
    assert points[1].epochs == 1  # batch 20 on the iterations of batch 40
    slim25, slim50, l1 = points[2:]
    assert 116 - slim25.filters_after == 29 and 116 - slim50.filters_after == 58
    assert slim50.error_finetuned is not None and slim50.epochs == 3  # 2 + 1 fine-tuning
    # L1-norm: half of every layer's filters
    assert l1.filters_after == 2 + 4 + 4 + 8 + 8 + 16 + 16
    tuned = load_trained(tmp_path / "l1norm" / "pruned" / "finetune").model
    assert [b.conv.out_channels for _, b in feature_layers(tuned)] == [2, 4, 4, 8, 8, 16, 16]
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved[3]["percent_pruned"] == 50.0
    # a second call reuses every finished run and gives the same figures
    again = compare(base, tmp_path, implicit_batch_sizes=(40, 20),
                    slimming_ratios=(0.25, 0.5), finetune_epochs=(1,), latency=False)
    assert [p.final_error for p in again] == [p.final_error for p in points]


def test_compare_command(fashion_dir, tmp_path, capsys):
    code = main(["compare", "--out", str(tmp_path / "cmp"), "--data-dir", str(fashion_dir),
                 "--width", "0.0625", "--epochs", "1", "--methods", "implicit", "slimming",
                 "--finetune-epochs", "1", "--no-latency"])
    assert code == 0
    out = capsys.readouterr().out
    assert "implicit" in out and "ratio 0.5" in out
    assert (tmp_path / "cmp" / "tradeoff.png").stat().st_size > 1000


def test_comparison_specs_load_and_one_runs_with_the_paper_beside(tmp_path, capsys):
    from implicit_sparsity.explicit.compare import load_comparison

    for name, methods in (("compare_table7", ("implicit", "l1norm")),
                          ("compare_table9", ("implicit", "slimming")),
                          ("compare_table10", ("implicit", "slimming")),
                          ("compare_table10_cifar100", ("implicit", "slimming"))):
        spec, base, kwargs = load_comparison(name)
        assert kwargs["methods"] == methods and spec["paper"]
        assert base.lam == 1e-4 and base.optimizer == "adam"
    # the paper's recipes are fixed at the full scale; --quick scales each protocol
    _, _, full = load_comparison("compare_table7")
    _, _, quick = load_comparison("compare_table7", quick=True)
    assert (full["finetune_epochs"], full["finetune_lr"]) == ((40,), 0.001)
    assert (quick["finetune_epochs"], quick["finetune_lr"]) == (None, None)
    from conftest import write_fashion_mnist

    # the quick scale keeps the first 5 classes: 200 of 400 images, >= batch 160
    fashion_dir = write_fashion_mnist(tmp_path / "fashion-400", n_train=400)
    code = main(["compare", "--spec", "compare_table7", "--quick", "--out", str(tmp_path / "c"),
                 "--set", "dataset=fashion-mnist", "--set", f"data_dir={fashion_dir}",
                 "--set", "epochs=[1]", "--set", "train_subset=200", "--set",
                 "test_subset=30", "--no-latency"])
    assert code == 0
    out = capsys.readouterr().out
    vgg16_a = next(line for line in out.splitlines() if "VGG-16-A" in line)
    assert vgg16_a.rstrip().endswith("37, 6.6")  # Li et al.'s numbers beside ours
    assert "batch 160" in out


def test_a_matched_slimming_ratio_takes_the_implicit_share():
    from implicit_sparsity.explicit.compare import MATCHED, slimming_arms

    assert slimming_arms((MATCHED, 0.5), 0.2) == [(0.2, "matched 0.2"),
                                                   (0.5, "ratio 0.5")]
    assert slimming_arms((MATCHED, 0.5), 0.0) == [(0.5, "ratio 0.5")]  # nothing to match
    assert slimming_arms((MATCHED, 0.5), 0.5) == [(0.5, "ratio 0.5")]  # already an arm
    assert slimming_arms((0.25,), None) == [(0.25, "ratio 0.25")]


def test_a_matched_ratio_without_the_implicit_arm_is_refused(fashion_dir, tmp_path):
    import pytest

    from implicit_sparsity.errors import ConfigError
    from implicit_sparsity.explicit.compare import MATCHED

    base = TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[1])
    with pytest.raises(ConfigError, match="matched"):
        compare(base, tmp_path / "c", methods=("slimming",), slimming_ratios=(MATCHED,),
                latency=False)
    assert not (tmp_path / "c").exists()


def test_selectivity_removes_the_least_universal_filters_and_is_an_arm(fashion_dir, tmp_path):
    import torch

    from implicit_sparsity.explicit.methods import selectivity_selection
    from implicit_sparsity.measure.activation import activation_statistics
    from implicit_sparsity.models import build_model

    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.125).eval()
    corpus = [torch.rand(16, 1, 28, 28) for _ in range(2)]
    masks = selectivity_selection(model, corpus, 0.25)
    stats = activation_statistics(model, corpus)
    names = list(masks)
    chosen = torch.cat([masks[n] for n in names])
    universality = torch.cat([stats.universality[n] for n in names])
    assert int(chosen.sum()) == round(0.25 * len(chosen))
    # every removed filter is at most as universal as every kept one
    assert float(universality[chosen].max()) <= float(universality[~chosen].min())
    assert all(not bool(m.all()) for m in masks.values())  # no layer emptied
    base = TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[1], lam=1e-3)
    points = compare(base, tmp_path, methods=("implicit", "selectivity"),
                     selectivity_ratios=(0.25,), finetune_epochs=(1,), latency=False)
    arm = points[-1]
    assert (arm.method, arm.setting) == ("selectivity", "ratio 0.25")
    assert 116 - arm.filters_after == 29 and arm.error_finetuned is not None
    import pytest

    from implicit_sparsity.errors import ConfigError
    with pytest.raises(ConfigError, match="add 'implicit'"):
        compare(base, tmp_path / "x", methods=("selectivity",), latency=False)


def test_each_explicit_method_fine_tunes_by_its_own_papers_protocol(fashion_dir, tmp_path):
    """Network Slimming: the training schedule again (50 / 25 / 25% of the epochs, /10
    steps, the training's rate); L1-norm: a quarter of the epochs at 1/100 of the rate,
    constant. Every arm once per seed."""
    from implicit_sparsity.explicit.compare import arms_table, summarize_arms
    from implicit_sparsity.train import load_config_file

    base = TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[2], lam=1e-3)
    points = compare(base, tmp_path, methods=("slimming", "l1norm"), slimming_ratios=(0.5,),
                     seeds=(0, 1), latency=False)
    assert [(p.method, p.seed) for p in points] == [("slimming", 0), ("l1norm", 0),
                                                    ("slimming", 1), ("l1norm", 1)]
    for seed in (0, 1):
        slim = load_config_file(tmp_path / f"seed{seed}/slimming/ratio0.5/finetune/config.yaml")
        l1 = load_config_file(tmp_path / f"seed{seed}/l1norm/pruned/finetune/config.yaml")
        # 2 training epochs: 50 / 25 / 25% rounded, each stage at least one epoch
        assert (slim["epochs"], slim["lr"], slim["seed"]) == ([1, 1, 1], 0.1, seed)
        assert (l1["epochs"], l1["lr"], l1["seed"]) == ([1], 0.1 / 100, seed)
    assert points[0].finetune.startswith("3 epochs at lr 0.1, /10 after epochs 1, 2")
    assert points[1].finetune.startswith("1 epochs at lr 0.001, constant")
    arms = summarize_arms(points)
    assert [(a.method, a.arm, a.seeds) for a in arms] == [
        ("slimming", "ratio 0.5", 2), ("l1norm", "per-layer shares", 2)]
    assert "Li et al. 2017" in arms_table(arms)
    assert len(json.loads((tmp_path / "comparison.json").read_text())) == 4


def point(method, arm, pruned, tuned, seed, share=19.0, before=10.0):
    from implicit_sparsity.explicit.compare import OperatingPoint

    after = round(100 * (1 - share / 100))
    return OperatingPoint(method, arm, 100, after, 1000, 500, 1000, 500, None, False, before,
                          pruned, tuned, 1.0, 1, seed=seed, arm=arm)


def test_fine_tuning_that_hurts_beyond_the_spread_is_flagged_and_the_better_one_kept():
    from implicit_sparsity.explicit.compare import arms_table, summarize_arms

    hurt, helped, noise = summarize_arms(
        [point("slimming", "matched", 10.8, 18.1, 0), point("slimming", "matched", 10.9, 18.3, 1),
         point("l1norm", "shares", 14.0, 11.0, 0), point("l1norm", "shares", 14.5, 11.2, 1),
         point("slimming", "ratio 0.5", 12.0, 12.4, 0),
         point("slimming", "ratio 0.5", 12.2, 12.5, 1)])
    assert hurt.finetune_hurt and hurt.kept[0] == "pruned"
    assert abs(hurt.kept[1].mean - 10.85) < 1e-9
    assert not helped.finetune_hurt and helped.kept[0] == "fine-tuned"
    assert not noise.finetune_hurt and noise.kept[0] == "pruned"  # 0.35 points: no flag
    table = arms_table([hurt, helped, noise])
    assert table.count("fine-tuning made it worse") == 1


def test_finding_11_compares_the_kept_error_at_a_matched_size_and_says_which_arms():
    from implicit_sparsity.findings.claims import FAILS, HOLDS, Context, _explicit

    implicit = [point("implicit", "batch 40", 10.4, None, s, before=10.4) for s in (0, 1)]
    broken = [point("slimming", "matched", 10.8, 18.1, 0), point("slimming", "matched", 10.9,
                                                                 18.3, 1)]
    outcome = _explicit(Context({}, ("adam",), None, implicit + broken))
    assert outcome.verdict == HOLDS  # against the pruned 10.85, not the broken 18.2
    assert "compared at a matched size" in outcome.ours and "slimming matched" in outcome.ours
    assert "pruned 10.9 ± 0.1, fine-tuned 18.2 ± 0.1, kept pruned" in outcome.ours
    assert "flagged" in outcome.ours
    better = [point("l1norm", "shares", 8.0, 7.0, s) for s in (0, 1)]
    assert _explicit(Context({}, ("adam",), None, implicit + better)).verdict == FAILS
