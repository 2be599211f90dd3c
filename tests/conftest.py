"""Small data sets written in each real format, read back by the real loaders."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from implicit_sparsity.data.formats import write_idx

torch.set_num_threads(2)


def import_torchvision():
    """torchvision, or None where it is not installed. The registry's wheel is a CUDA build:
    beside the CPU torch its C ops do not load and the import fails while registering fake
    kernels for nms / qnms; defining those two schemas first lets the classification models
    (which never call them) import. Done once for the whole suite, before anything (timm,
    Lightning's torchmetrics) imports torchvision."""
    try:
        import torchvision
    except ImportError:
        return None
    except Exception:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_torchvision.library = library  # keep the definitions alive
        import torchvision
    return torchvision


TORCHVISION = import_torchvision()


@pytest.fixture(autouse=True)
def same_threads_for_every_test():
    """A test (or the code under it: `prune --threads`, latency timing) that changes torch's
    thread count must not change the next one's float sums: bitwise resume tests compare
    against runs made with the suite's 2 threads."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def image_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Decoded-image caches go to a temporary folder, never to the user's ~/.cache."""
    monkeypatch.setenv("IMPLICIT_SPARSITY_CACHE", str(tmp_path_factory.mktemp("image-cache")))


def class_pattern_images(n: int, classes: int, channels: int, size: int, seed: int):
    """Images whose class is visible (a bright band at a class-dependent row), so that a
    tiny model can learn something; labels cycle through all classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 60, size=(n, channels, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        row = int(label * size / classes)
        images[i, :, row:row + max(1, size // classes), :] = 220
    return images, labels.astype(np.int64)


def write_fashion_mnist(folder: Path, n_train=120, n_test=60, gz=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = class_pattern_images(n, 10, 1, 28, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images[:, 0])
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels.astype(np.uint8))
    return folder


def write_cifar_pickle(path: Path, images: np.ndarray, labels: np.ndarray, key: str) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"data": images.reshape(len(images), -1), key.encode(): labels.tolist(),
                     b"batch_label": b"synthetic"}, f)


def write_cifar10(folder: Path, per_batch=8, n_test=10) -> Path:
    inner = folder / "cifar-10-batches-py"
    inner.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        images, labels = class_pattern_images(per_batch, 10, 3, 32, i)
        write_cifar_pickle(inner / f"data_batch_{i}", images, labels, "labels")
    images, labels = class_pattern_images(n_test, 10, 3, 32, 9)
    write_cifar_pickle(inner / "test_batch", images, labels, "labels")
    return folder


def write_cifar100(folder: Path, n_train=30, n_test=10) -> Path:
    inner = folder / "cifar-100-python"
    inner.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = class_pattern_images(n, 100, 3, 32, seed)
        labels = (labels * 7) % 100
        write_cifar_pickle(inner / name, images, labels, "fine_labels")
    return folder


def save_png(path: Path, chw: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(chw.transpose(1, 2, 0)).save(path)


@pytest.fixture
def fashion_dir(tmp_path) -> Path:
    return write_fashion_mnist(tmp_path / "fashion")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skip is a failure, except for want of a CUDA device: what the README
    says works, CI runs (a missing package or a SLURM cluster that did not start fails)."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped:
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(
        report.longrepr)
    if "CUDA" not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run it: {reason}"
