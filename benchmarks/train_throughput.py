"""Training throughput: our loop against a minimal plain PyTorch loop, in the same run.

Same model (BasicNet), same optimizer (Adam + L2), batch size 40, same Fashion-MNIST images.
The plain loop is what a user would write first: a DataLoader over a TensorDataset of
pre-normalized float images, `loss.item()` every step, no augmentation. Ours also flips
each batch (its default augmentation), keeps data on the device, and records metrics.
Prints images/s of both (median epoch) and the ratio ours / plain; target >= 1.0 on CPU.

    python benchmarks/train_throughput.py [--width 0.25] [--images 8000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from implicit_sparsity.data import load_dataset
from implicit_sparsity.models import build_model
from implicit_sparsity.train import TrainConfig, train


def plain_loop(args, device) -> list[float]:
    data = load_dataset("fashion-mnist", args.data_dir, train_subset=args.images)
    x = data.normalize(data.train_images).cpu()
    y = data.train_labels.cpu()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=40, shuffle=True)
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=args.width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99),
                                 weight_decay=args.lam)  # torch's weight_decay is L2
    rates = []
    for _ in range(args.epochs):
        start, total_loss, seen = time.perf_counter(), 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            seen += len(yb)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def our_loop(args, device) -> list[float]:
    config = TrainConfig(model="basicnet", width=args.width, dataset="fashion-mnist",
                         data_dir=args.data_dir, train_subset=args.images, test_subset=1000,
                         optimizer="adam", regularizer="l2", lam=args.lam, batch_size=40,
                         epochs=[args.epochs], device=str(device))
    with tempfile.TemporaryDirectory() as out:
        result = train(config, f"{out}/run", verbose=False)
    return [m["images_per_second"] for m in result.metrics]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", default="0.25")
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lam", type=float, default=1e-4)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, BasicNet width "
          f"{args.width}, {args.images} images, batch 40, {args.epochs} epochs per loop")
    plain_a = plain_loop(args, device)
    ours = our_loop(args, device)
    plain_b = plain_loop(args, device)  # before and after ours: drift shows up here
    plain = statistics.median(plain_a + plain_b)
    mine = statistics.median(ours)
    print(f"plain PyTorch loop: {plain:8.0f} images/s (epochs: "
          f"{', '.join(f'{r:.0f}' for r in plain_a + plain_b)})")
    print(f"implicit-sparsity : {mine:8.0f} images/s (epochs: "
          f"{', '.join(f'{r:.0f}' for r in ours)})")
    print(f"ratio ours / plain: {mine / plain:.2f} (target >= 1.0)")


if __name__ == "__main__":
    main()
