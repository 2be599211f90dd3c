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
