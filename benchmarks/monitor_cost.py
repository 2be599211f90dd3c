"""What `SparsityMonitor` costs when it runs every epoch, as a share of the epoch's training
time (target: <= 5%), for three settings: |gamma| only (no data), every criterion over the
whole training corpus (activation, ReDo dormancy), and every criterion on the first
`--batches` batches (an estimate; see measure.report.analyze).

Each setting monitors one training run of BasicNet on Fashion-MNIST (the real loader; a
written stand-in when the Debian package is missing); the share is the monitor's time over
the epoch's training seconds, per epoch: median and range over the epochs (the first epoch,
with one-off costs, is left out).

    .venv/bin/python benchmarks/monitor_cost.py [--width 0.25] [--images 4000] [--epochs 4]
        [--batches 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from implicit_sparsity.data.registry import FASHION_MNIST_DEBIAN_DIR
from implicit_sparsity.measure import SparsityMonitor
from implicit_sparsity.train import TrainConfig, train

TARGET = 5.0  # % of an epoch's training time


class Timed:
    """A training callback that times the monitor it wraps."""

    def __init__(self, monitor):
        self.monitor, self.seconds = monitor, []

    def __call__(self, epoch, model, metrics):
        start = time.perf_counter()
        self.monitor(epoch, model, metrics)
        self.seconds.append(time.perf_counter() - start)


def data_dir(tmp: Path) -> str:
    if Path(FASHION_MNIST_DEBIAN_DIR).is_dir():
        return FASHION_MNIST_DEBIAN_DIR
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_fashion_mnist

    return str(write_fashion_mnist(tmp / "fashion", n_train=4000, n_test=500))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", default="0.25")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = TrainConfig(data_dir=data_dir(tmp), width=args.width,
                             train_subset=args.images, test_subset=500, epochs=[args.epochs],
                             lam=2e-3, device="cpu")
        corpus = None

        def corpus_batches():
            return ((x,) for x, _ in corpus.train_eval_batches(500))

        settings = {
            "|gamma| only": dict(data=None),
            "all criteria, whole corpus": dict(data=lambda: corpus_batches()),
            f"all criteria, first {args.batches} batches": dict(
                data=lambda: corpus_batches(), max_batches=args.batches),
        }
        from implicit_sparsity.train.loop import build_for_config

        corpus, _ = build_for_config(config.resolved(), torch.device("cpu"))
        print(f"BasicNet width {args.width}, {args.images} Fashion-MNIST images, batch 40, "
              f"{args.epochs} epochs, {args.threads} threads; monitor every epoch")
        print(f"{'setting':<36s}{'monitor / epoch (median)':>26s}{'range':>18s}  target")
        for i, (name, options) in enumerate(settings.items()):
            timed = Timed(SparsityMonitor(tmp / f"monitor{i}", tensorboard=False, **options))
            result = train(config, tmp / f"run{i}", callbacks=(timed,), verbose=False)
            epochs = [m["train_seconds"] for m in result.metrics]
            shares = [100 * s / e for s, e in zip(timed.seconds[1:], epochs[1:])]
            median = statistics.median(shares)
            verdict = "met" if median <= TARGET else "not met"
            print(f"{name:<36s}{median:25.1f}%{min(shares):8.1f}-{max(shares):.1f}%  "
                  f"<= {TARGET:g}%: {verdict}")


if __name__ == "__main__":
    main()
