"""Image folders decoded once: data sets read from image files (TinyImageNet, ObjectNet3D) are
decoded and kept on disk as one uint8 array, so that the next run over the same files reads
one file instead of decoding 100,000 JPEGs again.

The cache file's name holds a hash of every file's path, size and modification time and of
the target size: a changed, added or removed image means a new decode. Set
`IMPLICIT_SPARSITY_CACHE` to a folder to keep the arrays there, or to `off` to keep none;
by default they go to `$XDG_CACHE_HOME/implicit-sparsity` (`~/.cache/...`).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from implicit_sparsity.data import formats

CACHE_ENV = "IMPLICIT_SPARSITY_CACHE"


def cache_dir() -> Path | None:
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "implicit-sparsity"


def cache_path(files: list[Path], size: int, name: str) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    digest = hashlib.sha1(f"{size}\n".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return folder / f"{slug}-{len(files)}x{size}px-{digest.hexdigest()[:16]}.npy"


def decode_images(files: list[Path], size: int, desc: str) -> np.ndarray:
    """Every file as uint8 3 x size x size, in order. One thread: at 64 x 64 a decode is so
    short that Python's own work per image dominates, and threads measured slower."""

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(tqdm(files, desc=desc, disable=None, leave=False)):
        out[i] = formats.load_image(path, size)
    return out


def load_images(files: list[Path], size: int, desc: str) -> np.ndarray:
    """`decode_images`, from the cache when these files were decoded before."""
    path = cache_path(files, size, desc)
    if path is not None and path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # a damaged cache file: decode again and replace it
    images = decode_images(files, size, desc)
    if path is not None and keep(images, path):
        print(f"kept the decoded {desc} images in {path} ({images.nbytes / 2**20:,.0f} MiB; "
              f"{CACHE_ENV}=off keeps none)", file=sys.stderr)
    return images


def keep(images: np.ndarray, path: Path) -> bool:
    """Write atomically (a parallel run never reads half a file); False where the cache
    cannot be written (read-only, full): the data set is still served, just not kept."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            temporary = f.name
            np.save(f, images)
        os.replace(temporary, path)
        return True
    except OSError:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        return False
