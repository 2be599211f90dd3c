"""Training data that lives on the training device, augmented there in whole batches.

Small data sets (Fashion-MNIST, CIFAR, TinyImageNet, ObjectNet3D renderings) are held as
uint8 tensors on the device; each batch is cropped, flipped and normalized with a few
vectorized tensor ops, so the training loop does no per-sample Python work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from implicit_sparsity.errors import ConfigError


@dataclass
class Augmentation:
    """Training augmentation: random horizontal flip, random crop after zero padding."""

    flip: bool = True
    crop_padding: int = 0


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (float64 sums)."""
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    std = np.where(std > 0, std, 1.0)
    return mean.tolist(), std.tolist()


def seeded_subset(total: int, size: int | None, seed: int, what: str = "subset"
                  ) -> np.ndarray | None:
    """A fixed random subset of `size` indices (sorted), or None for all of them. A subset
    larger than what there is is refused (it would silently be all of it)."""
    if size is not None and size > total:
        raise ConfigError(f"{what} {size:,} is more than the {total:,} images there are")
    if size is None or size >= total:
        return None
    generator = torch.Generator().manual_seed(seed)
    return np.sort(torch.randperm(total, generator=generator)[:size].numpy())


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad uint8 NCHW images symmetrically up to size x size (no-op when large enough)."""
    h, w = images.shape[2:]
    if h >= size and w >= size:
        return images
    top, left = max(0, size - h) // 2, max(0, size - w) // 2
    out = np.zeros(images.shape[:2] + (max(h, size), max(w, size)), dtype=images.dtype)
    out[:, :, top:top + h, left:left + w] = images
    return out


@dataclass
class AugmentationDraw:
    """The random choices of one batch: crop offsets [2, n] (None: no crop), flips [n]."""

    offsets: torch.Tensor | None
    flips: torch.Tensor | None


def draw_augmentation(n: int, aug: Augmentation, generator: torch.Generator,
                      device: torch.device) -> AugmentationDraw:
    """Draw a batch's crop offsets, then its flips (this order fixes what a seed gives)."""
    p = aug.crop_padding
    offsets = (torch.randint(0, 2 * p + 1, (2, n), device=device, generator=generator)
               if p > 0 else None)
    flips = torch.rand(n, device=device, generator=generator) < 0.5 if aug.flip else None
    return AugmentationDraw(offsets, flips)


def apply_augmentation(x: torch.Tensor, padding: int, draw: AugmentationDraw) -> torch.Tensor:
    """Crop after zero padding, then flip, a uint8 NCHW batch on its device, as drawn."""
    n, c, h, w = x.shape
    if draw.offsets is not None:
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = (draw.offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (draw.offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if draw.flips is not None:
        x = torch.where(draw.flips[:, None, None, None], x.flip(3), x)
    return x


def random_crop_flip(x: torch.Tensor, aug: Augmentation, generator: torch.Generator
                     ) -> torch.Tensor:
    """Augment a uint8 NCHW batch on its device: crop after zero padding, then flip."""
    draw = draw_augmentation(len(x), aug, generator, x.device)
    return apply_augmentation(x, aug.crop_padding, draw)


class DeviceTensorData:
    """A train and a test split as uint8 tensors on one device, served in normalized batches."""

    def __init__(self, train_images: np.ndarray, train_labels: np.ndarray,
                 test_images: np.ndarray, test_labels: np.ndarray, num_classes: int,
                 device: torch.device | str = "cpu", mean: list[float] | None = None,
                 std: list[float] | None = None):
        self.device = torch.device(device)
        if mean is None or std is None:
            mean, std = channel_stats(train_images)
        self.mean, self.std = list(mean), list(std)
        self.train_images = torch.from_numpy(np.ascontiguousarray(train_images)).to(self.device)
        self.train_labels = torch.from_numpy(np.asarray(train_labels, np.int64)).to(self.device)
        self.test_images = torch.from_numpy(np.ascontiguousarray(test_images)).to(self.device)
        self.test_labels = torch.from_numpy(np.asarray(test_labels, np.int64)).to(self.device)
        self.num_classes = num_classes
        shape = (1, len(self.mean), 1, 1)
        self._scale = (1.0 / (255.0 * torch.tensor(self.std))).reshape(shape).to(self.device)
        self._shift = (torch.tensor(self.mean) / torch.tensor(self.std)).reshape(shape).to(
            self.device)

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        return len(self.test_labels)

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[2]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 with the training set's per-channel mean and std."""
        return x.float() * self._scale - self._shift

    def train_batches(self, batch_size: int, seed: int, aug: Augmentation, rank: int = 0,
                      world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, augmented batches; everything random comes from `seed`.

        In a distributed run (`world` processes) every process draws the same global
        batches and keeps its share `rank::world` of each."""
        for index, draw in self._epoch_draws(batch_size, seed, aug, rank, world):
            x = apply_augmentation(self.train_images[index], aug.crop_padding, draw)
            yield self.normalize(x), self.train_labels[index]

    def packed_train_batches(self, batch_size: int, seeds: list[int], aug: Augmentation
                             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of K runs side by side: [K, B, ...] images and [K, B] labels, run k's
        exactly what `train_batches(batch_size, seeds[k], aug)` gives, augmented for all runs
        at once (a few kernels a step instead of a few per run)."""
        streams = [self._epoch_draws(batch_size, seed, aug) for seed in seeds]
        for draws in zip(*streams):
            index = torch.stack([i for i, _ in draws])                       # [K, B]
            together = AugmentationDraw(*(
                None if parts[0] is None else torch.cat(parts, dim=-1)
                for parts in ([d.offsets for _, d in draws], [d.flips for _, d in draws])))
            x = apply_augmentation(self.train_images[index.flatten()], aug.crop_padding,
                                   together)
            yield self.normalize(x).unflatten(0, index.shape), self.train_labels[index]

    def _epoch_draws(self, batch_size: int, seed: int, aug: Augmentation, rank: int = 0,
                     world: int = 1) -> Iterator[tuple[torch.Tensor, AugmentationDraw]]:
        """An epoch's sample indices and augmentation draws, batch by batch, from `seed`."""
        order = torch.randperm(self.num_train, generator=torch.Generator().manual_seed(seed))
        order = order.to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed + 7919 * rank)
        for start in range(0, self._epoch_end(batch_size, world), batch_size):
            index = order[start:start + batch_size][rank::world]
            yield index, draw_augmentation(len(index), aug, generator, self.device)

    def _epoch_end(self, batch_size: int, world: int) -> int:
        """Where an epoch's batches stop. A trailing batch of one sample is dropped
        (BatchNorm cannot train on it); in a distributed run, so is a trailing batch that
        does not split evenly between the processes."""
        rest = self.num_train % batch_size
        if (batch_size > 1 and rest == 1) or (world > 1 and rest % world):
            return self.num_train - rest
        return self.num_train

    def _plain_batches(self, images, labels, batch_size):
        for start in range(0, len(labels), batch_size):
            yield (self.normalize(images[start:start + batch_size]),
                   labels[start:start + batch_size])

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._plain_batches(self.test_images, self.test_labels, batch_size)

    def train_eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The training corpus without augmentation (for measurements over it)."""
        return self._plain_batches(self.train_images, self.train_labels, batch_size)

    def steps_per_epoch(self, batch_size: int, world: int = 1) -> int:
        return -(-self._epoch_end(batch_size, world) // batch_size)
