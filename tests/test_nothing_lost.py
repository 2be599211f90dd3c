"""Nothing lost by construction: the one output policy (`io.outputs`), the typed boundary of
configs and specs, and the one check of a user's model and data, each tried through the CLI
on the cases an outside probe found (one line, exit 2, every file of the workspace as it
was), and the staged writes of `prune` under a full disk, an error and SIGTERM."""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_fashion_mnist
from implicit_sparsity.cli import main
from implicit_sparsity.io.outputs import PARTIAL, result_kind
from test_bad_input import run_cli, tree_digest

USER_MODELS = '''
import torch
from torch import nn


def convnet(classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))


def no_conv():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = convnet()

    def forward(self, x):
        return self.net(x).sum()


def scalar():
    return Scalar()


def on_meta():
    with torch.device("meta"):
        return convnet()


def nan_outputs():
    model = convnet()
    with torch.no_grad():
        model[5].bias.fill_(float("nan"))
    return model


def exits():
    raise SystemExit(0)
'''

SPEC = """name: {name}
base: {{model: basicnet, width: '0.0625', dataset: fashion-mnist, epochs: [1], batch_size: 40}}
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Finished results of every kind, a user's models and data, bad specs and files."""
    root = tmp_path_factory.mktemp("nothing-lost")
    fashion = write_fashion_mnist(root / "fashion", n_train=80, n_test=40)
    train = ["train", "--data-dir", str(fashion), "--width", "0.0625", "--epochs", "1",
             "--batch-size", "40"]
    assert main(train + ["--out", str(root / "run")]) == 0
    assert main(train + ["--lambda", "5e-3", "--out", str(root / "run2")]) == 0
    assert main(["prune", str(root / "run"), "--out", str(root / "slim"), "--no-latency"]) == 0
    spec = root / "spec.yaml"
    spec.write_text(SPEC.format(name="tiny") + "variants:\n  - {optimizer: adam}\n")
    assert main(["sweep", str(spec), "--out", str(root / "sweep"), "--set",
                 f"data_dir={fashion}", "--workers", "1"]) == 0
    (root / "notes").mkdir()
    (root / "notes" / "mine.txt").write_text("mine")
    (root / "existing.json").write_text("{}")
    (root / "usermodels.py").write_text(USER_MODELS)
    x = torch.rand(6, 3, 8, 8)
    torch.save(x, root / "x.pt")
    torch.save({"x": x, "y": torch.tensor([0, 1, 2, 3, 4, 99])}, root / "label-99.pt")
    torch.save({"x": x, "y": torch.tensor([0, 1, 2, -1, 4, 5])}, root / "label-neg.pt")
    torch.save({"x": x, "y": torch.tensor([0, 1, 2, float("nan"), 4, 5])}, root / "label-nan.pt")
    torch.save({"x": x, "y": torch.eye(10)[:6]}, root / "one-hot.pt")
    torch.save(convnet_state(root), root / "weights.pt")
    os.mkfifo(root / "fifo")
    bad = {
        "seeds-empty": "seeds: []\n",
        "seeds-text": "seeds: one\n",
        "seed-huge": f"seeds: [{2 ** 70}]\n",
        "grid-list": "grid: [1, 2]\n",
        "grid-empty-axis": "grid: {optimizer: []}\n",
        "variants-mapping": "variants: {optimizer: adam}\n",
        "grid-million": "grid: {lam: [" + ", ".join(str(i * 1e-6) for i in range(1000))
                        + "], lr: [" + ", ".join(str((i + 1) * 1e-4) for i in range(1000))
                        + "]}\n",
        "twice": "seeds: [0]\nseeds: [1]\n",
        "table-folds": "variants:\n  - {optimizer: adam}\n  - {optimizer: sgd}\n"
                       "table: {rows: [dataset]}\n",
        "table-text": "table: {rows: optimizer}\n",
    }
    for name, text in bad.items():
        (root / f"{name}.yaml").write_text(SPEC.format(name=name) + text)
    (root / "base-list.yaml").write_text("name: x\nbase: [1, 2]\n")
    (root / "twice-config.yaml").write_text("lr: 0.1\nlr: 0.2\n")
    (root / "foreign-sweep").mkdir()
    (root / "foreign-sweep" / "index.json").write_text("[1, 2, 3]")
    return root


def convnet_state(root: Path) -> dict:
    sys.path.insert(0, str(root))
    import usermodels

    return usermodels.convnet().state_dict()


W = "{ws}"
USER = ["--data", f"{W}/x.pt", "--criterion", "activation"]

REFUSED = [
    # --- the output policy ------------------------------------------------------------------
    ("json-onto-checkpoint", ["analyze", f"{W}/run", "--criterion", "gamma", "--json",
                              f"{W}/run/checkpoint.pt"], "would overwrite a file of a run folder"),
    ("json-onto-checkpoint-overwrite", ["analyze", f"{W}/run", "--criterion", "gamma", "--json",
                                        f"{W}/run/checkpoint.pt", "--overwrite"],
     "would overwrite a file of a run folder"),
    ("report-onto-index", ["report", f"{W}/sweep", "--out", f"{W}/sweep/index.json"],
     "would overwrite a file of a sweep folder"),
    ("prune-json-onto-summary", ["prune", f"{W}/run", "--out", f"{W}/new-slim", "--json",
                                 f"{W}/run/summary.json"], "would overwrite a file of a run"),
    ("prune-into-another-slim", ["prune", f"{W}/run2", "--out", f"{W}/slim"],
     "already holds a slim model"),
    ("prune-into-the-run", ["prune", f"{W}/run", "--out", f"{W}/run"],
     "holds a run folder, not a slim model"),
    ("prune-inside-the-run", ["prune", f"{W}/run", "--out", f"{W}/run/slim"],
     "is inside a run folder"),
    ("prune-into-foreign-files", ["prune", f"{W}/run", "--out", f"{W}/notes"],
     "holds files that are not a slim model"),
    ("prune-json-inside-out", ["prune", f"{W}/run", "--out", f"{W}/new-slim", "--json",
                               f"{W}/new-slim/report.json"], "overlap"),
    ("compare-into-a-run", ["compare", "--out", f"{W}/run"], "holds a run folder, not a compar"),
    ("findings-into-a-sweep", ["findings", "--scale", "tiny", "--out", f"{W}/sweep"],
     "holds a sweep folder, not a findings folder"),
    ("demo-into-a-sweep", ["demo", "--quick", "--out", f"{W}/sweep"], "holds a sweep folder"),
    ("sweep-into-a-run", ["sweep", f"{W}/spec.yaml", "--out", f"{W}/run"], "holds a run folder"),
    ("train-into-a-slim", ["train", "--out", f"{W}/slim"], "holds a slim model, not a run"),
    ("json-exists", ["analyze", f"{W}/run", "--criterion", "gamma", "--json",
                     f"{W}/existing.json"], "--overwrite to replace it"),
    ("plots-into-a-run", ["analyze", f"{W}/run", "--criterion", "gamma", "--plots",
                          f"{W}/run"], "holds a run folder; figures go"),
    ("simulate-plot-txt", ["simulate", "--steps", "5", "--plot", f"{W}/x.txt"],
     "give a file ending in .png"),
    ("sweep-status-foreign", ["sweep", "--status", f"{W}/foreign-sweep"],
     "not a sweep's index"),
    ("report-foreign", ["report", f"{W}/foreign-sweep"], "not a sweep's index"),
    # --- the typed boundary of specs, configs and flags -------------------------------------
    ("spec-seeds-empty", ["sweep", f"{W}/seeds-empty.yaml", "--out", f"{W}/o"],
     "seeds must be a non-empty list"),
    ("spec-seeds-text", ["sweep", f"{W}/seeds-text.yaml", "--out", f"{W}/o"], "seeds must be"),
    ("spec-seed-huge", ["sweep", f"{W}/seed-huge.yaml", "--out", f"{W}/o"], "seeds must be"),
    ("spec-grid-list", ["sweep", f"{W}/grid-list.yaml", "--out", f"{W}/o"],
     "grid must be a mapping"),
    ("spec-grid-empty-axis", ["sweep", f"{W}/grid-empty-axis.yaml", "--out", f"{W}/o"],
     "grid.optimizer must be a non-empty list"),
    ("spec-variants-mapping", ["sweep", f"{W}/variants-mapping.yaml", "--out", f"{W}/o"],
     "variants must be a non-empty list of mappings"),
    ("spec-base-list", ["sweep", f"{W}/base-list.yaml", "--out", f"{W}/o"],
     "base must be a mapping"),
    ("spec-million-runs", ["sweep", f"{W}/grid-million.yaml", "--out", f"{W}/o"],
     "plans 1,000,000 runs"),
    ("spec-key-twice", ["sweep", f"{W}/twice.yaml", "--out", f"{W}/o"], "is given twice"),
    ("spec-table-folds-runs", ["sweep", f"{W}/table-folds.yaml", "--out", f"{W}/o"],
     "would share one cell of the table"),
    ("spec-table-text", ["sweep", f"{W}/table-text.yaml", "--out", f"{W}/o"],
     "table.rows must be a list of names"),
    ("config-key-twice", ["train", "--config", f"{W}/twice-config.yaml", "--out", f"{W}/o"],
     "is given twice"),
    ("config-fifo", ["train", "--config", f"{W}/fifo", "--out", f"{W}/o"],
     "not a regular file"),
    ("set-twice", ["sweep", f"{W}/spec.yaml", "--out", f"{W}/o", "--set", "lr=0.1", "--set",
                   "lr=0.2"], "given twice"),
    ("optimizer-args-twice", ["train", "--optimizer-args", "{eps: 1, eps: 2}", "--out",
                              f"{W}/o"], "is given twice"),
    ("betas-mapping", ["train", "--optimizer-args", "{betas: {a: 1}}", "--out", f"{W}/o"],
     "expected a list of 2 numbers"),
    ("batch-size-1", ["train", "--batch-size", "1", "--out", f"{W}/o"], "batch_size must be >= 2"),
    ("seed-beyond-64-bits", ["train", "--seed", str(2 ** 70), "--out", f"{W}/o"],
     "seed must be in [0, 4294967295]"),
    ("width-huge", ["train", "--width", "64-9x", "--out", f"{W}/o"], "beyond the bound"),
    ("simulate-steps-huge", ["simulate", "--steps", str(10 ** 11)], "beyond the bound"),
    ("test-subset-huge", ["train", "--data-dir", f"{W}/fashion", "--width", "0.0625", "--epochs",
                          "1", "--test-subset", "1000000", "--out", f"{W}/o"],
     "test_subset of fashion-mnist 1,000,000 is more than the 40 images"),
    ("slim-given-as-a-run", ["analyze", f"{W}/slim/slim.pt"], "is a slim model, not a run's"),
    ("prune-a-slim", ["prune", f"{W}/slim/slim.pt", "--out", f"{W}/o"], "is a slim model"),
    # --- the one check of a user's model and data -------------------------------------------
    ("weights-fifo", ["analyze", "--model", "usermodels:convnet", "--weights", f"{W}/fifo"]
     + USER, "not a regular file"),
    ("data-fifo", ["analyze", "--model", "usermodels:convnet", "--data", f"{W}/fifo"],
     "not a regular file"),
    ("model-no-conv", ["analyze", "--model", "usermodels:no_conv"] + USER,
     "has no conv filters"),
    ("prune-model-no-conv", ["prune", "--model", "usermodels:no_conv", "--out", f"{W}/o"] + USER,
     "has no conv filters"),
    ("model-returns-scalar", ["analyze", "--model", "usermodels:scalar"] + USER,
     "returns a tensor of shape ()"),
    ("model-on-meta", ["analyze", "--model", "usermodels:on_meta"] + USER, "meta device"),
    ("model-nan-outputs", ["analyze", "--model", "usermodels:nan_outputs"] + USER,
     "non-finite outputs"),
    ("factory-exits", ["analyze", "--model", "usermodels:exits"] + USER, "calling it failed"),
    ("labels-99", ["prune", "--model", "usermodels:convnet", "--data", f"{W}/label-99.pt",
                   "--out", f"{W}/o"], "labels from 0 to 99, but the model has 10 outputs"),
    ("labels-negative", ["prune", "--model", "usermodels:convnet", "--data",
                         f"{W}/label-neg.pt", "--out", f"{W}/o"], "labels from -1 to 5"),
    ("labels-nan", ["prune", "--model", "usermodels:convnet", "--data", f"{W}/label-nan.pt",
                    "--out", f"{W}/o"], "not whole numbers"),
    ("labels-one-hot", ["prune", "--model", "usermodels:convnet", "--data", f"{W}/one-hot.pt",
                        "--out", f"{W}/o"], "one-hot"),
    ("mean-two-for-three", ["analyze", "--model", "usermodels:convnet", "--data", f"{W}/notes",
                            "--mean", "0.5", "0.5", "--std", "0.2", "0.2"],
     "--mean has 2 value(s) for 3 channel(s)"),
    ("mean-without-std", ["analyze", "--model", "usermodels:convnet", "--data", f"{W}/notes",
                          "--mean", "0.5", "0.5", "0.5"], "--mean and --std go together"),
    ("mean-on-a-tensor-file", ["analyze", "--model", "usermodels:convnet", "--data", f"{W}/x.pt",
                               "--mean", "0.5", "0.5", "0.5", "--std", "1", "1", "1"],
     "apply to image folders only"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_in_one_line_and_nothing_changes(ws, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(ws)  # the user's models.py beside the data
    argv = [a.replace(W, str(ws)) for a in argv]
    before = tree_digest_no_fifo(ws)
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert message in err, err
    assert tree_digest_no_fifo(ws) == before, "files changed on disk"


def tree_digest_no_fifo(root: Path) -> dict[str, str]:
    fifo = root / "fifo"
    os.rename(fifo, root.parent / f"{root.name}.fifo")
    try:
        return tree_digest(root)
    finally:
        os.rename(root.parent / f"{root.name}.fifo", fifo)


def test_the_kinds_of_result_are_told_apart(ws):
    kinds = {name: result_kind(ws / name) for name in ("run", "slim", "sweep", "notes")}
    assert kinds == {"run": "run", "slim": "slim", "sweep": "sweep", "notes": None}
    assert result_kind(ws / "sweep" / "runs" / next(os.scandir(ws / "sweep" / "runs")).name
                       ) == "run"


def test_a_spec_without_a_table_keeps_its_variants_apart(ws, tmp_path, capsys):
    """Without `table:`, Adam and SGD are two rows, not two seeds of one."""
    spec = tmp_path / "two.yaml"
    spec.write_text(SPEC.format(name="two") + "variants:\n  - {optimizer: adam}\n"
                    "  - {optimizer: sgd, lr: 0.01}\n")
    from implicit_sparsity.study.spec import load_spec

    loaded = load_spec(spec)
    assert loaded.table == {"rows": ["optimizer", "lr"]}


def test_overwrite_replaces_a_plain_file_and_a_slim_folder_whole(ws, tmp_path, capsys):
    json_path = tmp_path / "analysis.json"
    json_path.write_text("old")
    argv = ["analyze", str(ws / "run"), "--criterion", "gamma", "--json", str(json_path)]
    assert run_cli(argv) == 2
    assert run_cli(argv + ["--overwrite"]) == 0
    assert json_path.read_text().startswith("{")
    slim = tmp_path / "slim"
    assert main(["prune", str(ws / "run"), "--out", str(slim), "--no-latency"]) == 0
    (slim / "stray.txt").write_text("from the first")
    assert main(["prune", str(ws / "run2"), "--out", str(slim), "--no-latency",
                 "--overwrite"]) == 0
    assert not (slim / "stray.txt").exists(), "replaced whole, not merged"
    assert str(ws / "run2") in (slim / "prune_report.json").read_text()
    assert not [p for p in tmp_path.iterdir() if PARTIAL in p.name]


def _fail_in_the_middle(monkeypatch, how):
    """Make the write of the slim model's TorchScript file (the third of four) fail."""
    import implicit_sparsity.train.slim_io as slim_io

    real = slim_io.atomic_write_bytes

    def write(path, data):
        if str(path).endswith("torchscript.pt"):
            how()
        return real(path, data)
    monkeypatch.setattr(slim_io, "atomic_write_bytes", write)


def _disk_full():
    from implicit_sparsity.errors import StorageError

    raise StorageError(f"cannot write: {os.strerror(errno.ENOSPC)}")


@pytest.mark.parametrize("how", ["disk-full", "sigterm"])
def test_a_prune_that_fails_midway_leaves_nothing_or_the_previous_folder(ws, tmp_path, capsys,
                                                                         monkeypatch, how):
    out = tmp_path / "slim"
    fail = _disk_full if how == "disk-full" else lambda: os.kill(os.getpid(), signal.SIGTERM)
    _fail_in_the_middle(monkeypatch, fail)
    code = main(["prune", str(ws / "run"), "--out", str(out), "--no-latency"])
    err = capsys.readouterr().err
    assert code == (2 if how == "disk-full" else 143), err
    assert err.count("\n") == 1
    assert not out.exists(), "a part of a slim folder was left"
    assert not list(tmp_path.iterdir()), "a staging folder was left"
    # the same over an existing slim folder with --overwrite: the old one stays whole
    monkeypatch.undo()
    assert main(["prune", str(ws / "run"), "--out", str(out), "--no-latency"]) == 0
    before = tree_digest(out)
    _fail_in_the_middle(monkeypatch, fail)
    code = main(["prune", str(ws / "run2"), "--out", str(out), "--no-latency", "--overwrite"])
    assert code in (2, 143)
    assert tree_digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["slim"]


def test_a_killed_prune_leaves_only_a_hidden_stage_that_the_next_one_removes(ws, tmp_path):
    import subprocess

    out = tmp_path / "slim"
    stage = tmp_path / f".slim{PARTIAL}999999999.abc"  # as a SIGKILL leaves it: no such pid
    stage.mkdir()
    (stage / "slim.pt").write_bytes(b"half")
    assert result_kind(tmp_path) is None
    done = subprocess.run([sys.executable, "-m", "implicit_sparsity.cli", "prune",
                           str(ws / "run"), "--out", str(out), "--no-latency"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not stage.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["slim.pt", "slim.pt2", "slim.torchscript.pt", "prune_report.json"])


@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_a_real_sigterm_at_any_moment_leaves_the_slim_folder_whole_or_absent(ws, tmp_path,
                                                                           delay):
    """Whenever the signal comes (loading, pruning, writing), `--out` is complete or absent
    and no stage is left."""
    import subprocess
    import time

    out = tmp_path / "slim"
    process = subprocess.Popen([sys.executable, "-m", "implicit_sparsity.cli", "prune",
                                str(ws / "run"), "--out", str(out), "--no-latency"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode in (0, 143, -signal.SIGTERM), err
    if out.exists():
        assert sorted(p.name for p in out.iterdir()) == sorted(
            ["slim.pt", "slim.pt2", "slim.torchscript.pt", "prune_report.json"])
    if process.returncode == 143:
        assert "terminated; nothing half-written" in err and err.count("\n") == 1
    if process.returncode != -signal.SIGTERM:  # killed before our handler was set: no stage
        assert not [p for p in tmp_path.iterdir() if PARTIAL in p.name]


@pytest.mark.parametrize("interruption", ["terminated", "ctrl-c", "disk full"])
def test_an_atomic_write_interrupted_while_syncing_leaves_the_old_file_and_no_temporary(
        tmp_path, monkeypatch, interruption):
    """A SIGTERM (Terminated), Ctrl-C or full disk in the middle of an atomic write: the
    previous content stays, no `.NAME.XXXX.tmp` is left beside it, and the interruption
    goes on up (a sweep's stop test once found such a temporary next to a checkpoint)."""
    from implicit_sparsity.errors import StorageError, Terminated
    from implicit_sparsity.io import files

    raised = {"terminated": Terminated(), "ctrl-c": KeyboardInterrupt(),
              "disk full": OSError(errno.ENOSPC, "No space left on device")}[interruption]
    expected = {"terminated": Terminated, "ctrl-c": KeyboardInterrupt,
                "disk full": StorageError}[interruption]
    target = tmp_path / "checkpoint.pt"
    files.atomic_write_bytes(target, b"before")

    def fsync(fd):
        raise raised

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(expected):
        files.atomic_write_bytes(target, b"after")
    assert target.read_bytes() == b"before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
