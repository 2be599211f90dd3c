"""Per family of real CNNs, what the removal takes of a few planted dead channels: in every
BatchNorm of at least 8 channels, 3 with gamma 0, beta -5 and 2 with gamma 0, beta +1
(tests/planted.py), random weights, BatchNorm statistics of its own, 64 x 64 inputs. Prints,
per model and criterion, the planted channels, those the README's rules can remove on their
own (worked out from the structure, not by the surgery), how many of those went, all the
channels removed (by activation a random network has many more dead ones) and the time.

    .venv/bin/python benchmarks/any_cnn.py [--quick] [--models a,b,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import TORCHVISION  # noqa: E402  (the torchvision import workaround)
from planted import prune_planted  # noqa: E402

from implicit_sparsity.errors import ImplicitSparsityError  # noqa: E402

#: float32 models: an exact removal differs by rounding, ~1e-7 of max |output|
TOLERANCE = 1e-5

#: (family, zoo, model name)
MODELS = [
    ("depthwise chain", "tv", "mobilenet_v2"),
    ("depthwise + SE gate", "tv", "mobilenet_v3_small"),
    ("depthwise + SE gate", "tv", "mobilenet_v3_large"),
    ("depthwise chain", "tv", "mnasnet0_5"),
    ("depthwise + SE gate, SiLU", "tv", "efficientnet_b0"),
    ("grouped + SE gate", "tv", "regnet_y_400mf"),
    ("grouped", "tv", "resnext50_32x4d"),
    ("grouped", "tv", "regnet_x_400mf"),
    ("channel shuffle", "tv", "shufflenet_v2_x1_0"),
    ("plain residual", "tv", "resnet18"),
    ("concatenation", "tv", "densenet121"),
    ("depthwise + SE gate", "timm", "mobilenetv3_large_100"),
    ("ghost modules (concat)", "timm", "ghostnet_100"),
    ("depthwise chain", "timm", "fbnetc_100"),
    ("depthwise + SE gate", "timm", "hardcorenas_a"),
    ("depthwise + SE gate, SiLU", "timm", "tinynet_a"),
]
QUICK = ("mobilenet_v2", "shufflenet_v2_x1_0")


def build(zoo: str, name: str):
    if zoo == "tv":
        if TORCHVISION is None:
            return None
        import torchvision.models as tvm
        return getattr(tvm, name)(num_classes=10)
    try:
        import timm
    except ImportError:
        return None
    return timm.create_model(name, num_classes=10)


def measure(model, criterion: str, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64, generator=generator))
    model.eval()
    start = time.perf_counter()
    try:
        run = prune_planted(model, generator, criterion, (8, 3, 64, 64), TOLERANCE)
    except ImplicitSparsityError as error:
        return {"refused": str(error)}
    return {"planted": len(run.planted_pairs), "removable": len(run.removable),
            "taken": run.taken, "planted_removed": len(run.planted_pairs & run.removed),
            "all": len(run.removed), "seconds": time.perf_counter() - start,
            "exact": run.result.verified(TOLERANCE)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--models", default=None, help="comma-separated model names")
    args = parser.parse_args()
    wanted = set(args.models.split(",")) if args.models else set(QUICK) if args.quick else None
    print("| family | model | criterion | planted | removable by the rules | of those removed "
          "| planted removed | all removed | exact | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for family, zoo, name in MODELS:
        if wanted is not None and name not in wanted:
            continue
        for criterion in ("gamma", "activation"):
            model = build(zoo, name)
            if model is None:
                print(f"| {family} | {name} | {criterion} | ({zoo} does not import here) |")
                break
            row = measure(model, criterion)
            if "refused" in row:
                print(f"| {family} | {name} | {criterion} | refused: {row['refused'][:80]} |")
                continue
            share = (f"{row['taken']} ({100 * row['taken'] / row['removable']:.0f}%)"
                     if row["removable"] else "0")
            print(f"| {family} | {zoo} {name} | {criterion} | {row['planted']} | "
                  f"{row['removable']} | {share} | {row['planted_removed']} | {row['all']} | "
                  f"{'yes' if row['exact'] else 'NO'} | {row['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
