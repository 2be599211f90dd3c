"""A fuzzer for the contract of every input boundary: generated configs, spec fragments and
command lines go through the real parser and commands on tiny data, and each ends either in
a result (exit 0) or in one line on stderr with exit 2, never a traceback, a hang or another
exit; a refused command changes no file of the workspace, and no command changes or removes
a file it did not make.

The cases are derandomized (the same in every CI run); `FUZZ_EXAMPLES=500 pytest
tests/test_fuzz.py` looks further."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import write_fashion_mnist  # noqa: E402
from implicit_sparsity.cli import main  # noqa: E402
from implicit_sparsity.errors import ImplicitSparsityError  # noqa: E402
from implicit_sparsity.study.report import render  # noqa: E402
from implicit_sparsity.study.spec import SPEC_KEYS, load_spec  # noqa: E402
from implicit_sparsity.train.config import TrainConfig  # noqa: E402
from test_bad_input import tree_digest  # noqa: E402
from test_nothing_lost import USER_MODELS  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))
FAST = settings(max_examples=EXAMPLES or 200, derandomize=not EXAMPLES, deadline=None,
                database=None, suppress_health_check=list(HealthCheck))
SLOW = settings(FAST, max_examples=EXAMPLES or 80)
#: The longest a generated command may take before it counts as a hang.
COMMAND_SECONDS = 60

# --- values as YAML and flags give them ------------------------------------------------------
NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from([2 ** 70, -(2 ** 63), 10 ** 7, 1e308]),
                    st.floats(allow_nan=True, allow_infinity=True, width=32))
SCALARS = st.one_of(NUMBERS, st.booleans(), st.none(),
                    st.sampled_from(["", "x", "adam", "sgd", "l2", "wd", "none", "0.25",
                                     "64-9x", "1e-3", "cpu", "cuda:7", "nan", "basicnet",
                                     "fashion-mnist", "cifar10", "[1, 2]"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "betas", "eps", "lr"]),
                                                 inner, max_size=2)), max_leaves=6)
CONFIG_KEYS = st.sampled_from([f for f in TrainConfig.__dataclass_fields__] + ["nosuch"])


@FAST
@given(st.dictionaries(CONFIG_KEYS, VALUES, max_size=4))
def test_any_config_resolves_or_is_refused_in_one_line(values):
    try:
        config = TrainConfig.from_dict(values).resolved()
    except ImplicitSparsityError as error:
        assert "\n" not in str(error).strip()
        return
    # accepted: then it is a config that a run can record and read back unchanged
    assert TrainConfig.from_dict(config.to_dict()).resolved() == config


SPEC_VALUES = st.one_of(VALUES, st.dictionaries(CONFIG_KEYS, VALUES, max_size=3),
                        st.lists(st.dictionaries(CONFIG_KEYS, VALUES, max_size=2), max_size=3))


@FAST
@given(st.dictionaries(st.sampled_from(sorted(SPEC_KEYS) + ["nosuch"]), SPEC_VALUES,
                       max_size=5))
@example({"variants": [{"optimizer": "adam", "optimizer_args": {"betas": [0.9, 0.99]}},
                       {"epochs": [1, 1]}]})  # rows labelled by a dict and by a list
def test_any_spec_loads_or_is_refused_in_one_line(tmp_path_factory, fragment):
    path = tmp_path_factory.mktemp("spec") / "fuzzed.yaml"
    path.write_text(yaml.safe_dump({"base": {"width": "0.0625", "epochs": [1]}, **fragment}))
    try:
        spec = load_spec(path)
    except ImplicitSparsityError as error:
        assert "\n" not in str(error).strip()
        return
    planned = spec.expand()
    assert planned  # accepted: it plans at least one run
    # ... and its runs, once evaluated, make a table in every format (its rows may be
    # labelled by any value a spec accepts: a dict, a list, None)
    records = [{**p.labels, "seed": p.seed, "key": p.key, "config": p.config.to_dict(),
                "test_error": 10.0 + i, "sparsity_gamma": float(i), "layers": {}}
               for i, p in enumerate(planned)]
    for fmt in ("markdown", "csv", "latex"):
        assert render({**spec.__dict__, "_quick": False}, records, fmt)


# --- command lines -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    fashion = write_fashion_mnist(root / "fashion", n_train=40, n_test=20)
    assert main(["train", "--data-dir", str(fashion), "--width", "0.0625", "--epochs", "1",
                 "--batch-size", "20", "--out", str(root / "run")]) == 0
    assert main(["prune", str(root / "run"), "--out", str(root / "slim"), "--no-latency"]) == 0
    (root / "notes").mkdir()
    (root / "notes" / "mine.txt").write_text("mine")
    (root / "config.yaml").write_text("lr: 0.01\nlam: 1e-3\n")
    (root / "usermodels.py").write_text(USER_MODELS)
    torch.save(torch.rand(4, 3, 8, 8), root / "x.pt")
    return root


PATHS = ["run", "run/checkpoint.pt", "run/summary.json", "run/config.yaml", "slim",
         "slim/slim.pt", "notes", "notes/mine.txt", "fashion", "config.yaml", "new",
         "new/out.json", "nope/x", "out.png", "out.json", ".", "x.pt", "usermodels.py"]
FLAG_VALUES = st.one_of(st.sampled_from(["0", "1", "2", "-1", "nan", "inf", "1e308", "x", "",
                                         str(2 ** 70), "0.5", "{a: 1}", "[1]", "{betas: 3}",
                                         "gamma", "activation", "adam", "sgd"]),
                        st.sampled_from(PATHS).map(lambda p: f"@{p}"))

#: Per command: its fixed head (tiny data, short work) and the flags that may be added.
COMMANDS = {
    "train": (["train", "--data-dir", "@fashion", "--width", "0.0625", "--epochs", "1",
               "--batch-size", "20"],
              ["--out", "--lr", "--lambda", "--optimizer", "--regularizer", "--seed",
               "--optimizer-args", "--config", "--train-subset", "--test-subset", "--width",
               "--batch-size", "--init-from", "--eval-batch-size", "--beta-init"]),
    "analyze": (["analyze", "--no-universality", "@run"],
                ["@", "--criterion", "--json", "--plots", "--batch-size", "--gamma-threshold",
                 "--model", "--weights", "--data", "--mean", "--std", "--units"]),
    "prune": (["prune", "--no-latency", "@run", "--out", "@new"],
              ["@", "--out", "--json", "--criterion", "--tolerance", "--batch-size",
               "--gamma-threshold", "--model", "--data", "--check-data"]),
    "simulate": (["simulate", "--steps", "20"],
                 ["--optimizers", "--regularizers", "--lambdas", "--steps", "--json", "--plot",
                  "--seed"]),
    "report": (["report"], ["@", "--out", "--format", "--figures"]),
    "sweep": (["sweep"], ["--status"]),
    "models": (["models"], ["--width", "--dataset"]),
}


#: Values each flag takes in normal use: drawn as often as any value, so that accepted
#: commands (whose outputs must not clobber anything) are a good share of the cases.
GOOD = {
    "@": ["@run", "@run/checkpoint.pt", "@slim"], "--out": ["@new", "@out"],
    "--lr": ["0.01"], "--lambda": ["1e-3", "0"], "--optimizer": ["sgd", "adam", "rmsprop"],
    "--regularizer": ["l2", "wd", "none"], "--seed": ["1"], "--optimizer-args": ["{eps: 1e-6}"],
    "--config": ["@config.yaml"], "--train-subset": ["20"], "--test-subset": ["10"],
    "--width": ["0.0625"], "--batch-size": ["10", "20"], "--init-from": ["@run/checkpoint.pt"],
    "--eval-batch-size": ["7"], "--beta-init": ["0.1"], "--criterion": ["gamma", "activation"],
    "--json": ["@out.json", "@run/analysis.json"], "--plots": ["@figures", "@run/figures"],
    "--gamma-threshold": ["1e-2"], "--tolerance": ["1e-3"], "--units": ["conv", "all"],
    "--optimizers": ["adam", "sgd"], "--regularizers": ["l2", "wd"], "--lambdas": ["1e-3"],
    "--steps": ["30"], "--plot": ["@out.png", "@out.svg"], "--format": ["latex", "csv"],
    "--figures": ["@figures"], "--status": ["@run", "@notes"], "--dataset": ["cifar10"],
    "--model": ["usermodels:convnet", "torch.nn:Identity"], "--weights": ["@run/checkpoint.pt"],
    "--data": ["@x.pt", "@notes"], "--check-data": ["@x.pt"], "--mean": ["0.5"],
    "--std": ["0.25"]}


@st.composite
def command_lines(draw) -> list[str]:
    name = draw(st.sampled_from(sorted(COMMANDS)))
    head, flags = COMMANDS[name]
    argv = list(head)
    for flag in draw(st.lists(st.sampled_from(flags), max_size=4, unique=True)):
        value = draw(st.one_of(st.sampled_from(GOOD.get(flag, ["1"])), FLAG_VALUES))
        if flag == "@":  # the positional: a path
            argv.append(value if value.startswith("@") else "@" + draw(st.sampled_from(PATHS)))
        else:
            argv += [flag, value]
    return argv


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def files_of(root: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(root).items() if v != "dir"}


@SLOW
@given(argv=command_lines())
def test_any_command_line_gives_a_result_or_one_line(ws, argv):
    argv = [a.replace("@", str(ws) + os.sep, 1) if a.startswith("@") else a for a in argv]
    before = files_of(ws)
    cwd = os.getcwd()
    os.chdir(ws)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(COMMAND_SECONDS)
    err_path = ws.parent / f"{ws.name}.stderr"
    try:
        with open(err_path, "w") as err, _redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse
                code = exit_.code
    except Hang:
        pytest.fail(f"{argv} ran past {COMMAND_SECONDS} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(cwd)
    stderr = err_path.read_text()
    after = files_of(ws)
    hypothesis.event(f"{argv[0]} exit {code}")
    assert code in (0, 2), (argv, code, stderr)
    assert "Traceback" not in stderr, (argv, stderr)
    if code == 2:
        assert stderr.count("\n") == 1 and stderr.startswith("implicit-sparsity"), (argv, stderr)
        assert after == before, (argv, "a refused command changed files")
    else:
        changed = sorted(k for k in before if after.get(k) != before[k])
        assert not changed, (argv, "changed or removed files it did not make", changed)
    _remove_new(ws, before)


class _redirect_stderr:
    """sys.stderr to a file for one command (capsys does not mix with hypothesis)."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        import sys

        self.saved, sys.stderr = sys.stderr, self.file

    def __exit__(self, *exc):
        import sys

        sys.stderr = self.saved


def _remove_new(root: Path, before: dict[str, str]) -> None:
    """Take back what an accepted command made, so that every case starts alike."""
    import shutil

    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        key = str(path.relative_to(root))
        if key in before or any(k.startswith(key + os.sep) for k in before):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
