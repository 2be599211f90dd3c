"""Checks that need a CUDA device (skipped without one): a CUDA-graph training step computes
what the eager step computes, for a single run and for packed runs, and the strict-fp32
default. `benchmarks/gpu_check.sh` runs these with the speed benchmark in one go."""

import pytest
import torch

from implicit_sparsity.train import TrainConfig, train
from implicit_sparsity.train.capture import relative_difference
from implicit_sparsity.train.packed import train_packed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def deterministic_cudnn(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)


def config(fashion_dir, **overrides):
    # 120 training images at batch 16: 7 full batches and a partial one of 8 per epoch
    values = dict(data_dir=str(fashion_dir), width="0.125", epochs=[2, 1], batch_size=16,
                  device="cuda", cudnn_benchmark=False, lam=1e-3)
    return TrainConfig(**{**values, **overrides})


def assert_same_run(a, b, rtol):
    for key, tolerance in (("train_loss", rtol), ("test_loss", 10 * rtol)):  # test: 60 images
        assert [m[key] for m in a.metrics] == pytest.approx([m[key] for m in b.metrics],
                                                            rel=tolerance)
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert relative_difference(x.float(), y.float()) <= rtol, name  # of the largest


def test_graphed_single_run_matches_eager(fashion_dir, tmp_path, deterministic_cudnn):
    eager = train(config(fashion_dir, step_capture="off"), tmp_path / "eager", verbose=False)
    graphed = train(config(fashion_dir, step_capture="cuda-graph"), tmp_path / "graph",
                    verbose=False)
    assert eager.metrics[0]["training_step"] == "eager (step_capture off)"
    assert graphed.metrics[0]["training_step"].startswith("CUDA graph (matches eager")
    assert_same_run(graphed, eager, rtol=1e-5)


def test_graphed_packed_runs_match_eager_single_runs(fashion_dir, tmp_path, deterministic_cudnn):
    # two Adam runs (one shared optimizer step), then an SGD and an Adam run (one step each)
    configs = [config(fashion_dir, seed=s, optimizer=o, regularizer=r, step_capture="cuda-graph")
               for s, o, r in ((0, "adam", "l2"), (1, "adam", "wd"), (2, "sgd", "l2"))]
    for shared in (True, False):
        group = configs[:2] if shared else [configs[2], configs[0]]
        outs = [tmp_path / f"p{shared}{k}" for k in range(2)]
        packed = train_packed(group, outs, verbose=False)
        assert packed[0].metrics[0]["training_step"].startswith("CUDA graph (matches eager")
        for k, c in enumerate(group):
            single = train(TrainConfig(**{**c.to_dict(), "step_capture": "off"}),
                           tmp_path / f"s{shared}{k}", verbose=False)
            # vmap's grouped kernels round apart from single convolutions; 24 steps amplify it
            assert_same_run(packed[k], single, rtol=1e-2)


def test_strict_fp32_by_default(fashion_dir, tmp_path):
    train(config(fashion_dir, epochs=[1]), tmp_path / "run", verbose=False)
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
