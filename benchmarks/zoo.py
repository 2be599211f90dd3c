"""The structural-pattern zoo pruned on a paper-like dead share: per architecture, % of
filters removed, parameters, MACs, latency before / after at batch 1 and 64, and whether
the removal was exact or refused.

Dead pattern: in the later half of each model's BatchNorm layers, 40% of the channels are
dead (gamma = 0, beta < 0: a zero output), as Adam + L2 leaves them (the paper's Table 2:
the sparsity sits in the later layers). Latency: each model's before / after forward passes
interleaved, `--repeats` rounds, median and spread (min-max) of the speed-up.

    .venv/bin/python benchmarks/zoo.py [--repeats 7] [--size 32] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the zoo's models

from zoo import ZOO, warm_up  # noqa: E402

from implicit_sparsity.errors import ProofError  # noqa: E402
from implicit_sparsity.prune import prune_model  # noqa: E402

DEAD_SHARE = 0.4


def plant_late_dead(model: nn.Module, generator: torch.Generator) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]
    with torch.no_grad():
        for norm in norms[len(norms) // 2:]:
            dead = torch.rand(norm.num_features, generator=generator) < DEAD_SHARE
            norm.weight[dead] = 0.0
            norm.bias[dead] = -0.5


@torch.no_grad()
def interleaved_speedups(before: nn.Module, after: nn.Module, x: torch.Tensor, repeats: int,
                         inner: int) -> list[float]:
    """Speed-ups from `repeats` rounds, each timing `inner` passes of both, alternating."""
    for model in (before, after):  # warm-up
        model(x)
    ratios = []
    for _ in range(repeats):
        times = []
        for model in (before, after):
            start = time.perf_counter()
            for _ in range(inner):
                model(x)
            times.append(time.perf_counter() - start)
        ratios.append(times[0] / times[1])
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=16, help="input side (VGG needs 16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few repeats")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, inner = (2, 2) if args.quick else (args.repeats, 20)
    print(f"zoo: {DEAD_SHARE:.0%} of the later half's BN channels dead; latency over "
          f"{repeats} interleaved rounds, {args.threads} threads, input 3x{args.size}x"
          f"{args.size}")
    print(f"{'model':30s} {'removed':>8s} {'params':>17s} {'MACs':>22s} "
          f"{'speed-up b1 (min-max)':>24s} {'speed-up b64 (min-max)':>24s}  result")
    for name, make in ZOO.items():
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = warm_up(make(), generator)
        plant_late_dead(model, generator)
        x = torch.randn(64, 3, args.size, args.size, generator=generator)
        try:
            result = prune_model(model, x, check_data=[x], latency_batches=())
        except ProofError as error:
            print(f"{name:30s} refused: {error}")
            continue
        before = sum(l.filters_before for l in result.layers)
        after = sum(l.filters_after for l in result.layers)
        cells = []
        for batch in (1, 64):
            ratios = interleaved_speedups(model, result.model.eval(), x[:batch], repeats,
                                          inner)
            cells.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-"
                         f"{max(ratios):.2f})")
        params = f"{result.params['before']['all']:,}->{result.params['after']['all']:,}"
        mac = f"{result.macs['before']:,}->{result.macs['after']:,}"
        kept = sum(len(l.kept_unsafe) for l in result.layers)
        verdict = (f"exact ({result.equivalence.relative_diff:.0e})"
                   + (f", {kept} dead kept (by a rule, with its reason)" if kept else ""))
        print(f"{name:30s} {100 * (1 - after / before):7.1f}% {params:>17s} {mac:>22s} "
              f"{cells[0]:>24s} {cells[1]:>24s}  {verdict}")


if __name__ == "__main__":
    main()
