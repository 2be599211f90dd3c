"""Training-step time of today's optimizers, as ratios to AdamW measured in the same run.

One step is forward, backward and the optimizer's step on a batch of 40 random 28x28
images through BasicNet (the modern_optimizers quick preset's width 0.125 by default),
through the toolkit's optimizers (optim.build_optimizer). Muon runs twice: with torch's
Newton-Schulz in bfloat16 and with `ns_dtype: float32` (optim.muon); on a CPU without
bfloat16 matrix units the first is emulated. The optimizers take turns, `--rounds` rounds
of `--steps` steps each, so a change of load shows as spread; each line gives the median
ms per step over rounds and their range, and the ratio of medians to AdamW's.

    python benchmarks/optimizer_step.py [--width 0.125] [--steps 20] [--rounds 5]
                                        [--optimizers adamw,muon,muon-float32]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from implicit_sparsity.models import build_model
from implicit_sparsity.optim import build_optimizer, default_lr, param_groups
from implicit_sparsity.optim import resolve_hyperparameters

#: what each label steps with: (optimizer name, hyper-parameter overrides)
CHOICES = {"adamw": ("adamw", {}), "muon": ("muon", {}),
           "muon-float32": ("muon", {"ns_dtype": "float32"}),
           "nadam": ("nadam", {}), "lion": ("lion", {}), "sgd": ("sgd", {})}


def stepper(label: str, width: str):
    """A closure that runs one training step of a fresh model with `label`'s optimizer."""
    name, overrides = CHOICES[label]
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=width)
    optimizer = build_optimizer(name, param_groups(model, default_lr(name)),
                                resolve_hyperparameters(name, overrides))
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", default="0.125")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--optimizers", default="adamw,muon,muon-float32")
    args = parser.parse_args()
    labels = args.optimizers.split(",")
    unknown = [label for label in labels if label not in CHOICES]
    if unknown or "adamw" not in labels:
        parser.error(f"--optimizers: from {', '.join(CHOICES)}, adamw among them "
                     f"(the baseline); got {args.optimizers}")
    steps = {label: stepper(label, args.width) for label in labels}
    for step in steps.values():  # warm-up: first-call allocations are not the step
        step()
    times = {label: [] for label in labels}
    for _ in range(args.rounds):
        for label, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[label].append((time.perf_counter() - start) / args.steps * 1e3)
    print(f"CPU {platform.processor() or platform.machine()}, torch threads "
          f"{torch.get_num_threads()}, BasicNet width {args.width}, batch 40, "
          f"{args.rounds} rounds x {args.steps} steps, interleaved")
    baseline = statistics.median(times["adamw"])
    for label in labels:
        ms = times[label]
        print(f"{label:14s} {statistics.median(ms):7.2f} ms/step (rounds {min(ms):.2f}-"
              f"{max(ms):.2f}), ratio to adamw {statistics.median(ms) / baseline:.2f}")


if __name__ == "__main__":
    main()
