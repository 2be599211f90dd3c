"""Bad input, everywhere: every command refuses it with one line naming the input and what
is wrong with it, exit status 2, no traceback, and nothing left behind or changed on disk
(the workspace's files are checksummed before and after each case)."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_cifar10, write_fashion_mnist
from implicit_sparsity.cli import main
from implicit_sparsity.data.formats import write_idx
from implicit_sparsity.train import TrainConfig, train

SPEC_TEXT = """name: tiny
title: tiny
base: {model: basicnet, width: '0.0625', dataset: fashion-mnist, epochs: [1], batch_size: 40}
variants:
  - {optimizer: adam}
"""


class Payload:
    """What a poisoned pickle would run on load: it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: good data, a finished tiny run, a diverged-weights copy, bad files."""
    root = tmp_path_factory.mktemp("bad-input")
    fashion = write_fashion_mnist(root / "fashion", n_train=80, n_test=40)
    config = TrainConfig(model="basicnet", width="0.0625", dataset="fashion-mnist",
                         data_dir=str(fashion), epochs=[1], batch_size=40, lam=1e-3)
    train(config, root / "run", verbose=False)
    state = torch.load(root / "run" / "checkpoint.pt", weights_only=True)
    state["model"]["features.0.conv.weight"] = torch.full_like(
        state["model"]["features.0.conv.weight"], float("nan"))
    (root / "nan-run").mkdir()
    torch.save(state, root / "nan-run" / "checkpoint.pt")
    (root / "file.txt").write_text("a file, not a folder")
    (root / "garbage.pt").write_bytes(os.urandom(300))
    whole = (root / "run" / "checkpoint.pt").read_bytes()
    (root / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    torch.save({"model": {"nothing.weight": torch.zeros(3)}}, root / "wrong-arch.pt")
    (root / "torn-run").mkdir()  # a run killed while its checkpoint was copied by hand
    (root / "torn-run" / "config.yaml").write_bytes((root / "run" / "config.yaml").read_bytes())
    (root / "torn-run" / "checkpoint.pt").write_bytes(whole[: len(whole) // 3])
    torch.save(torch.rand(4, 3, 8, 8), root / "user-data.pt")
    (root / "notes").mkdir()
    (root / "notes" / "mine.txt").write_text("mine")
    (root / "bad.yaml").write_text("lr: [unclosed\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "spec.yaml").write_text(SPEC_TEXT)
    (root / "broken-spec.yaml").write_text("name: x\nvariants: [\n")
    sweep = root / "sweep"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "spec.yaml").write_text("spec: {name: tiny}\nquick: false\n")
    (sweep / "index.json").write_text('{"abc": {"labels": {"opt')  # torn
    make_bad_data(root / "data")
    return root


def fashion_variant(folder: Path, **change) -> Path:
    """A Fashion-MNIST folder with one thing wrong."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n, size = change.get("n", 30), change.get("size", 28)
    for split in ("train", "t10k"):
        images = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        if "labels" in change:
            labels = np.asarray(change["labels"](n), dtype=np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def make_bad_data(root: Path) -> None:
    fashion_variant(root / "fewer-labels", labels=lambda n: np.arange(n - 5) % 10)
    fashion_variant(root / "label-12", labels=lambda n: np.full(n, 12))
    fashion_variant(root / "small-images", size=10)
    good = write_fashion_mnist(root / "truncated-gz", n_train=30, n_test=10)
    data = (good / "train-images-idx3-ubyte.gz").read_bytes()
    (good / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    good = write_fashion_mnist(root / "not-gzip", n_train=30, n_test=10)
    (good / "train-labels-idx1-ubyte.gz").write_bytes(os.urandom(200))
    good = write_fashion_mnist(root / "short-idx", n_train=30, n_test=10)
    with gzip.open(good / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") * 1 + (28).to_bytes(4, "big")
                * 2 + b"\0" * 100)
    good = write_fashion_mnist(root / "bad-magic", n_train=30, n_test=10)
    with gzip.open(good / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x12\x34" + os.urandom(50))
    random = root / "cifar-random" / "cifar-10-batches-py"
    random.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (random / name).write_bytes(os.urandom(500))
    poisoned = write_cifar10(root / "cifar-poisoned", per_batch=4, n_test=4)
    with open(poisoned / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Payload(str(root.parent / "PWNED")), b"labels": [0]}, f)
    not_dict = write_cifar10(root / "cifar-list", per_batch=4, n_test=4)
    with open(not_dict / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump([1, 2, 3], f)
    shape = write_cifar10(root / "cifar-shape", per_batch=4, n_test=4)
    with open(shape / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, f)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under root with a hash of its contents."""
    digest = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        digest[key] = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return digest


W = "{ws}"
TRAIN = ["train", "--data-dir", f"{W}/fashion", "--width", "0.0625", "--epochs", "1",
         "--batch-size", "40"]

CASES = [
    # --- train: config values -------------------------------------------------------------
    ("optimizer", TRAIN + ["--optimizer", "lamb", "--out", f"{W}/o"], "valid optimizers"),
    ("model", TRAIN + ["--model", "resnet50", "--out", f"{W}/o"], "valid models"),
    ("dataset", TRAIN + ["--dataset", "svhn", "--out", f"{W}/o"], "valid data sets"),
    ("lambda>1", TRAIN + ["--lambda", "2", "--out", f"{W}/o"], "lambda must be in [0, 1)"),
    ("lambda<0", TRAIN + ["--lambda", "-0.1", "--out", f"{W}/o"], "lambda must be in [0, 1)"),
    ("lambda-nan", TRAIN + ["--lambda", "nan", "--out", f"{W}/o"], "lambda must be in"),
    ("batch-0", TRAIN + ["--batch-size", "0", "--out", f"{W}/o"], "batch_size must be >= 1"),
    ("batch-text", TRAIN + ["--batch-size", "many", "--out", f"{W}/o"], "batch_size: cannot read"),
    ("lr-inf", TRAIN + ["--lr", "inf", "--out", f"{W}/o"], "lr must be a positive finite"),
    ("lr-nan", TRAIN + ["--lr", "nan", "--out", f"{W}/o"], "lr must be a positive finite"),
    ("lr-negative", TRAIN + ["--lr", "-1", "--out", f"{W}/o"], "lr must be a positive finite"),
    ("gamma-lr-nan", TRAIN + ["--gamma-lr-scale", "nan", "--out", f"{W}/o"],
     "gamma_lr_scale must be a finite number"),
    ("beta-lr-negative", TRAIN + ["--beta-lr-scale", "-1", "--out", f"{W}/o"],
     "beta_lr_scale must be"),
    ("l1-gamma-inf", TRAIN + ["--l1-gamma", "inf", "--out", f"{W}/o"], "l1_gamma must be"),
    ("lr-decay-nan", TRAIN + ["--lr-decay", "nan", "--out", f"{W}/o"], "lr_decay"),
    ("betas-3", TRAIN + ["--optimizer-args", "{betas: 3}", "--out", f"{W}/o"],
     "optimizer_args"),
    ("betas-big", TRAIN + ["--optimizer-args", "{betas: [1.5, 0.9]}", "--out", f"{W}/o"],
     "optimizer_args"),
    ("optimizer-arg-unknown", TRAIN + ["--optimizer-args", "{nosuch: 1}", "--out", f"{W}/o"],
     "has no hyper-parameter 'nosuch'"),
    ("optimizer-args-not-mapping", TRAIN + ["--optimizer-args", "[1, 2]", "--out", f"{W}/o"],
     "expected a YAML mapping"),
    ("epochs-negative", TRAIN + ["--epochs", "-1", "--out", f"{W}/o"], "epoch"),
    ("width-negative", TRAIN + ["--width", "-1", "--out", f"{W}/o"], "width"),
    ("width-text", TRAIN + ["--width", "wide", "--out", f"{W}/o"], "width"),
    ("train-subset-0", TRAIN + ["--train-subset", "0", "--out", f"{W}/o"], "train_subset"),
    ("precision", TRAIN + ["--precision", "fp16", "--out", f"{W}/o"], "precision must be"),
    ("device", TRAIN + ["--device", "tpu", "--out", f"{W}/o"], "device must be"),
    ("no-cuda", TRAIN + ["--device", "cuda", "--out", f"{W}/o"], "sees no CUDA device"),
    ("config-missing", TRAIN + ["--config", f"{W}/nope.yaml", "--out", f"{W}/o"],
     "cannot read config"),
    ("config-invalid-yaml", TRAIN + ["--config", f"{W}/bad.yaml", "--out", f"{W}/o"],
     "not valid YAML"),
    ("config-a-list", TRAIN + ["--config", f"{W}/list.yaml", "--out", f"{W}/o"], "mapping"),
    ("unknown-flag", TRAIN + ["--nosuch", "1", "--out", f"{W}/o"], "unrecognized arguments"),
    ("batch-larger-than-data", TRAIN + ["--batch-size", "500", "--out", f"{W}/o"],
     "larger than the 80 training images"),
    # --- train: data -------------------------------------------------------------------------
    ("data-missing", TRAIN + ["--data-dir", f"{W}/nope", "--out", f"{W}/o"], "not found"),
    ("cifar-missing", TRAIN + ["--dataset", "cifar10", "--data-dir", f"{W}/fashion",
                               "--out", f"{W}/o"], "cifar10 not found"),
    ("idx-fewer-labels", TRAIN + ["--data-dir", f"{W}/data/fewer-labels", "--out", f"{W}/o"],
     "30 images but 25 labels"),
    ("idx-label-12", TRAIN + ["--data-dir", f"{W}/data/label-12", "--out", f"{W}/o"],
     "labels from 12 to 12, expected 0 to 9"),
    ("idx-10x10", TRAIN + ["--data-dir", f"{W}/data/small-images", "--out", f"{W}/o"],
     "images of shape (1, 10, 10), expected (1, 28, 28)"),
    ("gzip-truncated", TRAIN + ["--data-dir", f"{W}/data/truncated-gz", "--out", f"{W}/o"],
     "train-images-idx3-ubyte.gz"),
    ("gzip-random", TRAIN + ["--data-dir", f"{W}/data/not-gzip", "--out", f"{W}/o"],
     "train-labels-idx1-ubyte.gz"),
    ("idx-short", TRAIN + ["--data-dir", f"{W}/data/short-idx", "--out", f"{W}/o"],
     "is truncated"),
    ("idx-bad-magic", TRAIN + ["--data-dir", f"{W}/data/bad-magic", "--out", f"{W}/o"],
     "not an IDX file"),
    ("cifar-random-bytes", TRAIN + ["--dataset", "cifar10", "--data-dir",
                                    f"{W}/data/cifar-random", "--out", f"{W}/o"],
     "is not a CIFAR batch"),
    ("cifar-poisoned", TRAIN + ["--dataset", "cifar10", "--data-dir",
                                f"{W}/data/cifar-poisoned", "--out", f"{W}/o"],
     "refused to load"),
    ("cifar-not-a-dict", TRAIN + ["--dataset", "cifar10", "--data-dir",
                                  f"{W}/data/cifar-list", "--out", f"{W}/o"], "not a dictionary"),
    ("cifar-wrong-shape", TRAIN + ["--dataset", "cifar10", "--data-dir",
                                   f"{W}/data/cifar-shape", "--out", f"{W}/o"],
     "expected N x 3072"),
    # --- train: files and folders -----------------------------------------------------------
    ("init-from-missing", TRAIN + ["--init-from", f"{W}/nope.pt", "--out", f"{W}/o"],
     "init_from: no file"),
    ("init-from-garbage", TRAIN + ["--init-from", f"{W}/garbage.pt", "--out", f"{W}/o"],
     "garbage.pt"),
    ("init-from-truncated", TRAIN + ["--init-from", f"{W}/truncated.pt", "--out", f"{W}/o"],
     "truncated.pt"),
    ("init-from-wrong-arch", TRAIN + ["--init-from", f"{W}/wrong-arch.pt", "--out", f"{W}/o"],
     "wrong-arch.pt"),
    ("out-below-a-file", TRAIN + ["--out", f"{W}/file.txt/run"], "is a file"),
    ("out-a-file", TRAIN + ["--out", f"{W}/file.txt"], "is a file"),
    ("out-not-a-run", TRAIN + ["--out", f"{W}/notes"], "not a run folder"),
    ("out-another-config", TRAIN + ["--lambda", "5e-3", "--out", f"{W}/run"], "another config"),
    ("resume-torn-checkpoint", TRAIN + ["--lambda", "1e-3", "--out", f"{W}/torn-run"],
     "checkpoint.pt is damaged"),
    # --- analyze -----------------------------------------------------------------------------
    ("analyze-missing", ["analyze", f"{W}/nope"], "no checkpoint"),
    ("analyze-garbage", ["analyze", f"{W}/garbage.pt"], "cannot load checkpoint"),
    ("analyze-truncated", ["analyze", f"{W}/truncated.pt"], "cannot load checkpoint"),
    ("analyze-not-a-run", ["analyze", f"{W}/notes"], "no checkpoint"),
    ("analyze-batch-0", ["analyze", f"{W}/run", "--batch-size", "0"], "must be >= 1"),
    ("analyze-threshold", ["analyze", f"{W}/run", "--gamma-threshold", "-1"], "must be >= 0"),
    ("analyze-threshold-nan", ["analyze", f"{W}/run", "--activation-threshold", "nan"],
     "finite"),
    ("analyze-criterion", ["analyze", f"{W}/run", "--criterion", "l1"], "invalid choice"),
    ("analyze-json-missing-folder", ["analyze", f"{W}/run", "--json", f"{W}/nope/r.json"],
     "does not exist"),
    ("analyze-json-a-folder", ["analyze", f"{W}/run", "--json", f"{W}/notes"], "is a folder"),
    ("analyze-plots-a-file", ["analyze", f"{W}/run", "--plots", f"{W}/file.txt"], "is a file"),
    ("analyze-export-program", ["analyze", f"{W}/slim.pt2"], "torch.export program"),
    ("analyze-diverged", ["analyze", f"{W}/nan-run", "--criterion", "gamma"], "non-finite"),
    ("analyze-nothing", ["analyze"], "give a run folder"),
    ("analyze-both", ["analyze", f"{W}/run", "--model", "m:f"], "not both"),
    ("analyze-model-no-colon", ["analyze", "--model", "mymodel", "--data", f"{W}/notes"],
     "package.module:function"),
    ("analyze-model-missing-module", ["analyze", "--model", "no_such_module_xyz:f",
                                      "--data", f"{W}/notes"], "cannot import"),
    ("analyze-model-no-data", ["analyze", "--model", "torch.nn:Identity"], "needs --data"),
    ("analyze-model-not-a-factory", ["analyze", "--model", "math:pi", "--data",
                                     f"{W}/notes"], "has no function pi"),
    ("analyze-model-weights", ["analyze", "--model", "torch.nn:Identity", "--weights",
                               f"{W}/garbage.pt", "--criterion", "gamma"], "--weights"),
    ("analyze-user-data-missing", ["analyze", "--model", "torch.nn:Identity", "--data",
                                   f"{W}/nope"], "no such file or folder"),
    ("analyze-user-data-garbage", ["analyze", "--model", "torch.nn:Identity", "--data",
                                   f"{W}/garbage.pt"], "not a tensor file"),
    ("analyze-user-data-no-images", ["analyze", "--model", "torch.nn:Identity", "--data",
                                     f"{W}/notes"], "no images found"),
    ("analyze-model-wrong-data", ["analyze", "--model", "torch.nn:Conv2d", "--model-args",
                                  "{in_channels: 5, out_channels: 2, kernel_size: 1}",
                                  "--data", f"{W}/user-data.pt"], "fails on the first images"),
    # --- prune -------------------------------------------------------------------------------
    ("prune-out-a-file", ["prune", f"{W}/run", "--out", f"{W}/file.txt"], "is a file"),
    ("prune-tolerance", ["prune", f"{W}/run", "--out", f"{W}/o", "--tolerance", "-1"],
     "must be >= 0"),
    ("prune-missing", ["prune", f"{W}/nope", "--out", f"{W}/o"], "no checkpoint"),
    ("prune-threads", ["prune", f"{W}/run", "--out", f"{W}/o", "--threads", "0"], ">= 1"),
    ("prune-json", ["prune", f"{W}/run", "--out", f"{W}/o", "--json", f"{W}/nope/p.json"],
     "does not exist"),
    ("prune-diverged", ["prune", f"{W}/nan-run", "--out", f"{W}/o"], "non-finite"),
    ("prune-no-out", ["prune", f"{W}/run"], "--out"),
    # --- sweep / report ---------------------------------------------------------------------
    ("sweep-unknown-spec", ["sweep", "no-such-spec", "--out", f"{W}/o"], "no-such-spec"),
    ("sweep-workers-0", ["sweep", f"{W}/spec.yaml", "--out", f"{W}/o", "--workers", "0"],
     ">= 1"),
    ("sweep-set", ["sweep", f"{W}/spec.yaml", "--out", f"{W}/o", "--set", "lr"], "KEY=VALUE"),
    ("sweep-set-unknown-key", ["sweep", f"{W}/spec.yaml", "--out", f"{W}/o", "--set",
                               "nosuch=1"], "nosuch"),
    ("sweep-out-a-file", ["sweep", f"{W}/spec.yaml", "--out", f"{W}/file.txt"], "is a file"),
    ("sweep-broken-spec", ["sweep", f"{W}/broken-spec.yaml", "--out", f"{W}/o"], "YAML"),
    ("sweep-pack-0", ["sweep", f"{W}/spec.yaml", "--out", f"{W}/o", "--pack", "0"], ">= 1"),
    ("report-missing", ["report", f"{W}/nope"], "not a sweep folder"),
    ("report-torn-index", ["report", f"{W}/sweep"], "damaged"),
    ("report-format", ["report", f"{W}/sweep", "--format", "pdf"], "invalid choice"),
    ("report-out", ["report", f"{W}/sweep", "--out", f"{W}/nope/t.md"], "does not exist"),
    # --- compare -----------------------------------------------------------------------------
    ("compare-ratio", ["compare", "--out", f"{W}/o", "--ratios", "1.5"], "in [0, 1)"),
    ("compare-l1-layers", ["compare", "--out", f"{W}/o", "--l1-layers", "C1"], "LAYER=SHARE"),
    ("compare-l1-unknown-layer", ["compare", "--out", f"{W}/o", "--data-dir", f"{W}/fashion",
                                  "--width", "0.0625", "--l1-layers", "C99=0.5"],
     "no conv layer(s) C99"),
    ("compare-l1-share", ["compare", "--out", f"{W}/o", "--data-dir", f"{W}/fashion",
                          "--width", "0.0625", "--l1-layers", "C1=2"], "fraction must be"),
    ("compare-method", ["compare", "--out", f"{W}/o", "--methods", "magic"], "invalid choice"),
    ("compare-out-a-file", ["compare", "--out", f"{W}/file.txt"], "is a file"),
    # --- models / simulate / demo ---------------------------------------------------------------
    ("models-width", ["models", "--width", "-1"], "width"),
    ("models-dataset", ["models", "--dataset", "svhn"], "valid data sets"),
    ("simulate-steps", ["simulate", "--steps", "0"], ">= 1"),
    ("simulate-optimizer", ["simulate", "--optimizers", "lamb", "--steps", "5"],
     "valid optimizers"),
    ("simulate-json", ["simulate", "--steps", "5", "--json", f"{W}/nope/s.json"],
     "does not exist"),
    ("demo-out-a-file", ["demo", "--out", f"{W}/file.txt"], "is a file"),
]


def test_the_table_is_large():
    assert len(CASES) >= 60
    assert len({name for name, _, _ in CASES}) == len(CASES)


def run_cli(argv: list[str]) -> int:
    """main(argv)'s exit status, also where argparse itself refuses (SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("argv, message", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(ws, capsys, argv, message):
    argv = [a.replace(W, str(ws)) for a in argv]
    before = tree_digest(ws)
    code = run_cli(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (code, err, captured.out[-500:])
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("implicit-sparsity"), err
    assert message in err, err
    assert tree_digest(ws) == before, "files changed on disk"
    assert not (ws.parent / "PWNED").exists(), "a poisoned pickle ran its payload"


def test_a_sweep_without_torch_pruning_stops_before_training(ws, capsys, monkeypatch):
    """Every run's evaluation removes its dead filters: a sweep checks for torch-pruning
    first instead of failing after its runs have trained."""
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import fails
    out = ws.parent / "no-tp-sweep"
    code = run_cli(["sweep", str(ws / "spec.yaml"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install torch-pruning" in err, err
    assert not (out / "runs").exists()
