"""Device-side augmentation and normalization."""

import numpy as np
import torch

from implicit_sparsity.data.device_data import (Augmentation, DeviceTensorData, channel_stats,
                                                random_crop_flip)


def batch(n=6, c=2, h=5, w=7):
    return torch.arange(n * c * h * w, dtype=torch.int64).remainder(251).to(torch.uint8
                                                                          ).reshape(n, c, h, w)


def test_no_augmentation_is_identity():
    x = batch()
    out = random_crop_flip(x, Augmentation(flip=False, crop_padding=0), torch.Generator())
    assert torch.equal(out, x)


def test_flip_mirrors_exactly_the_drawn_samples():
    x = batch(n=64)
    out = random_crop_flip(x, Augmentation(flip=True), torch.Generator().manual_seed(3))
    flipped = [torch.equal(o, s.flip(2)) for o, s in zip(out, x)]
    kept = [torch.equal(o, s) for o, s in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample is one or the other
    assert 10 < sum(flipped) < 54


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = batch(n=32)
    p = 2
    out = random_crop_flip(x, Augmentation(flip=False, crop_padding=p),
                           torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    shifts = set()
    for o, s in zip(out, padded):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(o, s[:, dy:dy + 5, dx:dx + 7])]
        assert matches, "every crop is a window of the padded image"
        shifts.add(matches[0])
    assert len(shifts) > 3  # offsets really are random


def test_normalization_uses_training_statistics():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    data = DeviceTensorData(train, np.zeros(50), train[:5], np.zeros(5), num_classes=1)
    mean, std = channel_stats(train)
    expected = (train[:5].astype(np.float64) / 255 - np.array(mean)[:, None, None]) \
        / np.array(std)[:, None, None]
    x, _ = next(data.test_batches(5))
    assert np.allclose(x.numpy(), expected, atol=1e-5)
    everything = torch.cat([b for b, _ in data.train_eval_batches(7)])
    assert abs(everything.mean().item()) < 1e-5 and abs(everything.std().item() - 1) < 0.02


def test_epoch_order_depends_only_on_the_seed():
    train = np.arange(30, dtype=np.uint8).reshape(30, 1, 1, 1).repeat(4, 2).repeat(4, 3)
    data = DeviceTensorData(train, np.arange(30), train[:2], np.zeros(2), num_classes=30)
    def order(seed):
        return torch.cat([y for _, y in data.train_batches(8, seed, Augmentation())])
    assert torch.equal(order(5), order(5)) and not torch.equal(order(5), order(6))
    assert sorted(order(5).tolist()) == list(range(30))


def test_trailing_single_sample_batch_is_dropped():
    train = np.zeros((9, 1, 2, 2), dtype=np.uint8)
    data = DeviceTensorData(train, np.zeros(9), train, np.zeros(9), num_classes=1)
    sizes = [len(y) for _, y in data.train_batches(4, 0, Augmentation())]
    assert sizes == [4, 4] and data.steps_per_epoch(4) == 2


def test_packed_batches_are_each_runs_own_batches_exactly():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (23, 3, 6, 6), dtype=np.uint8)  # 23 at batch 5: a partial 3
    data = DeviceTensorData(train, np.arange(23) % 4, train[:2], np.zeros(2), num_classes=4)
    seeds = [11, 12, 13]
    for aug in (Augmentation(flip=True, crop_padding=2), Augmentation(flip=False),
                Augmentation(flip=True, crop_padding=0)):
        packed = list(data.packed_train_batches(5, seeds, aug))
        singles = [list(data.train_batches(5, seed, aug)) for seed in seeds]
        assert [tuple(x.shape) for x, _ in packed] == [(3, 5, 3, 6, 6)] * 4 + [(3, 3, 3, 6, 6)]
        for step, (x, y) in enumerate(packed):
            for k in range(len(seeds)):
                assert torch.equal(x[k], singles[k][step][0])
                assert torch.equal(y[k], singles[k][step][1])
