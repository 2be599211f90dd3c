"""Training throughput: our loop against two plain PyTorch loops, in the same run.

Same model (BasicNet), same optimizer (Adam + L2), batch size 40, same Fashion-MNIST images.
- The fair baseline ("indexed"): what a careful user writes: the normalized images held as
  one tensor on the device, a shuffled index per epoch, the same random horizontal flip as
  ours, the loss summed on the device and read once per epoch.
- A second, labelled baseline ("DataLoader"): a DataLoader over a TensorDataset, fetching
  and collating sample by sample, `loss.item()` every step, no augmentation.
Ours flips each batch too, keeps data on the device, and records its metrics each epoch.
The loops run interleaved (DataLoader, indexed, ours, indexed, DataLoader) so that a change
of machine load shows as spread; images/s are medians over epochs, with their range.
`--compile` adds our loop with `step_capture: compile` (torch.compile's forward + backward,
checked against eager at its first step); its first epoch, which compiles, is left out of
its median and printed apart.
`--synthetic` writes random Fashion-MNIST-shaped IDX files to a temporary folder and reads
them with the real loader (for a machine without the data set: the GPU check).
Target: ours / indexed >= 1.0 on CPU.

    python benchmarks/train_throughput.py [--width 0.25] [--images 8000] [--epochs 3]
                                          [--compile] [--synthetic]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from implicit_sparsity.data import load_dataset
from implicit_sparsity.data.formats import write_idx
from implicit_sparsity.errors import RunStateError
from implicit_sparsity.models import build_model
from implicit_sparsity.train import TrainConfig, train


def plain_setup(args, device, data_device):
    """The images (normalized, on `data_device`), labels, model and Adam + L2 of a plain loop."""
    data = load_dataset("fashion-mnist", args.data_dir, train_subset=args.images)
    x = data.normalize(data.train_images).to(data_device)
    y = data.train_labels.to(data_device)
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=args.width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99),
                                 weight_decay=args.lam)  # torch's weight_decay is L2
    return x, y, model, optimizer


def plain_loop(args, device) -> list[float]:
    x, y, model, optimizer = plain_setup(args, device, "cpu")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=40, shuffle=True)
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


def indexed_loop(args, device) -> list[float]:
    x, y, model, optimizer = plain_setup(args, device, device)
    rates = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        total = torch.zeros((), device=device)
        order = torch.randperm(len(y), device=device)
        for i in range(0, len(y) - 39, 40):
            index = order[i:i + 40]
            xb, yb = x[index], y[index]
            flip = torch.rand(len(yb), 1, 1, 1, device=device) < 0.5
            xb = torch.where(flip, xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach()
        total.item()  # one read per epoch
        rates.append((len(y) // 40 * 40) / (time.perf_counter() - start))
    return rates


def our_loop(args, device, step_capture: str = "auto", epochs: int | None = None
             ) -> list[float]:
    config = TrainConfig(model="basicnet", width=args.width, dataset="fashion-mnist",
                         data_dir=args.data_dir, train_subset=args.images, test_subset=1000,
                         optimizer="adam", regularizer="l2", lam=args.lam, batch_size=40,
                         epochs=[epochs or args.epochs], device=str(device),
                         step_capture=step_capture)
    with tempfile.TemporaryDirectory() as out:
        result = train(config, f"{out}/run", verbose=False)
    return [m["images_per_second"] for m in result.metrics]


def write_synthetic_fashion_mnist(folder: str, train_images: int, test_images: int = 1000
                                  ) -> str:
    """Random 28x28 images and labels in Fashion-MNIST's IDX files: timing needs the format
    and the sizes, not the pictures."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", train_images), ("t10k", test_images)):
        write_idx(f"{folder}/{split}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(f"{folder}/{split}-labels-idx1-ubyte.gz",
                  rng.integers(0, 10, n, dtype=np.uint8))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", default="0.25")
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lam", type=float, default=1e-4)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true",
                        help="also time our loop with step_capture: compile")
    parser.add_argument("--synthetic", action="store_true",
                        help="random images in Fashion-MNIST's files (no data set needed)")
    args = parser.parse_args()
    if args.synthetic:
        folder = tempfile.TemporaryDirectory()
        args.data_dir = write_synthetic_fashion_mnist(folder.name, args.images)
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, BasicNet width "
          f"{args.width}, {args.images} images, batch 40, {args.epochs} epochs per loop")
    loader_a = plain_loop(args, device)
    indexed_a = indexed_loop(args, device)
    ours = our_loop(args, device)
    compiled = refused = None
    if args.compile:
        try:
            compiled = our_loop(args, device, "compile", args.epochs + 1)
        except RunStateError as error:  # the compiled step did not match eager: refused
            refused = str(error)
    indexed_b = indexed_loop(args, device)
    loader_b = plain_loop(args, device)  # interleaved: drift shows up as spread

    def line(name, rates):
        return (f"{name:20s} {statistics.median(rates):8.0f} images/s (epochs "
                f"{min(rates):.0f}-{max(rates):.0f})")
    indexed, loader = indexed_a + indexed_b, loader_a + loader_b
    print(line("plain, indexed", indexed))
    print(line("plain, DataLoader", loader))
    print(line("implicit-sparsity", ours))
    if refused:
        print(f"ours, torch.compile: refused ({refused})")
    if compiled:
        print(line("ours, torch.compile", compiled[1:])
              + f"; first epoch, compiling: {compiled[0]:.0f} images/s")
        print(f"ratio compiled / indexed: "
              f"{statistics.median(compiled[1:]) / statistics.median(indexed_a + indexed_b):.2f}")
    mine = statistics.median(ours)
    print(f"ratio ours / indexed: {mine / statistics.median(indexed):.2f} (target >= 1.0; "
          f"range {min(ours) / max(indexed):.2f}-{max(ours) / min(indexed):.2f}); "
          f"ours / DataLoader: {mine / statistics.median(loader):.2f}")

if __name__ == "__main__":
    main()
