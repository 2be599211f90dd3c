"""A user's own data, for `analyze --model` and `prune --model`: a tensor file or an image
folder, as a list of (inputs, labels or None) batches.

- A tensor file (`torch.save`): a float tensor [N, C, H, W] of inputs as the model takes
  them, or a dict {"x": inputs, "y": labels}. Loaded with `weights_only=True`.
- An image folder: images (any format Pillow reads) in class folders (`DIR/<class>/...`,
  labels by sorted class name) or directly in it (no labels); resized to `size` x `size`,
  scaled to [0, 1], then normalized with `mean` / `std` when given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from implicit_sparsity.data import formats
from implicit_sparsity.errors import ConfigError, DataFormatError, DatasetNotFoundError, first_line
from implicit_sparsity.io.files import require_regular_file

Batches = list[tuple[torch.Tensor, torch.Tensor | None]]


def _batches(x: torch.Tensor, y: torch.Tensor | None, batch_size: int) -> Batches:
    return [(x[i:i + batch_size], None if y is None else y[i:i + batch_size])
            for i in range(0, len(x), batch_size)]


def class_indices(y: torch.Tensor, path: Path) -> torch.Tensor:
    """Labels as int64 where they are whole numbers; others are refused here or, for a rank
    other than 1 (one-hot), by the model check, which says what was expected."""
    if y.ndim != 1:
        return y
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise DataFormatError(f"--data {path}: labels must be class indices, got values "
                                  "that are not whole numbers (NaN, inf or fractions)")
    elif y.dtype == torch.bool or y.is_complex():
        raise DataFormatError(f"--data {path}: labels must be class indices, got {y.dtype}")
    return y.long()


def check_normalization(mean, std, channels: int) -> None:
    """--mean and --std come together, one value per channel, std > 0."""
    if (mean is None) != (std is None):
        raise ConfigError("--mean and --std go together: give both (one value per channel) "
                          "or neither")
    if mean is None:
        return
    for flag, values in (("--mean", mean), ("--std", std)):
        if len(values) != channels:
            raise ConfigError(f"{flag} has {len(values)} value(s) for {channels} channel(s) "
                              "(--channels)")
    if any(s <= 0 for s in std):
        raise ConfigError(f"--std must be > 0 for every channel, got {list(std)}")


def load_user_data(path: str | Path, batch_size: int = 256, size: int | None = None,
                   mean: list[float] | None = None, std: list[float] | None = None,
                   channels: int = 3) -> Batches:
    path = Path(path)
    check_normalization(mean, std, channels)
    if not path.exists():
        raise DatasetNotFoundError(f"--data {path}: no such file or folder")
    if not path.is_dir():
        require_regular_file(path, "--data")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            first = first_line(error, 120)
            raise DataFormatError(f"--data {path}: not a tensor file ({first})") from None
        x, y = (saved.get("x"), saved.get("y")) if isinstance(saved, dict) else (saved, None)
        if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
            raise DataFormatError(f"--data {path}: expected a float tensor [N, C, H, W] or "
                                  "{'x': inputs, 'y': labels}")
        if y is not None and (not torch.is_tensor(y) or len(y) != len(x)):
            raise DataFormatError(f"--data {path}: 'y' must hold one label per input")
        if not len(x) or not bool(torch.isfinite(x).all()):
            raise DataFormatError(f"--data {path}: no inputs, or inputs that are not finite")
        if mean is not None or size is not None:
            raise ConfigError(f"--data {path} is a tensor file, which holds the inputs as the "
                              "model takes them: --mean / --std / --image-size apply to image "
                              "folders only")
        return _batches(x.float(), None if y is None else class_indices(y, path), batch_size)
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if classes:
        files, labels, _ = formats.class_folder_files(path, classes)
    else:
        files, labels = formats.list_images(path), None
    if not files:
        raise DatasetNotFoundError(f"--data {path}: no images found")
    mode = "L" if channels == 1 else "RGB"
    try:
        images = np.stack([formats.load_image(f, size, mode) for f in files])
    except Exception as error:
        first = first_line(error, 120)
        raise DataFormatError(f"--data {path}: cannot read its images ({first}); give "
                              "--image-size when they differ in size") from None
    x = torch.from_numpy(images).float() / 255.0
    if mean is not None and std is not None:
        x = (x - torch.tensor(mean).reshape(1, -1, 1, 1)) / torch.tensor(std).reshape(1, -1, 1, 1)
    y = torch.from_numpy(labels) if labels is not None else None
    return _batches(x, y, batch_size)
