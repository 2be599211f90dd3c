"""The paper's question outside CNNs: a small ViT (torch's TransformerEncoder, no BatchNorm)
is trained, measured on its MLP units by activation and ReDo dormancy, and its dead units
removed, through the same run folders, sweeps and reports as the paper's networks."""

import json

import pytest
import torch

from implicit_sparsity.cli import main
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.measure.features import MLP_UNITS, NoBatchNormError, trace_features
from implicit_sparsity.measure.report import analyze
from implicit_sparsity.models import build_model, get_model_entry
from implicit_sparsity.models.vit import VIT_DEPTH, vit_dim
from implicit_sparsity.study.sweep import evaluate_run
from implicit_sparsity.train import TrainConfig, train
from implicit_sparsity.train.packed import packable


def test_vit_is_built_with_mlp_units_and_no_batchnorm():
    model = build_model("vit", in_channels=1, num_classes=5, input_size=28, width="0.25")
    assert vit_dim(0.25) == 48 and vit_dim(0.1) % 3 == 0  # a multiple of the heads
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    assert model.position.shape == (1, 49, 48)  # 7 x 7 patches of 4 x 4
    features = trace_features(model, get_model_entry("vit").units).features
    assert [f.name for f in features] == [f"encoder.layers.{i}.linear1"
                                          for i in range(VIT_DEPTH)]
    assert all(f.num_features == 4 * 48 and not f.coupled for f in features)
    with pytest.raises(NoBatchNormError):
        analyze(model.eval(), criterion="gamma", units=MLP_UNITS)
    with pytest.raises(ConfigError, match="plain multiplier"):
        build_model("vit", in_channels=1, num_classes=5, input_size=28, width="64-0.5x")
    assert not packable(TrainConfig(model="vit"))


def test_a_vit_run_is_trained_evaluated_and_analyzed(fashion_dir, tmp_path, capsys):
    """Epoch metrics say nothing about |gamma| (there is none); the evaluation measures MLP
    units by activation and dormancy, prunes the dead ones with the proof and counts the
    MLP weights freed; `analyze` takes the model's units by default."""
    config = TrainConfig(model="vit", data_dir=str(fashion_dir), width="0.0625", epochs=[1],
                         batch_size=20, lam=5e-3)
    out = tmp_path / "run"
    result = train(config, out, verbose=False)
    assert result.metrics[-1]["sparsity_gamma_total"] is None
    assert not (out / "bn_history").exists()  # no BatchNorm: no empty gamma/beta history
    evaluation = evaluate_run(out)
    assert evaluation["sparsity_gamma"] is None
    for key in ("sparsity_activation", "sparsity_dormant", "params_pruned"):
        assert 0.0 <= evaluation[key] <= 100.0
    assert set(evaluation["layers"]) == {f"encoder.layers.{i}.linear1"
                                         for i in range(VIT_DEPTH)}
    assert evaluation["changed_predictions"] is not None
    capsys.readouterr()
    assert main(["analyze", str(out), "--no-universality", "--json",
                 str(tmp_path / "a.json")]) == 0  # no --criterion: by activation, said so
    report = json.loads((tmp_path / "a.json").read_text())
    assert [l["kind"] for l in report["layers"]] == ["linear"] * VIT_DEPTH
    printed = capsys.readouterr().out
    assert "no BatchNorm scale to measure: by activation" in printed
    assert "encoder.layers.0.linear1" in printed
    assert main(["prune", str(out), "--out", str(tmp_path / "slim"), "--no-latency"]) == 0
    printed = capsys.readouterr().out
    assert "by activation; proof on" in printed and "unit weights" in printed
    assert "units removed:" in printed  # MLP units, not "filters"


def test_recycling_revives_dead_mlp_units_of_a_vit(fashion_dir, tmp_path):
    config = TrainConfig(model="vit", data_dir=str(fashion_dir), width="0.0625", epochs=[1],
                         batch_size=20, recycle_every=2, recycle_tau=0.5)
    result = train(config, tmp_path / "run", verbose=False)
    assert result.metrics[-1]["recycled"] > 0


def test_the_models_command_lists_the_vit_by_its_mlp_units(capsys):
    assert main(["models", "--dataset", "fashion-mnist", "--width", "0.25"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("vit"))
    assert "6 MLP layers, 1152 units: [192, 192, 192, 192, 192, 192]" in line
