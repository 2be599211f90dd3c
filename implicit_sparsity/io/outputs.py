"""One output policy for every command that writes: nothing it did not make is overwritten
or mixed, and a result appears whole or not at all.

- Every result folder of ours has a kind, told by the files it holds (`result_kind`): a run,
  a sweep, a slim model, a comparison, a findings folder, a demo folder.
- A file output (`--json`, `report --out`, `simulate --plot`) never replaces a file that
  belongs to a result folder; it replaces another existing file only with `--overwrite`.
- A folder output is refused when it holds a result of another kind, or files that are not
  a result; a folder of the same kind is taken up again where its command resumes (a run, a
  sweep, a comparison, the findings, the demo: each checks that it is the same work) and
  replaced whole only with `--overwrite` where it does not (a slim model). A result folder
  is never made inside another one.
- A folder output that is written in one go (`staged_folder`) is built in a hidden sibling
  and moved into place when complete: a kill, a full disk or an error leaves the previous
  folder, or none, never a part. A figure is saved to a temporary file and renamed.

`OutputPlan` applies these rules to every output of one command before any work starts,
and refuses two outputs that overlap (the same file twice, a file inside an output folder).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from implicit_sparsity.errors import ConfigError, StorageError
from implicit_sparsity.io import run_dir as rd
from implicit_sparsity.io.files import fsync_folder

#: Prefix of the hidden sibling a staged folder is built in (`.NAME.partial-PID`).
PARTIAL = ".partial-"


def _has(folder: Path, *names: str) -> bool:
    return all((folder / name).exists() for name in names)


def _holds_run(folder: Path) -> bool:
    """A checkpoint, a summary or a divergence record; or a config.yaml with the files a run
    writes first (a config.yaml alone is any project's file)."""
    return (_has(folder, rd.CHECKPOINT) or _has(folder, rd.SUMMARY) or _has(folder, rd.DIVERGED)
            or (_has(folder, rd.CONFIG) and (_has(folder, rd.METRICS)
                                             or _has(folder, rd.BN_HISTORY))))


def _any_child_run(folder: Path, names: tuple[str, ...]) -> bool:
    for name in names:
        child = folder / name
        if child.is_dir() and (_holds_run(child) or any(
                _holds_run(grandchild) for grandchild in child.iterdir()
                if grandchild.is_dir())):
            return True
    return False


def _findings(folder: Path) -> bool:
    if _has(folder, "findings.json") or _has(folder, "findings.yaml"):
        return True
    spec = folder / "runs" / "spec.yaml"  # a findings folder of an earlier version
    try:
        return spec.is_file() and "name: findings-" in spec.read_text()
    except OSError:
        return False


#: Each kind of result folder and how it is told apart, most specific first.
KINDS: tuple[tuple[str, str, object], ...] = (
    ("slim", "a slim model", lambda f: _has(f, "slim.pt") or _has(f, "prune_report.json")),
    ("findings", "a findings folder", _findings),
    ("comparison", "a comparison",
     lambda f: _has(f, "comparison.json")
     or _any_child_run(f, ("implicit", "slimming", "l1norm", "selectivity"))),
    ("sweep", "a sweep folder", lambda f: _has(f, "index.json") or _has(f, "spec.yaml", "runs")),
    ("demo", "a demo folder", lambda f: _any_child_run(f, ("full", "quick"))),
    ("run", "a run folder", _holds_run),
)
DESCRIPTIONS = {name: text for name, text, _ in KINDS}


def result_kind(folder: str | Path) -> str | None:
    """The kind of result `folder` holds (a key of DESCRIPTIONS), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    try:
        for name, _, test in KINDS:
            if test(folder):
                return name
    except OSError:
        return None
    return None


def enclosing_result(path: str | Path) -> tuple[str, Path] | None:
    """The nearest folder at or above `path` that is a result folder: (kind, folder)."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        kind = result_kind(folder)
        if kind is not None:
            return kind, folder
    return None


def _foreign_entries(folder: Path) -> list[str]:
    """What a folder holds besides the hidden leftovers of staged writes."""
    return sorted(p.name for p in folder.iterdir() if PARTIAL not in p.name)


def check_output_file(path: str | Path, flag: str, overwrite: bool = False) -> Path:
    """A file output: its folder exists and is writable, it is not a folder, it is not part
    of a result folder, and it exists already only when `overwrite` allows replacing it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {path}: folder {parent} is not writable")
    if path.exists():
        owner = enclosing_result(parent)
        if owner is not None:
            raise ConfigError(f"{flag} {path} would overwrite a file of {DESCRIPTIONS[owner[0]]}"
                              f" ({owner[1]}); write it elsewhere")
        if not overwrite:
            raise ConfigError(f"{flag} {path} exists; give another name, or --overwrite to "
                              "replace it")
        if not path.is_file():
            raise ConfigError(f"{flag} {path} is not a regular file")
    return path


def _writable_folder_path(path: str | Path, flag: str) -> Path:
    """A folder can be made or written at `path` (nothing on the way is a file)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"{flag} {path}: {probe} is not writable")
    return path


def check_output_folder(path: str | Path, flag: str, kind: str, *, resumable: bool,
                        overwrite: bool = False) -> Path:
    """A folder output for a result of `kind` (see the module's docstring)."""
    path = _writable_folder_path(path, flag)
    owner = enclosing_result(path.absolute().parent)
    if owner is not None:
        raise ConfigError(f"{flag} {path} is inside {DESCRIPTIONS[owner[0]]} ({owner[1]}); "
                          f"choose a folder outside it")
    if not path.is_dir() or not _foreign_entries(path):
        return path
    found = result_kind(path)
    if found is None:
        shown = ", ".join(_foreign_entries(path)[:3])
        raise ConfigError(f"{flag} {path} holds files that are not {DESCRIPTIONS[kind]} "
                          f"({shown}, ...); choose a new or empty folder")
    if found != kind:
        raise ConfigError(f"{flag} {path} holds {DESCRIPTIONS[found]}, not "
                          f"{DESCRIPTIONS[kind]}; choose another folder")
    if not resumable and not overwrite:
        raise ConfigError(f"{flag} {path} already holds {DESCRIPTIONS[kind]}; choose another "
                          "folder, or --overwrite to replace it whole")
    return path


def check_figures_folder(path: str | Path, flag: str) -> Path:
    """A folder of figures (derived from results, rewritten file by file): it may sit inside
    a result folder, but may not be one, nor a file."""
    path = _writable_folder_path(path, flag)
    found = result_kind(path)
    if found is not None:
        raise ConfigError(f"{flag} {path} holds {DESCRIPTIONS[found]}; figures go into a "
                          "folder of their own")
    return path


@dataclass
class OutputPlan:
    """Every output of one command, checked before any work starts and against each other.

        plan = OutputPlan(overwrite=args.overwrite)
        out = plan.folder(args.out, "--out", "slim", resumable=False)
        json_path = plan.file(args.json, "--json")
    """

    overwrite: bool = False
    claimed: list[tuple[Path, str, bool]] = field(default_factory=list)  # path, flag, folder

    def _claim(self, path: Path, flag: str, is_folder: bool) -> None:
        mine = path.absolute()
        for other, other_flag, other_is_folder in self.claimed:
            inside = other_is_folder and other in mine.parents
            contains = is_folder and mine in other.parents
            if mine == other or inside or contains:
                raise ConfigError(f"{flag} {path} and {other_flag} {other} overlap; give "
                                  "each output a place of its own")
        self.claimed.append((mine, flag, is_folder))

    def file(self, path: str | Path | None, flag: str) -> Path | None:
        if path is None:
            return None
        self._claim(Path(path), flag, False)  # overlaps first: the clearer line
        return check_output_file(path, flag, self.overwrite)

    def folder(self, path: str | Path | None, flag: str, kind: str, *,
               resumable: bool) -> Path | None:
        if path is None:
            return None
        self._claim(Path(path), flag, True)  # overlaps first: the clearer line
        return check_output_folder(path, flag, kind, resumable=resumable,
                                      overwrite=self.overwrite)

    def figures(self, path: str | Path | None, flag: str) -> Path | None:
        if path is None:
            return None
        self._claim(Path(path), flag, True)  # overlaps first: the clearer line
        return check_figures_folder(path, flag)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(target: Path) -> None:
    """Remove the staging folders of `target` that a killed process left behind."""
    parent = target.absolute().parent
    if not parent.is_dir():
        return
    for entry in parent.glob(f".{target.name}{PARTIAL}*"):
        pid = entry.name.rsplit(PARTIAL, 1)[-1].split(".")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(target: str | Path, replace: bool = False):
    """Build a folder in a hidden sibling, then move it into place as a whole.

        with staged_folder(out, replace=args.overwrite) as stage:
            write files into stage

    On success the stage becomes `target` (an existing `target` is replaced only when
    `replace`, else it must be empty or missing); on any error or interruption the stage is
    removed and `target` is as it was."""
    target = Path(target).absolute()
    remove_stale_partials(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=target.parent,
                                      prefix=f".{target.name}{PARTIAL}{os.getpid()}."))
    except OSError as error:
        raise StorageError(f"cannot write into {target.parent}: {error.strerror or error}"
                           ) from None
    moved = False
    try:
        yield stage
        _move_into_place(stage, target, replace)
        moved = True
    finally:  # an error, Ctrl-C or SIGTERM: the stage goes, the target stays as it was
        if not moved:
            shutil.rmtree(stage, ignore_errors=True)


def _move_into_place(stage: Path, target: Path, replace: bool) -> None:
    old = None
    try:
        if target.exists():
            if not replace and _foreign_entries(target):
                raise StorageError(f"{target} was filled while this command ran; its result "
                                   f"is left in {stage}")
            old = target.parent / f".{target.name}{PARTIAL}{os.getpid()}.old"
            os.replace(target, old)
        os.replace(stage, target)
    except OSError as error:
        if old is not None and not target.exists():
            os.replace(old, target)
        raise StorageError(f"cannot move the result into {target}: {error.strerror or error}"
                           ) from None
    fsync_folder(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """`fig.savefig` to a temporary file beside `path`, renamed over it when complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format=kwargs.pop("format", path.suffix.lstrip(".") or "png"), **kwargs)
        os.replace(tmp, path)
    except OSError as error:
        raise StorageError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # gone already when the rename went through
    return path
