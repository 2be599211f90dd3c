"""Data sets found by name: where their files are, how to read them, what they feed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from implicit_sparsity.data import formats
from implicit_sparsity.data.device_data import DeviceTensorData, pad_to, seeded_subset
from implicit_sparsity.data.image_cache import load_images
from implicit_sparsity.data.streaming import StreamingImageData
from implicit_sparsity.errors import ConfigError, DataFormatError, DatasetNotFoundError

#: Where data sets other than the Debian-packaged Fashion-MNIST are looked for by default.
DATA_ROOT_ENV = "IMPLICIT_SPARSITY_DATA"
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

#: Arrays as read from disk: train images, train labels, test images, test labels.
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    num_classes: int
    in_channels: int
    image_size: int
    head: str          # which fc head the paper uses with it
    schedule: str      # key of defaults.PAPER_SCHEDULES
    folder: str        # its usual folder name under the data root
    how_to_get: str
    find: Callable[[Path], Path | None]  # the folder holding the files, or None
    read: Callable[[Path], Arrays] | None = None       # in-memory data sets
    streaming: bool = False


def _first_existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.exists()), None)


# --- Fashion-MNIST (IDX) ---------------------------------------------------------------------
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_file(folder: Path, stem: str) -> Path | None:
    return _first_existing(folder / f"{stem}.gz", folder / stem)


def _find_fashion(folder: Path) -> Path | None:
    return folder if all(_idx_file(folder, s) for s in FASHION_FILES) else None


def _read_fashion(folder: Path) -> Arrays:
    arrays = [formats.read_idx(_idx_file(folder, s)) for s in FASHION_FILES]
    train_x, train_y, test_x, test_y = arrays
    return (train_x[:, None], train_y.astype(np.int64), test_x[:, None],
            test_y.astype(np.int64))


# --- CIFAR-10 / CIFAR-100 (python pickles) ---------------------------------------------------
def _cifar_finder(inner: str, marker: str):
    def find(folder: Path) -> Path | None:
        for candidate in (folder, folder / inner):
            if (candidate / marker).is_file():
                return candidate
        return None
    return find


def _read_cifar10(folder: Path) -> Arrays:
    parts = [formats.read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = formats.read_cifar_batch(folder / "test_batch")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            test_x, test_y)


def _read_cifar100(folder: Path) -> Arrays:
    train_x, train_y = formats.read_cifar_batch(folder / "train")
    test_x, test_y = formats.read_cifar_batch(folder / "test")
    return train_x, train_y, test_x, test_y


# --- TinyImageNet (its folder layout) --------------------------------------------------------
def _find_tiny(folder: Path) -> Path | None:
    for candidate in (folder, folder / "tiny-imagenet-200"):
        if (candidate / "wnids.txt").is_file() and (candidate / "train").is_dir():
            return candidate
    return None


def _read_tiny(folder: Path) -> Arrays:
    """train/<wnid>/images/*.JPEG for training; val/images + val_annotations.txt for testing."""
    wnids = [w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()]
    train_files, train_labels, _ = formats.class_folder_files(folder / "train", wnids)
    index = {w: i for i, w in enumerate(wnids)}
    val_files, val_labels = [], []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in index:
            val_files.append(folder / "val" / "images" / fields[0])
            val_labels.append(index[fields[1]])
    return (load_images(train_files, 64, "TinyImageNet train"), train_labels,
            load_images(val_files, 64, "TinyImageNet val"), np.asarray(val_labels, np.int64))


# --- Class folders (ImageNet, ObjectNet3D renderings) ----------------------------------------
def _test_split(folder: Path) -> Path | None:
    return _first_existing(folder / "val", folder / "test")


def _class_folder_finder(inner: str):
    def find(folder: Path) -> Path | None:
        for candidate in (folder, folder / inner):
            if (candidate / "train").is_dir() and _test_split(candidate):
                return candidate
        return None
    return find


def _read_objectnet3d(folder: Path) -> Arrays:
    """Renderings held in memory at 64x64 (supplement section 4)."""
    train_files, train_y, classes = formats.class_folder_files(folder / "train")
    test_files, test_y, _ = formats.class_folder_files(_test_split(folder), classes)
    return (load_images(train_files, 64, "ObjectNet3D train"), train_y,
            load_images(test_files, 64, "ObjectNet3D test"), test_y)


DATASETS: dict[str, DatasetEntry] = {e.name: e for e in (
    DatasetEntry("fashion-mnist", "Fashion-MNIST, 28x28 grayscale, 10 classes (offline default)",
                 10, 1, 28, "cifar", "cifar", "fashion-mnist",
                 "install the Debian package: sudo apt-get install dataset-fashion-mnist "
                 f"(files go to {FASHION_MNIST_DEBIAN_DIR}), or pass --data-dir to a folder "
                 "holding the four IDX files", _find_fashion, _read_fashion),
    DatasetEntry("cifar10", "CIFAR-10, 32x32 RGB, 10 classes (python pickle batches)",
                 10, 3, 32, "cifar", "cifar", "cifar-10-batches-py",
                 "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack it",
                 _cifar_finder("cifar-10-batches-py", "data_batch_1"), _read_cifar10),
    DatasetEntry("cifar100", "CIFAR-100, 32x32 RGB, 100 classes (python pickles)",
                 100, 3, 32, "cifar", "cifar", "cifar-100-python",
                 "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and unpack it",
                 _cifar_finder("cifar-100-python", "train"), _read_cifar100),
    DatasetEntry("tinyimagenet", "TinyImageNet, 64x64 RGB, 200 classes (its folder layout)",
                 200, 3, 64, "tinyimagenet", "tinyimagenet", "tiny-imagenet-200",
                 "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unpack it",
                 _find_tiny, _read_tiny),
    DatasetEntry("imagenet", "ImageNet, class folders train/<class>/ and val/<class>/, "
                 "resize 256, crop 224", 1000, 3, 224, "imagenet", "imagenet-basicnet",
                 "imagenet", "arrange ILSVRC-2012 as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
                 _class_folder_finder("imagenet"), streaming=True),
    DatasetEntry("objectnet3d", "ObjectNet3D-style renderings, class folders train/ and "
                 "val/ (or test/), held in memory at 64x64", 30, 3, 64, "cifar", "cifar",
                 "objectnet3d", "render the 30 classes of the supplement (section 4) into "
                 "train/<class>/ and val/<class>/ folders", _class_folder_finder("objectnet3d"),
                 _read_objectnet3d),
)}
# The task-difficulty study (section 3): the same renderings on a clean and a cluttered
# background, as two data sets so that runs on them are told apart.
for _variant in ("clean", "cluttered"):
    _name = f"objectnet3d-{_variant}"
    DATASETS[_name] = DatasetEntry(
        _name, f"ObjectNet3D renderings, {_variant} background (class folders, 64x64)",
        30, 3, 64, "cifar", "cifar", _name,
        f"render the 30 classes of the supplement on a {_variant} background into "
        "train/<class>/ and val/<class>/ folders", _class_folder_finder(_name),
        _read_objectnet3d)


def check_arrays(entry: DatasetEntry, folder: Path, split: str, images: np.ndarray,
                 labels: np.ndarray) -> None:
    """Images and labels that match each other and the data set, or one clear line: a data
    set that is off trains on misaligned data or fails in the middle of a run."""
    where = f"{entry.name} {split} split in {folder}"
    expected = (entry.in_channels, entry.image_size, entry.image_size)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise DataFormatError(f"{where}: images of shape {tuple(images.shape[1:])}, expected "
                              f"{expected}")
    if len(images) != len(labels):
        raise DataFormatError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= entry.num_classes):
        raise DataFormatError(f"{where}: labels from {labels.min()} to {labels.max()}, "
                              f"expected 0 to {entry.num_classes - 1}")


def get_dataset_entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; valid data sets: {', '.join(DATASETS)}")
    return DATASETS[name]


def candidate_dirs(entry: DatasetEntry, data_dir: str | Path | None) -> list[Path]:
    """Where a data set is looked for: --data-dir if given, else its default places."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    root = Path(os.environ.get(DATA_ROOT_ENV, "data")).expanduser()
    places = [root / entry.folder, root]
    if entry.name == "fashion-mnist":
        places.insert(0, Path(FASHION_MNIST_DEBIAN_DIR))
    return places


def locate(entry: DatasetEntry, data_dir: str | Path | None) -> Path:
    """The folder holding a data set's files, or one clear error naming where we looked."""
    places = candidate_dirs(entry, data_dir)
    for place in places:
        found = entry.find(place) if place.is_dir() else None
        if found is not None:
            return found
    looked = ", ".join(str(p) for p in places)
    raise DatasetNotFoundError(f"{entry.name} not found (looked in: {looked}); to get it: "
                               f"{entry.how_to_get}; then pass --data-dir (or set {DATA_ROOT_ENV})")


def _first_classes(files: list, labels: np.ndarray, classes: int) -> tuple[list, np.ndarray]:
    keep = np.flatnonzero(labels < classes)
    return [files[i] for i in keep], labels[keep]


def load_dataset(name: str, data_dir: str | Path | None = None, *, device="cpu",
                 train_subset: int | None = None, test_subset: int | None = None,
                 subset_seed: int = 0, min_size: int = 0, num_workers: int = 4,
                 mean: list[float] | None = None, std: list[float] | None = None,
                 classes: int | None = None):
    """Read a data set and put it where training needs it.

    In-memory data sets come back as `DeviceTensorData` (uint8 on `device`); images smaller
    than `min_size` are zero-padded up to it (e.g. 28x28 Fashion-MNIST for VGG's five
    pools). ImageNet comes back as `StreamingImageData`. Subsets are fixed by `subset_seed`.
    `mean` / `std` (per channel, in [0, 1] units) default to the training images' own.
    `classes`: keep only the images of the first N classes (before the subsets are drawn).
    """
    entry = get_dataset_entry(name)
    folder = locate(entry, data_dir)
    if entry.streaming:
        train_files, train_y, names = formats.class_folder_files(folder / "train")
        test_files, test_y, _ = formats.class_folder_files(_test_split(folder), names)
        if classes is not None:  # the first N classes by name, before the subsets
            train_files, train_y = _first_classes(train_files, train_y, classes)
            test_files, test_y = _first_classes(test_files, test_y, classes)
        train_idx = seeded_subset(len(train_files), train_subset, subset_seed,
                                  f"train_subset of {name}")
        test_idx = seeded_subset(len(test_files), test_subset, subset_seed + 1,
                                 f"test_subset of {name}")
        if train_idx is not None:
            train_files, train_y = [train_files[i] for i in train_idx], train_y[train_idx]
        if test_idx is not None:
            test_files, test_y = [test_files[i] for i in test_idx], test_y[test_idx]
        if not train_files or not test_files:
            raise DatasetNotFoundError(f"{name}: no images found under {folder}")
        return StreamingImageData(train_files, train_y, test_files, test_y,
                                  classes or entry.num_classes, device, num_workers, mean,
                                  std)
    train_x, train_y, test_x, test_y = entry.read(folder)
    if len(train_y) == 0 or len(test_y) == 0:
        raise DatasetNotFoundError(f"{name}: no images found under {folder}")
    check_arrays(entry, folder, "train", train_x, train_y)
    check_arrays(entry, folder, "test", test_x, test_y)
    if classes is not None:
        train_x, train_y = train_x[train_y < classes], train_y[train_y < classes]
        test_x, test_y = test_x[test_y < classes], test_y[test_y < classes]
    train_idx = seeded_subset(len(train_y), train_subset, subset_seed, f"train_subset of {name}")
    test_idx = seeded_subset(len(test_y), test_subset, subset_seed + 1, f"test_subset of {name}")
    if train_idx is not None:
        train_x, train_y = train_x[train_idx], train_y[train_idx]
    if test_idx is not None:
        test_x, test_y = test_x[test_idx], test_y[test_idx]
    return DeviceTensorData(pad_to(train_x, min_size), train_y, pad_to(test_x, min_size), test_y,
                            classes or entry.num_classes, torch.device(device), mean, std)
