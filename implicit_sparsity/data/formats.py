"""Readers of the data sets' own file formats: IDX, CIFAR python pickles, image files.

They return numpy uint8 arrays in NCHW layout and int64 labels; nothing here knows about
training. The readers accept the files exactly as their publishers ship them (IDX may be
gzipped) and never check MD5 sums, so that tests can write small files of their own.
A file that is not what it claims to be raises `DataFormatError` with one line; a CIFAR
pickle is read by an unpickler that builds containers, numbers, strings and numpy arrays
only, so a poisoned batch file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from implicit_sparsity.errors import DataFormatError, first_line

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(f"cannot read {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataFormatError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataFormatError(f"{path} is truncated inside its header")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    count = int(np.prod(dims, dtype=object)) if dims else 1
    if len(data) - offset < count * dtype.itemsize:
        raise DataFormatError(f"{path} is truncated: expected {count} values of shape {dims}")
    return np.frombuffer(data, dtype, count, offset).reshape(dims).copy()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


#: What a CIFAR pickle may build besides the builtin containers, strings and numbers: numpy
#: arrays (under their numpy 1 and numpy 2 module names) and the bytes of protocol-2 pickles.
SAFE_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles data only: any other global (a function, a class) is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a data file may hold "
                                     "only arrays, containers, strings and numbers")


def safe_pickle_load(data: bytes):
    return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle batch -> (uint8 [N,3,32,32], int64 labels).

    CIFAR-10 batches carry `labels`, CIFAR-100 files carry `fine_labels` (used here). The
    pickle is read by `SafeUnpickler`: it never runs code from the file.
    """
    try:
        entry = safe_pickle_load(Path(path).read_bytes())
    except OSError as error:
        raise DataFormatError(f"cannot read {path}: {error.strerror or error}") from None
    except Exception as error:  # a damaged pickle raises anything from EOFError to KeyError
        first = first_line(error)
        raise DataFormatError(f"{path} is not a CIFAR batch: {first}") from None
    if not isinstance(entry, dict):
        raise DataFormatError(f"{path} is not a CIFAR batch (not a dictionary)")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    labels = entry.get("labels", entry.get("fine_labels"))
    if labels is None or "data" not in entry:
        raise DataFormatError(f"{path} is not a CIFAR batch (no data / labels)")
    try:
        images = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise DataFormatError(f"{path}: data / labels are not arrays of numbers") from None
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{path}: data of shape {images.shape}, expected N x 3072 "
                              "(32x32 RGB images)")
    return images.reshape(-1, 3, 32, 32), labels


def load_image(path: Path, size: int | None = None, mode: str = "RGB") -> np.ndarray:
    """Decode an image file into uint8 CHW, resized to size x size when asked."""

    with Image.open(path) as image:
        image = image.convert(mode)
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array.transpose(2, 0, 1).copy()


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp"}


def list_images(folder: Path) -> list[Path]:
    """Image files under a folder, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def class_folder_files(split_dir: Path, classes: list[str] | None = None
                       ) -> tuple[list[Path], np.ndarray, list[str]]:
    """`split_dir/<class>/**/image` -> (files, labels, class names sorted by name)."""
    if classes is None:
        classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        folder = split_dir / name
        found = list_images(folder) if folder.is_dir() else []
        files += found
        labels += [index] * len(found)
    return files, np.asarray(labels, dtype=np.int64), classes
