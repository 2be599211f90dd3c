"""Device settings: flushing denormals on request (in every CPU thread, or a clear error),
and run keys that stay what they were when settings are added."""

import subprocess
import sys
import textwrap

import yaml

from implicit_sparsity.study.spec import run_key
from implicit_sparsity.train import TrainConfig


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_flushing_reaches_every_thread_when_set_first():
    done = run_python("""
        import torch
        torch.set_num_threads(2)
        from implicit_sparsity.train.device import flush_denormals_everywhere
        flush_denormals_everywhere()
        denormals = torch.arange(1, 1 << 20, dtype=torch.int32).view(torch.float32)
        print(int((denormals * 1.0).count_nonzero()))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]


def test_flushing_asked_for_too_late_is_refused():
    done = run_python("""
        import torch
        torch.set_num_threads(2)
        torch.ones(1 << 20).mul(2.0)  # the worker threads start here, without the flag
        from implicit_sparsity.train.device import flush_denormals_everywhere
        flush_denormals_everywhere()
    """)
    assert done.returncode != 0
    assert "CPU threads started before it was set" in done.stderr


def test_one_process_never_mixes_flushing_and_not(fashion_dir, tmp_path):
    done = run_python(f"""
        import torch
        torch.set_num_threads(2)
        from implicit_sparsity.train import TrainConfig, train
        common = dict(data_dir={str(fashion_dir)!r}, width="0.0625", epochs=[1], device="cpu")
        train(TrainConfig(**common, flush_denormal=True), {str(tmp_path / "a")!r},
              verbose=False)
        train(TrainConfig(**common, flush_denormal=True, seed=1), {str(tmp_path / "b")!r},
              verbose=False)
        train(TrainConfig(**common), {str(tmp_path / "c")!r}, verbose=False)
    """)
    assert done.returncode != 0
    assert "trained with flush_denormal=True before" in done.stderr
    assert (tmp_path / "b" / "summary.json").is_file()  # the same setting again is fine
    assert not (tmp_path / "c").exists()  # refused before any work


def test_training_from_the_command_line_with_flushing(fashion_dir, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "implicit_sparsity", "train", "--data-dir", str(fashion_dir),
         "--width", "0.0625", "--epochs", "1", "--device", "cpu", "--flush-denormal",
         "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["flush_denormal"] is True


def test_run_keys_of_earlier_sweeps_are_kept():
    # keys that run folders of the first release carry; new settings at their defaults and
    # result-neutral settings must leave them as they are
    assert run_key(TrainConfig().resolved()) == "e9db2480c724"
    assert run_key(TrainConfig(optimizer="sgd", lam=1e-3).resolved()) == "572421beb9c2"
    assert run_key(TrainConfig(step_capture="off", cudnn_benchmark=False).resolved()) \
        == "e9db2480c724"
    assert run_key(TrainConfig(flush_denormal=True).resolved()) != "e9db2480c724"
