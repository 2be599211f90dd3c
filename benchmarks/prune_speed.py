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

Then the runtime column: in each runtime a user ships to (PyTorch, ONNX Runtime, OpenVINO;
prune.runtimes), the original's absolute latency, and the exact minimum's and the
runtime-tuned model's speed-up / MAC reduction (`tune_slim(runtime=...)`: each candidate
exported, checked and timed in that runtime), medians over `--runs` whole measurements
(min-max beside them), against the same targets. `--model resnet18` runs the second row:
a ResNet-18-style network (tests/resnets.py, width 32) with 60% of each block's inner
BatchNorm channels dead (the residual stream's channels are coupled and stay).

    python benchmarks/prune_speed.py [--threads 2] [--min-run-time 2] [--rounds 7] [--width 1]
        [--model basicnet|resnet18] [--runtimes torch,onnxruntime,openvino] [--runs 3]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # ResNet18Style

from implicit_sparsity.models import build_model, feature_layers  # noqa: E402
from implicit_sparsity.prune.cost import conv_times, macs  # noqa: E402
from implicit_sparsity.prune.runtimes import PACKAGES  # noqa: E402
from implicit_sparsity.prune.tune import TunedSlim, in_layout, tune_slim  # noqa: E402

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


def resnet18_model(generator: torch.Generator, width: int = 32) -> torch.nn.Module:
    """ResNet-18's layout with 60% of each basic block's inner channels dead."""
    from resnets import ResNet18Style

    torch.manual_seed(0)
    model = ResNet18Style(width=width)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("bn1") and isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                dead = torch.randperm(n, generator=generator)[:round(0.6 * n)]
                module.weight[dead], module.bias[dead] = 0.0, -0.1
        model.train()
        for _ in range(3):
            model(torch.randn(64, 3, 32, 32, generator=generator))
    return model.eval()


def installed(runtime: str) -> bool:
    try:
        for package in PACKAGES.get(runtime, ()):
            importlib.import_module(package)
    except ImportError:
        return False
    return True


def runtime_column(model, x, args, first: TunedSlim | None) -> None:
    """Per runtime: the original's latency, exact-minimum and runtime-tuned speed-up / MAC
    reduction at each batch size, medians over args.runs measurements (min-max)."""
    figures: dict[str, dict[str, list[float]]] = {}
    for run in range(args.runs):
        for runtime in args.runtimes:
            if runtime == "torch" and run == 0 and first is not None:
                tuned = first  # measured above
            else:
                tuned = tune_slim(model, x, check_data=[x], batch_sizes=tuple(TARGETS),
                                  target_batch=64, threads=args.threads,
                                  min_run_time=args.min_run_time, rounds=args.rounds,
                                  runtime=runtime, per_layer=runtime == "torch")
            cell = figures.setdefault(runtime, {})
            for batch in TARGETS:
                exact, best = tuned.candidates[0], tuned.best
                cell.setdefault(f"original ms {batch}", []).append(exact.at(batch)["before_ms"])
                cell.setdefault(f"exact {batch}", []).append(tuned.ratio(exact, batch))
                cell.setdefault(f"tuned {batch}", []).append(tuned.ratio(best, batch))
            print(f"run {run + 1}/{args.runs}, {runtime}: best {tuned.best.name}", flush=True)

    def spread(values: list[float], fmt: str) -> str:
        return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-"
                f"{max(values):{fmt}})")

    print(f"runtime column ({args.model}, {args.threads} threads, medians over {args.runs} "
          f"runs, min-max; ratios: speed-up / MAC reduction)")
    print(f"| runtime | original ms b1 | original ms b64 | exact b1 | exact b64 | "
          f"tuned b1 (>= {TARGETS[1]}) | tuned b64 (>= {TARGETS[64]}) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for runtime, cell in figures.items():
        verdicts = {b: "met" if statistics.median(cell[f"tuned {b}"]) >= TARGETS[b]
                    else "NOT met" for b in TARGETS}
        print(f"| {runtime} | {spread(cell['original ms 1'], '.2f')} | "
              f"{spread(cell['original ms 64'], '.1f')} | {spread(cell['exact 1'], '.2f')} | "
              f"{spread(cell['exact 64'], '.2f')} | {spread(cell['tuned 1'], '.2f')} "
              f"{verdicts[1]} | {spread(cell['tuned 64'], '.2f')} {verdicts[64]} |")


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
    parser.add_argument("--model", choices=("basicnet", "resnet18"), default="basicnet")
    parser.add_argument("--runtimes", default="torch,onnxruntime,openvino",
                        help="the runtime column's runtimes (those installed)")
    parser.add_argument("--runs", type=int, default=3, help="measurements per runtime")
    args = parser.parse_args()
    args.runtimes = [r for r in args.runtimes.split(",") if r and installed(r)]
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    if args.model == "basicnet":
        model = paper_pattern_model(generator, args.width).to(args.device)
    else:
        model = resnet18_model(generator).to(args.device)
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
    if args.runtimes and args.device == "cpu":
        runtime_column(model, x, args, tuned)


if __name__ == "__main__":
    main()
