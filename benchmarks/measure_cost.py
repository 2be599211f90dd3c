"""Cost of sparsity by activation: the measuring pass against a plain inference pass over
the same data, in the same run (target: <= 1.25x its time), and its memory against the
corpus size (target: flat).

    python benchmarks/measure_cost.py [--width 0.25] [--images 20000] [--batch-size 500]

Both passes run the same model in eval mode under no_grad over the same device-resident
batches; the measuring pass adds the recorders (per-feature running maxima on the device).
Each pass is timed `--repeats` times, alternating, and the medians are compared.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from implicit_sparsity.data import load_dataset
from implicit_sparsity.measure import activation_statistics
from implicit_sparsity.models import build_model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", default="0.25")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = load_dataset("fashion-mnist", args.data_dir, device=device,
                        train_subset=args.images)
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=args.width)
    model = model.to(device).eval()
    batches = lambda: data.train_eval_batches(args.batch_size)  # noqa: E731

    @torch.no_grad()
    def plain():
        for x, _ in batches():
            model(x)

    def measure():
        activation_statistics(model, batches, universality=False)

    plain()  # warm-up
    measure()
    plain_times, measure_times = [], []
    for _ in range(args.repeats):
        plain_times.append(timed(plain, device))
        measure_times.append(timed(measure, device))
    p, m = statistics.median(plain_times), statistics.median(measure_times)
    print(f"device {device}, threads {torch.get_num_threads()}, BasicNet width {args.width}, "
          f"{data.num_train} images, batch {args.batch_size}")
    print(f"plain inference pass : {p:7.3f} s ({data.num_train / p:8.0f} images/s)")
    print(f"activation pass      : {m:7.3f} s ({data.num_train / m:8.0f} images/s)")
    print(f"ratio activation / plain: {m / p:.3f} (target <= 1.25)")

    features = sum(mod.num_features for mod in model.modules()
                   if isinstance(mod, torch.nn.BatchNorm2d))
    print(f"recorder state: {features} features x (max float32 + count int64) = "
          f"{features * 12} bytes, whatever the corpus size")
    if device.type == "cuda":
        peaks = []
        for n in (args.images // 4, args.images):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            first_n = lambda n=n: itertools.islice(  # noqa: E731
                data.train_eval_batches(args.batch_size), n // args.batch_size)
            activation_statistics(model, first_n, universality=True)
            peaks.append(torch.cuda.max_memory_allocated() - base)
        print(f"peak GPU memory above resident data: {peaks[0] / 2**20:.1f} MiB for "
              f"{args.images // 4} images, {peaks[1] / 2**20:.1f} MiB for {args.images}")


if __name__ == "__main__":
    main()
