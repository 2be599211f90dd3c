"""Writes that survive a kill or a power cut, loads that never run code, and folder locks.

- An atomic write goes to a temporary file in the target's folder, is flushed to the disk
  (fsync), renamed over the target, and the folder's entry is flushed too: a reader sees the
  old file or the new one, never half of one. A failed write (a full disk) leaves no
  temporary file behind and raises one `StorageError` line.
- `load_tensors` loads with `weights_only=True`: tensors and plain data, never pickled code.
- `FolderLock` holds an exclusive `flock` on a folder for as long as a run writes there.
  The OS releases it when the process ends, however it ends, so a killed run never leaves
  a stale lock. A kill in the middle of an atomic write leaves its temporary file behind;
  `FolderLock(..., tidy=True)` removes such leftovers when it takes a folder that one
  writer owns (a run folder).
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
import tempfile
from pathlib import Path

import torch

from implicit_sparsity.errors import ConfigError, RunStateError, StorageError


def _describe(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    return error.strerror or str(error)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename, a new file) to the disk, where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably (see the module's docstring)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise StorageError(f"cannot write {path}: {_describe(error)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:  # a full disk, or a SIGTERM / Ctrl-C while writing
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise StorageError(f"cannot write {path}: {_describe(error)}") from None
        raise
    fsync_folder(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: str | Path) -> None:
    """`torch.save` atomically: serialized in memory first, so that a full disk is a plain
    OSError of ours rather than an error from inside torch's C++ writer."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def append_line(path: str | Path, line: str) -> None:
    """Append one line and flush it to the disk."""
    try:
        with open(path, "a") as f:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise StorageError(f"cannot write {path}: {_describe(error)}") from None


def require_regular_file(path: str | Path, what: str) -> Path:
    """`path` is an existing regular file (not a folder, a FIFO or a device, whose reading
    could hang or never end); else one line naming `what`."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as error:
        reason = "no such file" if error.errno == errno.ENOENT else _describe(error)
        raise ConfigError(f"cannot read {what} {path}: {reason}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"cannot read {what} {path}: a folder, not a file")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"cannot read {what} {path}: not a regular file (a pipe or a "
                            "device?)")
    return path


def load_tensors(path: str | Path, map_location="cpu"):
    """Load a .pt file of tensors and plain data without ever running code from it."""
    require_regular_file(path, "file")
    return torch.load(path, map_location=map_location, weights_only=True)


def remove_leftover_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a kill interrupted, in `folder` and
    below (named `.TARGET.XXXX.tmp`); only for a folder whose lock this process holds and
    which no other process writes. Returns what was removed."""
    removed = []
    for path in folder.rglob(".*.tmp"):
        if path.is_file():
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


class FolderLock:
    """An exclusive lock on a folder for one writer; a second writer is refused at once.

        with FolderLock(out, what="run folder"):
            ...write into out...

    The lock is an `flock` on the folder itself (no lock file: taking it writes nothing),
    released by the OS when the process ends, however it ends. The folder is made if
    missing; if this lock made it and it is still empty when the lock is released, it is
    removed again, so a refused or failed start leaves nothing behind."""

    def __init__(self, folder: str | Path, what: str = "folder", tidy: bool = False):
        self.folder, self.what, self.tidy = Path(folder), what, tidy
        self._fd: int | None = None
        self._made = False

    def __enter__(self) -> "FolderLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise RunStateError(f"{self.folder} is a file, not a {self.what}")
        try:
            self._made = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise StorageError(f"cannot write into {self.folder}: {_describe(error)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunStateError(f"another process is writing {self.what} {self.folder}; wait "
                                "for it to end or choose another folder") from None
        self._fd = fd
        if self.tidy:
            remove_leftover_temporaries(self.folder)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        if self._made:
            try:
                self.folder.rmdir()  # only if still empty
            except OSError:
                pass
        os.close(self._fd)  # releases the flock
        self._fd = None
