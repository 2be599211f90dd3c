"""Speed-up from removing dead filters, against the MAC reduction, measured in one run.

BasicNet (full width, CIFAR-shaped 3x32x32 inputs) with dead filters in the layer pattern
the paper reports for Adam + L2 1e-4 on CIFAR-10 (supplement Table 1: 70% of all filters):
in each layer that share of filters gets gamma = 0 and beta < 0. `prune.tune.tune_slim`
builds the exact-minimum slim model and its exact deployment candidates (BatchNorm folded,
widths rounded up by keeping dead filters, contiguous or channels-last layout), each with
its proof, and times them against the original in interleaved rounds (torch.utils.benchmark,
threads fixed) at batch 1 and 64. Targets: the latency-tuned model's speed-up >= 1.0 x the
MAC reduction at batch 64 and >= 0.85 x at batch 1; the exact minimum's ratios are printed
beside them.

Then why: each convolution timed alone at batch 64, its MACs and its MAC rate (GMAC/s), in
the original (as it runs, NCHW, and channels-last) and in the latency-tuned model, and the
ratio the slim model would reach if each of its convolutions ran at the best rate its
original layer reaches here ("at equal efficiency"). A ratio of 1.0 needs the narrow layers
to run faster per MAC than the wide ones they came from.

    python benchmarks/prune_speed.py [--threads 2] [--min-run-time 2] [--rounds 7] [--width 1]
"""

from __future__ import annotations

import argparse

import torch

from implicit_sparsity.models import build_model, feature_layers
from implicit_sparsity.prune.cost import conv_times, macs
from implicit_sparsity.prune.tune import TunedSlim, in_layout, tune_slim

#: % of filters with |gamma| < 1e-3 per layer, Adam + L2 1e-4, CIFAR-10 (supplement Table 1).
PAPER_PATTERN = {"C1": 44, "C2": 22, "C3": 6, "C4": 45, "C5": 54, "C6": 96, "C7": 95}
#: Targets: measured speed-up / MAC reduction, per batch size.
TARGETS = {64: 1.0, 1: 0.85}


def paper_pattern_model(generator: torch.Generator, width: str = "1") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=3, num_classes=10, width=width)
    with torch.no_grad():
        for name, block in feature_layers(model):
            n = block.bn.num_features
            dead = torch.randperm(n, generator=generator)[:round(n * PAPER_PATTERN[name] / 100)]
            block.bn.weight[dead] = 0.0
            block.bn.bias[dead] = -0.1
        model.train()
        for _ in range(3):  # realistic running statistics
            model(torch.randn(64, 3, 32, 32, generator=generator))
    return model.eval()


def per_layer_rates(model: torch.nn.Module, tuned: TunedSlim, x: torch.Tensor,
                    threads: int) -> float:
    """Print each convolution's MACs, time alone and MAC rate, original and latency-tuned;
    return the ratio (speed-up / MAC reduction) at equal efficiency."""
    batch = x.shape[0]
    before = {k: v * batch for k, v in macs(model, x[:1])["per_module"].items()}
    after = {k: v * batch for k, v in macs(tuned.model, x[:1])["per_module"].items()}
    as_run = conv_times(model, x, threads)
    channels_last = conv_times(in_layout(model, "channels_last"), x, threads)
    slim = conv_times(tuned.model, x, threads)
    print(f"{'conv':18s}{'GMACs':>14s}{'ms (NCHW / CL)':>17s}{'slim ms':>9s}"
          f"{'GMAC/s (NCHW / CL)':>21s}{'slim GMAC/s':>13s}")
    equal = 0.0
    for name in slim:
        best = min(as_run[name], channels_last[name])
        equal += after[name] / (before[name] / best)
        print(f"{name:18s}{before[name] / 1e9:7.2f} -> {after[name] / 1e9:4.2f}"
              f"{1e3 * as_run[name]:8.2f} / {1e3 * channels_last[name]:5.2f}"
              f"{1e3 * slim[name]:9.2f}{before[name] / as_run[name] / 1e9:12.0f} / "
              f"{before[name] / channels_last[name] / 1e9:4.0f}"
              f"{after[name] / slim[name] / 1e9:13.0f}")
    row = tuned.best.at(batch)
    rest = max(0.0, row["after_ms"] / 1e3 - sum(slim.values()))  # pools, ReLUs, fc layers
    speedup = row["before_ms"] / 1e3 / (equal + rest)
    ratio = speedup / tuned.exact.mac_reduction
    print(f"slim convs {1e3 * sum(slim.values()):.2f} ms of {row['after_ms']:.2f} ms; at equal "
          f"efficiency (each slim conv at its original layer's best rate, the rest as "
          f"measured) {1e3 * (equal + rest):.2f} ms: speed-up {speedup:.2f}x = {ratio:.2f} of "
          f"the MAC reduction")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", default="1", help="BasicNet width (1: the paper's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    model = paper_pattern_model(generator, args.width).to(args.device)
    x = torch.randn(64, 3, 32, 32, generator=generator).to(args.device)
    tuned = tune_slim(model, x, check_data=[x], batch_sizes=tuple(TARGETS), target_batch=64,
                      threads=args.threads, min_run_time=args.min_run_time,
                      rounds=args.rounds)
    print(tuned.exact.table())
    print(tuned.table())
    for batch, target in TARGETS.items():
        minimum, best = tuned.candidates[0], tuned.best
        row = best.at(batch)
        print(f"batch {batch:>2d}: latency-tuned ({best.name}) speed-up {row['speedup']:.2f}x "
              f"(IQR {row['speedup_q1']:.2f}-{row['speedup_q3']:.2f}) = "
              f"{tuned.ratio(best, batch):.2f} of the MAC reduction "
              f"{tuned.exact.mac_reduction:.2f}x (target >= {target}: "
              f"{'met' if tuned.ratio(best, batch) >= target else 'NOT met'}); "
              f"exact minimum {tuned.ratio(minimum, batch):.2f}")
    per_layer_rates(model, tuned, x, args.threads)


if __name__ == "__main__":
    main()
