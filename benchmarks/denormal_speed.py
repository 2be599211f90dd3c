"""CPU training speed with and without flushing denormal floats (`flush_denormal`).

Late in an Adam + L2 run the weights of dead filters sit below 1.2e-38 (the demo's network
held 11,159 such weights), where x86 arithmetic is slow. This plants that state in BasicNet
(a share of the filters of C4-C7 dead: denormal weights and gamma, negative beta), then
times Adam + L2 training steps on Fashion-MNIST-shaped batches in two fresh processes, one
with FTZ/DAZ (the flag must be set before PyTorch's threads start), and prints both rates
and their ratio.

    python benchmarks/denormal_speed.py [--width 0.25] [--steps 150] [--dead 0.5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

DEAD_LAYERS = ("C4", "C5", "C6", "C7")


def plant_dead_filters(model, share: float, generator: torch.Generator) -> int:
    """Make `share` of the filters of DEAD_LAYERS dead with denormal weights; returns how
    many weights are denormal."""
    from implicit_sparsity.models import feature_layers

    planted = 0
    with torch.no_grad():
        for name, layer in feature_layers(model):
            if name not in DEAD_LAYERS:
                continue
            dead = torch.randperm(layer.conv.out_channels, generator=generator)
            dead = dead[:int(share * layer.conv.out_channels)]
            weights = layer.conv.weight[dead]
            bits = torch.randint(1, 1 << 23, weights.shape, dtype=torch.int32,
                                 generator=generator)
            signs = torch.randint(0, 2, weights.shape, generator=generator) * 2 - 1
            layer.conv.weight[dead] = bits.view(torch.float32) * signs
            layer.bn.weight[dead] = torch.randint(1, 1 << 23, (len(dead),), dtype=torch.int32,
                                                  generator=generator).view(torch.float32)
            layer.bn.bias[dead] = -0.1
            planted += weights.numel()
    return planted


def child(args) -> None:
    if args.child == "flush":
        from implicit_sparsity.train.device import flush_denormals_everywhere

        flush_denormals_everywhere()  # first: before any parallel torch work
    from implicit_sparsity.models import build_model
    from implicit_sparsity.optim import Regularizer, build_optimizer, param_groups
    from implicit_sparsity.optim.regularization import regularized_step

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=args.width)
    planted = plant_dead_filters(model, args.dead, generator)
    optimizer = build_optimizer("adam", param_groups(model, 1e-3), {"betas": (0.9, 0.999)})
    regularizer = Regularizer("l2", 1e-4, model.parameters())
    x = torch.randn(args.steps + 10, 40, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (args.steps + 10, 40), generator=generator)
    for step in range(args.steps + 10):
        if step == 10:  # warm-up done
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[step]), y[step]).backward()
        regularized_step(optimizer, regularizer, 1.0)
    rate = args.steps * 40 / (time.perf_counter() - start)
    tiny = torch.finfo(torch.float32).tiny
    left = sum(int(((p != 0) & (p.abs() < tiny)).sum()) for p in model.parameters())
    print(f"{rate:.1f} {planted} {left}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--dead", type=float, default=0.5, help="share of C4-C7's filters")
    parser.add_argument("--child", choices=("plain", "flush"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = {}
    for mode in ("plain", "flush"):
        done = subprocess.run([sys.executable, __file__, "--width", str(args.width), "--steps",
                               str(args.steps), "--dead", str(args.dead), "--child", mode],
                              capture_output=True, text=True, check=True)
        rate, planted, left = done.stdout.split()
        results[mode] = (float(rate), int(planted), int(left))
    (plain, planted, left_plain), (flushed, _, left_flushed) = results["plain"], results["flush"]
    print(f"BasicNet width {args.width}, Adam + L2, batch 40, {torch.get_num_threads()} threads; "
          f"{planted:,} denormal weights planted ({args.dead:.0%} of C4-C7's filters dead)")
    print(f"denormals kept:    {plain:8.1f} img/s ({left_plain:,} denormal values at the end)")
    print(f"flush_denormal:    {flushed:8.1f} img/s ({left_flushed:,} at the end)")
    print(f"ratio {flushed / plain:.2f}")


if __name__ == "__main__":
    main()
