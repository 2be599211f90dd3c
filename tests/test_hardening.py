"""Nothing lost, nothing silently wrong: kills that tear files, two writers, a full disk,
divergence, a sweep rerun on a subset, a proof over non-finite outputs."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from implicit_sparsity.cli import main
from implicit_sparsity.errors import DivergedError, RunStateError
from implicit_sparsity.io import FolderLock
from implicit_sparsity.io.run_dir import CHECKPOINT, DIVERGED, load_checkpoint, read_metrics
from implicit_sparsity.prune.proof import compare_outputs
from implicit_sparsity.train import TrainConfig, train


def cli_train(fashion_dir, out, *extra) -> list[str]:
    return [sys.executable, "-m", "implicit_sparsity", "train", "--data-dir", str(fashion_dir),
            "--width", "0.0625", "--epochs", "6", "--lambda", "1e-3", "--seed", "2",
            "--out", str(out), *extra]


def test_a_kill_that_tears_the_metrics_line_and_the_config_resumes_exactly(fashion_dir,
                                                                           tmp_path):
    out = tmp_path / "killed"
    process = subprocess.Popen(cli_train(fashion_dir, out), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / CHECKPOINT).exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # a real kill -9, somewhere after the first epoch
    process.wait()
    done = load_checkpoint(out / CHECKPOINT)["epoch"]
    assert done < 6, "the run was killed before it finished"
    # what a kill mid-write leaves: the last complete line lost (killed between the
    # checkpoint and the append), a torn line instead, and a torn config.yaml
    kept = [json.dumps(m) + "\n" for m in read_metrics(out) if m["epoch"] < done]
    (out / "metrics.jsonl").write_text("".join(kept) + '{"epoch": 99, "train_lo')
    config = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(config[: len(config) // 3])
    assert [m["epoch"] for m in read_metrics(out)] == list(range(1, done))  # torn: skipped

    again = subprocess.run(cli_train(fashion_dir, out), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == list(range(1, 7))  # each epoch once
    assert (out / "config.yaml").read_text() == config  # repaired from the checkpoint
    straight = train(TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[6],
                                 lam=1e-3, seed=2), tmp_path / "straight", verbose=False)
    resumed = load_checkpoint(out / CHECKPOINT)["model"]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed[key]), key
    assert [m["train_loss"] for m in metrics] == [m["train_loss"] for m in straight.metrics]
    assert not list(out.rglob("*.tmp"))


SLOW_TRAINING = """
import sys, time
from implicit_sparsity.train import TrainConfig, train
config = TrainConfig(data_dir=sys.argv[1], width="0.0625", epochs=[8], lam=1e-3)
print("started", flush=True)
train(config, sys.argv[2], callbacks=(lambda *a: time.sleep(0.4),), verbose=False)
"""


def test_a_second_writer_is_refused_while_the_first_runs(fashion_dir, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", SLOW_TRAINING, str(fashion_dir), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "config.yaml").exists() and time.time() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, first.stderr.read()
        code = main(["train", "--data-dir", str(fashion_dir), "--width", "0.0625",
                     "--epochs", "8", "--lambda", "2e-3", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "another process is writing run folder" in err
        assert err.count("\n") == 1
        with pytest.raises(RunStateError, match="another process"):
            train(TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[8], lam=1e-3),
                  out, verbose=False)
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    assert [m["epoch"] for m in read_metrics(out)] == list(range(1, 9))  # one writer's epochs
    assert read_metrics(out)[0]["lr"] == 1e-3


def test_a_lock_dies_with_its_process(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from implicit_sparsity.io import FolderLock\n"
                               "with FolderLock(sys.argv[1]):\n"
                               "    print('locked', flush=True); time.sleep(60)", str(folder)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunStateError, match="another process"):
        with FolderLock(folder):
            pass
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up code runs: the OS drops the lock
    holder.wait()
    with FolderLock(folder):
        pass


def test_a_write_killed_midway_leaves_a_temporary_that_the_next_run_removes(fashion_dir,
                                                                             tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[2], lam=1e-3)

    def interrupt(*_):
        raise KeyboardInterrupt  # after epoch 1 is saved: an interrupted run

    with pytest.raises(KeyboardInterrupt):
        train(config, out, callbacks=(interrupt,), verbose=False)
    # what a kill -9 inside atomic writes leaves (tempfile.mkstemp's names)
    leftovers = [out / ".checkpoint.pt.k3j9x2.tmp", out / "bn_history" / ".epoch_0002.pt.a1.tmp"]
    kept = [out / "notes.tmp", out / ".hidden"]  # not ours: left alone
    for path in leftovers + kept:
        path.write_bytes(b"half a file")
    with FolderLock(out, "run folder"):  # a lock without tidy (a sweep folder's) removes nothing
        pass
    assert all(path.exists() for path in leftovers)
    train(config, out, verbose=False)  # resumes
    assert not any(path.exists() for path in leftovers)
    assert all(path.read_bytes() == b"half a file" for path in kept)
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(fashion_dir, tmp_path, capsys,
                                                              monkeypatch):
    import implicit_sparsity.io.files as files

    real_fsync, calls = files.os.fsync, {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 4:  # the first files go through, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(files.os, "fsync", fsync)
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fashion_dir), "--width", "0.0625", "--epochs", "3",
            "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and err.count("\n") == 1
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(files.os, "fsync", real_fsync)  # space again: the run goes on
    assert main(argv) == 0
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3]


def test_divergence_stops_the_run_marks_it_and_is_not_retried(fashion_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fashion_dir), "--width", "0.0625", "--epochs", "3",
            "--optimizer", "sgd", "--lr", "1e4", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    record = json.loads((out / DIVERGED).read_text())
    assert (f"diverged: non-finite loss at epoch {record['epoch']}, step {record['step']} of "
            f"{record['steps_per_epoch']}") in err and err.count("\n") == 1
    assert 1 <= record["step"] <= record["steps_per_epoch"]
    assert not (out / "summary.json").exists()
    # the last checkpoint is the last good epoch, and every epoch written is finite
    good = load_checkpoint(out / CHECKPOINT)["epoch"] if (out / CHECKPOINT).exists() else 0
    assert good == record["epoch"] - 1
    assert [m["epoch"] for m in read_metrics(out)] == list(range(1, good + 1))
    assert all(m["train_loss"] == m["train_loss"] for m in read_metrics(out))
    assert main(argv) == 2  # not retried blindly
    assert "not resumed" in capsys.readouterr().err
    with pytest.raises(DivergedError):
        train(TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[3],
                          optimizer="sgd", lr=1e4), out, verbose=False)


def test_a_proof_over_non_finite_outputs_fails():
    class Broken(nn.Module):
        def forward(self, x):
            return x.sum(1, keepdim=True).expand(-1, 3) * float("nan")

    class Fine(nn.Module):
        def forward(self, x):
            return x.sum(1, keepdim=True).expand(-1, 3)

    x = torch.randn(4, 5)
    broken = compare_outputs(Fine(), Broken(), [x])
    assert broken.nonfinite_outputs == 4 and not broken.holds(1.0)
    assert compare_outputs(Fine(), Fine(), [x]).holds(0.0)


SPEC = """
name: two
base: {{model: basicnet, dataset: fashion-mnist, data_dir: {data}, width: "0.0625",
        epochs: [1], batch_size: 40}}
variants:
  - {{optimizer: adam, regularizer: l2}}
  - {{optimizer: sgd, regularizer: l2}}
  - {{optimizer: sgd, regularizer: wd, lr: 1.0e+4, epochs: [3]}}
table: {{rows: [optimizer, regularizer], columns: [], values: [test_error]}}
"""


def test_sweep_reruns_merge_the_index_and_report_diverged_runs(fashion_dir, tmp_path, capsys):
    spec = tmp_path / "two.yaml"
    spec.write_text(SPEC.format(data=fashion_dir))
    out = tmp_path / "sweep"
    for optimizer in ("adam", "sgd"):  # two reruns, each on a subset
        assert main(["sweep", str(spec), "--out", str(out), "--workers", "1",
                     "--where", f"optimizer={optimizer}", "--where", "regularizer=l2"]) == 0
    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| adam | l2 |" in table and "| sgd | l2 |" in table  # the first subset was kept
    assert len(json.loads((out / "index.json").read_text())) == 2
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1",
                 "--where", "regularizer=wd"]) == 0
    assert main(["report", str(out)]) == 0
    report = capsys.readouterr().out
    assert "diverged (non-finite loss; not in the table)" in report
    assert "| sgd | wd |" not in report and "| adam | l2 |" in report
    assert "two: 1/1 runs done (" in report  # progress lines when the output is not a TTY
    assert main(["sweep", "--status", str(out)]) == 0
    status = capsys.readouterr().out
    assert status.count("  done ") == 2 and status.count("  diverged ") == 1
    assert "3 runs: 1 diverged, 2 done" in status
    with FolderLock(out, "sweep folder"):  # a second sweep into a busy folder is refused
        assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 2
    assert "another process is writing sweep folder" in capsys.readouterr().err


LONG_SPEC = """
name: long
base: {{model: basicnet, dataset: fashion-mnist, data_dir: {data}, width: "0.0625",
        epochs: [400], batch_size: 40}}
variants:
  - {{optimizer: adam}}
  - {{optimizer: sgd}}
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "Ctrl-C"])
def test_a_stopped_sweep_takes_its_workers_with_it(fashion_dir, tmp_path, how):
    """kill -9 (no clean-up code runs in the sweep), kill (SIGTERM) and Ctrl-C (SIGINT to
    the whole process group): no worker trains on, and for the two a program can handle,
    the sweep ends within seconds, leaves no run locked or half-written, starts none of the
    queued runs, and says so."""
    from implicit_sparsity.study.sweep import sweep_status

    spec = tmp_path / "long.yaml"
    spec.write_text(LONG_SPEC.format(data=fashion_dir) + "  - {optimizer: adamw}\n")
    out = tmp_path / "out"
    # preexec_fn: Ctrl-C reaches the sweep even when pytest itself was started in the
    # background (`cmd &` in a script), which hands its children SIGINT ignored
    sweep = subprocess.Popen([sys.executable, "-m", "implicit_sparsity", "sweep", str(spec),
                              "--out", str(out), "--workers", "2"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("runs/*/metrics.jsonl")):
            time.sleep(0.5)  # a worker has trained an epoch
        workers = _children(sweep.pid)
        assert workers, "no worker process started"
    finally:
        if how == "Ctrl-C":
            os.killpg(sweep.pid, signal.SIGINT)
        else:
            os.kill(sweep.pid, getattr(signal, how))
        try:
            stderr = sweep.communicate(timeout=60)[1]
        finally:
            os.killpg(sweep.pid, signal.SIGKILL) if sweep.poll() is None else None
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "workers went on training"
    if how == "SIGKILL":
        return
    assert sweep.returncode == {"SIGTERM": 143, "Ctrl-C": 130}[how], stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr, stderr
    states = sorted(row["state"] for row in sweep_status(out))
    assert "running" not in states and states.count("pending") >= 1, states
    assert not [p for p in out.rglob("*") if ".partial" in p.name or p.suffix == ".tmp"]
