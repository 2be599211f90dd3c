"""Training speed, measured in one run on whatever device is here (CPU or GPU):

1. one run of ours against a minimal plain PyTorch loop (BasicNet, CIFAR-shaped 3x32x32
   inputs, batch 40, Adam + L2): images/s and the ratio;
2. K packed runs (train.packed; Adam at one rate, different seeds and lambdas, so one
   optimizer step serves them all) against the same K runs one after the other: aggregate
   images/s and the ratio; and the packed rate with one optimizer step per run;
3. the projected device-hours of the paper's Table 1 (40 configurations x 2 data sets x 3
   seeds x 325 epochs x 50,000 images) at the single-run and at the packed rate.

    python benchmarks/speed.py [--width 1] [--images 4000] [--pack 8]

Synthetic CIFAR-shaped data (written as CIFAR pickles, read by the real loader) so that it
runs anywhere; strict fp32 (TF32 off). Each rate is that of the second of two epochs, so
one-off costs (cuDNN autotuning, the CUDA-graph capture) are left out of every side alike.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from implicit_sparsity.data import Augmentation
from implicit_sparsity.models import build_model
from implicit_sparsity.train import TrainConfig
from implicit_sparsity.train.loop import build_for_config, epoch_seed
from implicit_sparsity.train.capture import should_capture
from implicit_sparsity.train.packed import PackedModels

TABLE1_IMAGES = 40 * 2 * 3 * 325 * 50_000
EPOCHS = 2  # each measurement times its last epoch


def write_cifar(folder: Path, n: int) -> Path:
    inner = folder / "cifar-10-batches-py"
    inner.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in [(f"data_batch_{i}", n // 5) for i in range(1, 6)] + [("test_batch", 500)]:
        with open(inner / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, count).tolist()}, f)
    return folder


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_rate(config, device) -> float:
    data, _ = build_for_config(config, device)
    x_all = data.normalize(data.train_images)
    y_all = data.train_labels
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=3, num_classes=10, width=config.width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99),
                                 weight_decay=config.lam)
    for _ in range(EPOCHS):  # the last epoch is timed: the first holds one-off set-up costs
        sync(device)
        start = time.perf_counter()
        for i in torch.randperm(len(y_all)).split(40):
            loss = F.cross_entropy(model(x_all[i.to(device)]), y_all[i.to(device)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # what a plain loop does each step
        sync(device)
    return len(y_all) / (time.perf_counter() - start)


def packed_rate(configs, device, share_optimizer: bool = True) -> tuple[float, str]:
    """Aggregate images/s of the last epoch, and how the packed training step ran."""
    data, _ = build_for_config(configs[0], device)
    models = []
    for c in configs:
        torch.manual_seed(c.seed)
        models.append(build_model("basicnet", in_channels=3, num_classes=10,
                                  width=c.width).to(device))
    capture, reason = should_capture(configs[0].step_capture, device, models[0])
    packed = PackedModels(models, configs, capture=capture, capture_reason=reason,
                          share_optimizer=share_optimizer)
    for epoch in range(1, EPOCHS + 1):  # the last epoch is timed
        batches = data.packed_train_batches(40, [epoch_seed(c.seed, epoch) for c in configs],
                                            Augmentation())
        sync(device)
        start = time.perf_counter()
        seen = 0
        for x, y in batches:
            packed.step(x, y, [1.0] * len(configs))
            seen += y.numel()
        sync(device)
    return seen / (time.perf_counter() - start), packed.forward_backward.status


def our_rate(config, device) -> tuple[float, str]:
    """Images/s of the last epoch of a real run, and how its training step ran."""
    from implicit_sparsity.train import train

    with tempfile.TemporaryDirectory() as out:
        last = train(config, f"{out}/run", verbose=False).metrics[-1]
    return last["images_per_second"], last["training_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", default="1")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--pack", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cifar(Path(tmp), args.images)
        base = dict(dataset="cifar10", data_dir=str(root), width=args.width, batch_size=40,
                    epochs=[EPOCHS], lam=1e-4, device=str(device), test_subset=200)
        single = TrainConfig(**base)
        plain = plain_rate(single.resolved(), device)
        ours, step = our_rate(single, device)
        eager = our_rate(TrainConfig(**base, step_capture="off"), device)[0] \
            if device.type == "cuda" else ours
        configs = [TrainConfig(**{**base, "lam": 10.0 ** -(3 + k % 3)}, seed=k)
                   for k in range(args.pack)]
        sequential = ours  # K runs one after the other: the single-run rate
        packed, packed_step = packed_rate([c.resolved() for c in configs], device)
        unshared = packed_rate([c.resolved() for c in configs], device, share_optimizer=False)[0]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), threads {torch.get_num_threads()}, BasicNet width "
          f"{args.width}, {args.images} CIFAR-shaped images, batch 40, fp32")
    print(f"1. plain loop {plain:8.0f} img/s, ours {ours:8.0f} img/s: ratio {ours / plain:.2f}"
          f" (target >= 3 on a GPU, >= 1 on CPU); training step: {step}")
    if device.type == "cuda":
        print(f"   ours with an eager step {eager:8.0f} img/s: the CUDA graph gives "
              f"{ours / eager:.2f}x")
    print(f"2. {args.pack} packed runs {packed:8.0f} img/s in all vs {sequential:8.0f} img/s "
          f"one after the other: ratio {packed / sequential:.2f} (target >= 4 on a GPU); "
          f"training step: {packed_step}")
    print(f"   with one optimizer step per run instead of one for all {unshared:8.0f} img/s: "
          f"the shared step gives {packed / unshared:.2f}x")
    print(f"3. Table 1 ({TABLE1_IMAGES:.2e} training images): {TABLE1_IMAGES / ours / 3600:,.0f}"
          f" device-hours one run at a time, {TABLE1_IMAGES / packed / 3600:,.0f} packed")


if __name__ == "__main__":
    main()
