"""Data sets too large for memory (ImageNet-style class folders), decoded by worker processes.

Training: resize to 256x256, random 224x224 crop and horizontal flip (section 5). Testing:
the centre 224x224 crop (1-crop protocol). Workers return uint8 tensors; normalization
happens on the training device, as for the in-memory data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from implicit_sparsity.data.device_data import Augmentation
from implicit_sparsity.data.formats import load_image

RESIZE = 256
CROP = 224


class ImageFileDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], labels: np.ndarray, train: bool):
        self.files, self.labels, self.train = files, labels, train

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = load_image(self.files[index], RESIZE)
        if self.train:
            top, left = torch.randint(0, RESIZE - CROP + 1, (2,)).tolist()
            image = image[:, top:top + CROP, left:left + CROP]
            if torch.rand(()) < 0.5:
                image = image[:, :, ::-1]
        else:
            margin = (RESIZE - CROP) // 2
            image = image[:, margin:margin + CROP, margin:margin + CROP]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[index])


class StreamingImageData:
    """Class-folder train / test splits read from disk each epoch (same interface as
    `DeviceTensorData`)."""

    def __init__(self, train_files, train_labels, test_files, test_labels, num_classes: int,
                 device: torch.device | str = "cpu", num_workers: int = 4,
                 mean: list[float] | None = None, std: list[float] | None = None):
        self.train_files, self.train_labels = list(train_files), np.asarray(train_labels)
        self.test_files, self.test_labels = list(test_files), np.asarray(test_labels)
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.num_workers = num_workers
        # ImageNet's usual per-channel statistics unless given: one pass over a large
        # corpus just for them is not worth it.
        self.mean = list(mean or (0.485, 0.456, 0.406))
        self.std = list(std or (0.229, 0.224, 0.225))
        shape = (1, 3, 1, 1)
        self._scale = (1.0 / (255.0 * torch.tensor(self.std))).reshape(shape).to(self.device)
        self._shift = (torch.tensor(self.mean) / torch.tensor(self.std)).reshape(shape).to(
            self.device)

    num_train = property(lambda self: len(self.train_files))
    num_test = property(lambda self: len(self.test_files))
    in_channels = 3
    image_size = CROP

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self._scale - self._shift

    def _loader(self, dataset, batch_size, shuffle, seed=0, drop_single=False, rank=0,
                world=1):
        generator = torch.Generator().manual_seed(seed)
        if world > 1:  # each process its own share, batch_size / world per step
            sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                drop_last=True)
            batch_size //= world
        elif shuffle:
            sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
        else:
            sampler = torch.utils.data.SequentialSampler(dataset)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda", generator=generator,
            persistent_workers=False)
        for x, y in loader:
            if drop_single and len(y) == 1 and batch_size > 1:
                continue
            yield (self.normalize(x.to(self.device, non_blocking=True)),
                   y.to(self.device, non_blocking=True))

    def train_batches(self, batch_size: int, seed: int, aug: Augmentation, rank: int = 0,
                      world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch; `aug` is not used: ImageNet has its own crop and flip (above)."""
        dataset = ImageFileDataset(self.train_files, self.train_labels, train=True)
        return self._loader(dataset, batch_size, shuffle=True, seed=seed, drop_single=True,
                            rank=rank, world=world)

    def packed_train_batches(self, batch_size: int, seeds: list[int], aug: Augmentation
                             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of K runs side by side ([K, B, ...], [K, B]), each from its own seed."""
        for batches in zip(*(self.train_batches(batch_size, seed, aug) for seed in seeds)):
            yield torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])

    def test_batches(self, batch_size: int):
        return self._loader(ImageFileDataset(self.test_files, self.test_labels, False),
                            batch_size, shuffle=False)

    def train_eval_batches(self, batch_size: int):
        return self._loader(ImageFileDataset(self.train_files, self.train_labels, False),
                            batch_size, shuffle=False)

    def steps_per_epoch(self, batch_size: int, world: int = 1) -> int:
        if world > 1:
            return (self.num_train // world) // (batch_size // world)
        steps = -(-self.num_train // batch_size)
        return steps - (1 if batch_size > 1 and self.num_train % batch_size == 1 else 0)
