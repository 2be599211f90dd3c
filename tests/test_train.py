"""Training runs: the run folder, exact resumption, refusal to overwrite, bad input."""

import json
import math

import pytest
import torch
import yaml

from implicit_sparsity.errors import ConfigError, RunStateError
from implicit_sparsity.train import (TrainConfig, load_bn_history, load_checkpoint,
                                     load_config_file, read_metrics, train)
from implicit_sparsity.io.run_dir import CHECKPOINT
from resuming import assert_same_weights, train_straight_and_resumed


def tiny_config(data_dir, **overrides):
    values = dict(model="basicnet", width="0.0625", dataset="fashion-mnist",
                  data_dir=str(data_dir), epochs=[2, 1], batch_size=40, lam=1e-3,
                  crop_padding=2, eval_batch_size=25, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def test_run_folder_contents(fashion_dir, tmp_path):
    out = tmp_path / "run"
    result = train(tiny_config(fashion_dir), out, verbose=False)
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert [m["lr"] for m in metrics] == pytest.approx([1e-3, 1e-3, 1e-4])
    for m in metrics:
        assert set(m["sparsity_gamma"]) == {f"C{i}" for i in range(1, 8)}
        assert 0 <= m["test_error"] <= 100 and m["train_loss"] > 0
        assert 0 <= m["test_error_top5"] <= m["test_error"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 1e-3 and saved["epochs"] == [2, 1]  # paper defaults made explicit
    assert saved["optimizer_args"] == {"betas": [0.9, 0.99], "eps": 1e-8}
    state = load_checkpoint(out / CHECKPOINT)  # weights_only=True
    assert state["epoch"] == 3
    model_state = result.model.state_dict()
    assert all(torch.equal(state["model"][k], v) for k, v in model_state.items())
    history = load_bn_history(out)
    assert history["C1"]["epochs"].tolist() == [0, 1, 2, 3]
    assert history["C7"]["gamma"].shape == (4, 32)
    assert torch.equal(history["C1"]["gamma"][0], torch.ones(4))  # gamma init 1
    assert torch.equal(history["C1"]["beta"][0], torch.zeros(4))
    assert "classifier.1" in history  # the fc head's BatchNorm is recorded too
    assert json.loads((out / "summary.json").read_text())["final"]["epoch"] == 3


def test_killed_run_resumes_to_the_same_end(fashion_dir, tmp_path):
    straight, resumed = train_straight_and_resumed(tiny_config(fashion_dir), tmp_path)
    assert_same_weights(straight, resumed)
    def strip(ms):
        return [{k: v for k, v in m.items() if "second" not in k} for m in ms]
    assert strip(straight.metrics) == strip(resumed.metrics)


def test_lines_written_after_the_last_checkpoint_are_dropped_on_resume(fashion_dir, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(fashion_dir, epochs=[2])

    def kill_after_checkpoint_then_fake_a_line(epoch, model, metrics):
        with open(out / "metrics.jsonl", "a") as f:  # as if killed before the next checkpoint
            f.write(json.dumps({**metrics, "epoch": epoch + 1}) + "\n")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(config, out, callbacks=(kill_after_checkpoint_then_fake_a_line,), verbose=False)
    train(config, out, verbose=False)
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]


def test_finished_run_is_never_overwritten(fashion_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(fashion_dir, epochs=[1]), out, verbose=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(RunStateError, match="already finished"):
        train(tiny_config(fashion_dir, epochs=[1]), out, verbose=False)
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def test_folder_of_another_config_or_not_a_run_is_refused(fashion_dir, tmp_path):
    out = tmp_path / "run"

    def stop(epoch, model, metrics):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(fashion_dir), out, callbacks=(stop,), verbose=False)
    with pytest.raises(RunStateError, match="differs in: lam"):
        train(tiny_config(fashion_dir, lam=5e-4), out, verbose=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunStateError, match="not a run folder"):
        train(tiny_config(fashion_dir), other, verbose=False)
    with pytest.raises(RunStateError, match="is a file"):
        train(tiny_config(fashion_dir), other / "notes.txt", verbose=False)


@pytest.mark.parametrize("regularizer", ["none", "wd"])
@pytest.mark.parametrize("model", ["vgg11", "basicnet"])
def test_other_models_and_regularizers_train(fashion_dir, tmp_path, model, regularizer):
    config = tiny_config(fashion_dir, model=model, regularizer=regularizer, epochs=[1],
                         optimizer="sgd", negative_slope=0.1, gamma_lr_scale=0.1)
    result = train(config, tmp_path / "run", verbose=False)
    assert len(result.metrics) == 1
    assert math.isfinite(result.metrics[0]["train_loss"])
    assert result.metrics[0]["train_loss"] < 10


@pytest.mark.parametrize("optimizer", ["adamw", "lion"])
def test_todays_optimizers_train_with_decoupled_weight_decay(fashion_dir, tmp_path, optimizer):
    config = tiny_config(fashion_dir, optimizer=optimizer, regularizer="decoupled", lam=0.05,
                         epochs=[1])
    result = train(config, tmp_path / "run", verbose=False)
    assert math.isfinite(result.metrics[0]["train_loss"])
    assert load_config_file(tmp_path / "run" / "config.yaml")["regularizer"] == "decoupled"


@pytest.mark.parametrize("change, message", [
    ({"model": "resnet"}, "valid models: basicnet, vgg11, vgg16, vgg19"),
    ({"dataset": "mnist"}, "valid data sets: fashion-mnist, cifar10"),
    ({"optimizer": "lamb"}, "valid optimizers: sgd, adam"),
    ({"regularizer": "l1"}, "valid regularizers: none, l2, wd"),
    ({"lam": 1.0}, r"lambda must be in \[0, 1\)"),
    ({"lam": -1e-4}, r"lambda must be in \[0, 1\)"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"batch_size": -40}, "batch_size must be >= 1"),
    ({"width": "wide"}, "is not a multiplier"),
    ({"device": "tpu"}, "device must be"),
    ({"epochs": [0]}, "at least one epoch"),
])
def test_bad_config_fails_before_any_work(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        train(TrainConfig(**change), tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists()


def test_config_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("optimizer: sgd\nlam: 5e-4\nepochs: [250, 75]\nflip: no\n")
    config = TrainConfig.from_dict(load_config_file(good))
    assert (config.optimizer, config.lam, config.epochs, config.flip) == \
        ("sgd", 5e-4, [250, 75], False)  # PyYAML reads 5e-4 as a string: coerced
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("optimiser: sgd\n")
    with pytest.raises(ConfigError, match="unknown config key.*optimiser.*valid keys"):
        TrainConfig.from_dict(load_config_file(unknown))
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [basicnet\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(broken)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config_file(tmp_path / "missing.yaml")
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe_load refuses the tag
        load_config_file(unsafe)


def test_resolved_config_fills_paper_defaults():
    config = TrainConfig(dataset="cifar100", optimizer="adadelta").resolved()
    assert config.lr == 1.0 and config.epochs == [250, 75]
    assert config.optimizer_args == {"rho": 0.9, "eps": 1e-6}
    tiny = TrainConfig(dataset="tinyimagenet", batch_size=120, same_iterations_as=40).resolved()
    assert tiny.epochs == [750, 225, 225] and tiny.same_iterations_as is None
    imagenet = TrainConfig(dataset="imagenet", model="vgg11").resolved()
    assert imagenet.lr == 1e-4 and imagenet.epochs == [30, 20, 10]
    assert imagenet.batch_size == 60  # VGG-11 on ImageNet (supplement section 4)
    assert TrainConfig(dataset="imagenet").resolved().batch_size == 64
    assert TrainConfig(dataset="cifar10").resolved().batch_size == 40


def test_shipped_configs_resolve():
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert files
    resolved = {f.name: TrainConfig.from_dict(load_config_file(f)).resolved() for f in files}
    assert resolved["cifar10-basicnet-adam-l2.yaml"].epochs == [250, 75]
    assert resolved["cifar100-basicnet-adam-l2-batch160.yaml"].epochs == [1000, 300]


def test_sigkilled_cli_run_resumes_to_the_same_end(fashion_dir, tmp_path):
    """A real kill -9 in the middle of training, then the same command again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "implicit_sparsity", "train", "--data-dir", str(fashion_dir),
            "--width", "0.0625", "--epochs", "12", "3", "--lambda", "1e-3", "--seed", "5",
            "--out", str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = len(read_metrics(out))
    assert killed_at < 15, "the run was killed before it finished"
    assert subprocess.run(argv, capture_output=True).returncode == 0

    straight = train(TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[12, 3],
                                 lam=1e-3, seed=5), tmp_path / "straight", verbose=False)
    resumed = load_checkpoint(out / CHECKPOINT)["model"]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed[key]), key
    assert [m["epoch"] for m in read_metrics(out)] == list(range(1, 16))


def test_distributed_batches_split_each_global_batch_evenly():
    import numpy as np

    from implicit_sparsity.data import Augmentation
    from implicit_sparsity.data.device_data import DeviceTensorData

    train = np.zeros((23, 1, 2, 2), dtype=np.uint8)
    data = DeviceTensorData(train, np.arange(23), train, np.arange(23), num_classes=23)
    single = [y.tolist() for _, y in data.train_batches(8, 5, Augmentation(flip=False))]
    shares = [[y.tolist() for _, y in data.train_batches(8, 5, Augmentation(flip=False), r, 2)]
              for r in range(2)]
    # the same global batches; the trailing 7 do not split over 2 processes: dropped
    assert [sorted(a + b) for a, b in zip(*shares)] == [sorted(b) for b in single[:2]]
    assert all(len(a) == len(b) == 4 for a, b in zip(*shares))
    assert data.steps_per_epoch(8, world=2) == 2 and data.steps_per_epoch(8) == 3


def test_data_parallel_run_with_torchrun_on_two_cpu_processes(fashion_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "2", "-m", "implicit_sparsity", "train",
            "--data-dir", str(fashion_dir), "--width", "0.0625", "--epochs", "2", "1",
            "--batch-size", "20", "--lambda", "1e-3", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    state = load_checkpoint(out / CHECKPOINT)
    assert state["epoch"] == 3 and "C1" in load_bn_history(out)
    # every one of the 120 training images was seen once per epoch, across both processes
    assert [m["train_samples"] for m in metrics] == [120, 120, 120]
    assert not list(out.glob("*.tmp"))
    with pytest.raises(ConfigError, match="divisible by the 2 processes"):
        from implicit_sparsity.train.distributed import Cluster, check_batch
        check_batch(25, Cluster(world=2))


def test_bf16_steps_and_channels_last_train_and_measure_in_fp32(fashion_dir, tmp_path):
    import copy

    from implicit_sparsity.models import build_model
    from implicit_sparsity.train.capture import relative_difference

    # the same computation in another layout: in float64 (where only summation order can
    # differ, ~1e-16 of the terms) outputs and gradients agree; a float32 comparison after
    # Adam steps would not be portable across CPUs
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.0625).double()
    nhwc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 28, 28, dtype=torch.float64)
    out, out_nhwc = model(x), nhwc_model(x.contiguous(memory_format=torch.channels_last))
    assert relative_difference(out_nhwc, out) <= 1e-12
    out.square().sum().backward()
    out_nhwc.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), nhwc_model.parameters()):
        assert relative_difference(q.grad, p.grad) <= 1e-12, name
    base = train(tiny_config(fashion_dir, epochs=[2]), tmp_path / "fp32", verbose=False)
    nhwc = train(tiny_config(fashion_dir, epochs=[2], channels_last=True), tmp_path / "nhwc",
                 verbose=False)
    assert all(torch.isfinite(v).all() for v in nhwc.model.state_dict().values()
               if v.is_floating_point())
    assert nhwc.metrics[-1]["train_loss"] < nhwc.metrics[0]["train_loss"] * 1.5
    bf16 = train(tiny_config(fashion_dir, epochs=[2], precision="bf16"), tmp_path / "bf16",
                 verbose=False)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert bf16.metrics[-1]["train_loss"] < bf16.metrics[0]["train_loss"] * 1.5
    assert bf16.metrics[-1]["train_loss"] != base.metrics[-1]["train_loss"]  # really bf16
    with pytest.raises(ConfigError, match="precision must be fp32 or bf16"):
        TrainConfig(precision="fp16").validate()
