"""Harvesting dead filters while training against training at full width, in one run.

Each row trains one configuration twice per seed, with `harvest_every: 1` and without, the
two arms in alternation (harvest first for even seeds, full width first for odd ones), on
the same machine and threads. Printed per row (medians over the seeds): the end-to-end
training wall time ratio (full width / harvested; target >= 1.2), the final test error of
each arm (target: difference within the seeds' spread and <= 0.3 points), the final % of
filters dead by |gamma| (harvested filters count as dead; target: within 2 points), the
parameters and MACs of the final slim model (the harvested run's model; the full-width
run's after `prune`), and revival: in the full-width run, at every epoch end (the harvest
points), the filters a harvest would have removed are noted; those no longer removable at
the end (and those whose |gamma| is back above the threshold) would have come back to life.
The watch's own time is taken out of the full-width arm's wall time.

Rows: `basicnet`, the demo's Adam + L2 configuration (BasicNet width 0.25, 30,000 Fashion-
MNIST images, 12 + 3 epochs, lambda 2e-3, batch 40); `vgg16`, the `compare_table7 --quick`
setting on Fashion-MNIST (VGG-16 width 0.125, 5,000 images of 5 classes, 32 + 8 epochs,
Adam + L2 2e-3, batch 40).

    python benchmarks/harvest.py [--rows basicnet,vgg16] [--seeds 0,1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from implicit_sparsity import defaults
from implicit_sparsity.prune.api import prune_model
from implicit_sparsity.train import TrainConfig, train
from implicit_sparsity.train.harvest import Harvester, check_batch_of
from implicit_sparsity.train.loop import build_for_config

ROWS = {
    "basicnet": dict(model="basicnet", width="0.25", train_subset=30_000, epochs=[12, 3]),
    "vgg16": dict(model="vgg16", width="0.125", train_subset=5000, test_subset=1000,
                  class_subset=5, epochs=[32, 8]),
}
COMMON = dict(dataset="fashion-mnist", optimizer="adam", regularizer="l2", lam=2e-3,
              batch_size=40)
QUICK = dict(width="0.0625", train_subset=100, test_subset=50, epochs=[2, 1],
             class_subset=None)
TARGETS = {"wall_ratio": 1.2, "error_points": 0.3, "dead_points": 2.0}


class RevivalWatch:
    """In a full-width run: at each epoch end, what a harvest would remove; at the end, how
    many of those are no longer removable (or have |gamma| back above the threshold)."""

    def __init__(self, config: TrainConfig):
        data, _ = build_for_config(config.resolved(), torch.device("cpu"))
        self.check = check_batch_of(data.train_eval_batches(defaults.HARVEST_CHECK_SAMPLES))
        self.threshold = config.gamma_threshold
        self.ever: dict[str, torch.Tensor] = {}
        self.seconds = 0.0
        self.last_model = None

    def __call__(self, epoch, model, metrics) -> None:
        started = time.perf_counter()
        dead, _, _, _ = Harvester(model, self.check).removable(model)
        for name, mask in dead.items():
            self.ever[name] = mask | self.ever.get(name, torch.zeros_like(mask))
        self.last_model = model
        self.seconds += time.perf_counter() - started

    def revived(self) -> tuple[int, int, int]:
        """(ever removable, no longer removable at the end, |gamma| >= threshold at the end)."""
        model = self.last_model
        final, _, _, _ = Harvester(model, self.check).removable(model)
        gammas = {f: m for f, m in _gammas(model).items()}
        ever = sum(int(m.sum()) for m in self.ever.values())
        strict = sum(int((m & ~final[n]).sum()) for n, m in self.ever.items())
        by_gamma = sum(int((m & (gammas[n].abs() >= self.threshold)).sum())
                       for n, m in self.ever.items())
        return ever, strict, by_gamma


def _gammas(model) -> dict[str, torch.Tensor]:
    from implicit_sparsity.measure.features import trace_features

    return {f.name: f.gamma.detach().cpu() for f in trace_features(model).features
            if f.gamma is not None}


def run_arm(config: TrainConfig, out: Path, harvest: bool) -> dict:
    config = TrainConfig(**{**config.to_dict(), "harvest_every": 1 if harvest else 0})
    watch = None if harvest else RevivalWatch(config)
    started = time.perf_counter()
    result = train(config, out, callbacks=(watch,) if watch else (), verbose=False)
    wall = time.perf_counter() - started - (watch.seconds if watch else 0.0)
    final = result.metrics[-1]
    row = {"wall": wall, "error": final["test_error"], "dead": final["sparsity_gamma_total"]}
    if harvest:
        summary = json.loads((out / "summary.json").read_text())["harvest"]
        row.update(params=summary["params"]["final"], macs=summary["macs"]["final"],
                   full_params=summary["params"]["full_width"],
                   full_macs=summary["macs"]["full_width"],
                   harvest_seconds=summary["harvest_seconds"])
    else:
        example = watch.check[:64]
        slim = prune_model(result.model.cpu(), example, check_data=[example])
        row.update(params=slim.params["after"]["all"], macs=slim.macs["after"],
                   full_params=slim.params["before"]["all"], full_macs=slim.macs["before"],
                   watch_seconds=watch.seconds)
        row["ever"], row["revived"], row["revived_gamma"] = watch.revived()
    return row


def spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="basicnet,vgg16")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"harvest while training vs full width: {platform.processor() or platform.machine()}"
          f", {args.threads} threads, torch {torch.__version__}, seeds {seeds}"
          + (" (quick sizes)" if args.quick else ""))
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows.split(","):
            values = {**COMMON, **ROWS[name], **(QUICK if args.quick else {}),
                      "data_dir": args.data_dir}
            runs = {True: [], False: []}
            for i, seed in enumerate(seeds):
                config = TrainConfig(**values, seed=seed)
                for harvest in ((True, False) if i % 2 == 0 else (False, True)):
                    out = Path(tmp) / f"{name}-{seed}-{'harvest' if harvest else 'full'}"
                    row = run_arm(config, out, harvest)
                    runs[harvest].append(row)
                    print(f"  {name} seed {seed} {'harvested ' if harvest else 'full width'}: "
                          f"{row['wall']:.1f} s, test error {row['error']:.2f}%, "
                          f"{row['dead']:.1f}% dead by |gamma|, final params "
                          f"{row['params']:,}, MACs {row['macs']:,}"
                          + ("" if harvest else f"; of {row['ever']} filters ever "
                             f"removable, {row['revived']} not at the end: "
                             f"{row['revived_gamma']} with |gamma| back above the "
                             "threshold, the others a constant output (beta > 0)"),
                          flush=True)
            table.append((name, runs))
    print()
    print(f"{'row':10s}{'wall ratio':>12s}{'error full':>12s}{'error harv.':>12s}"
          f"{'dead full':>11s}{'dead harv.':>11s}{'params':>20s}{'MACs':>26s}{'revived':>10s}")
    for name, runs in table:
        full, harv = runs[False], runs[True]
        med = {k: (statistics.median(r[k] for r in full), statistics.median(r[k] for r in harv))
               for k in ("wall", "error", "dead", "params", "macs")}
        ratio = med["wall"][0] / med["wall"][1]
        revived = statistics.median(r["revived"] for r in full)
        ever = statistics.median(r["ever"] for r in full)
        print(f"{name:10s}{ratio:>11.2f}x{med['error'][0]:>11.2f}%{med['error'][1]:>11.2f}%"
              f"{med['dead'][0]:>10.1f}%{med['dead'][1]:>10.1f}%"
              f"{int(full[0]['full_params']):>10,} -> {int(med['params'][1]):<8,}"
              f"{int(full[0]['full_macs']):>13,} -> {int(med['macs'][1]):<10,}"
              f"{revived:>5.0f} /{ever:.0f}")
        error_gap = abs(med["error"][1] - med["error"][0])
        error_spread = max(spread([r["error"] for r in full]), spread([r["error"] for r in harv]))
        dead_gap = abs(med["dead"][1] - med["dead"][0])
        print(f"  targets: wall ratio {ratio:.2f} >= {TARGETS['wall_ratio']} "
              f"{'met' if ratio >= TARGETS['wall_ratio'] else 'NOT met'}; error difference "
              f"{error_gap:.2f} points (seeds' spread {error_spread:.2f}) <= "
              f"{TARGETS['error_points']} "
              f"{'met' if error_gap <= TARGETS['error_points'] else 'NOT met'}; dead "
              f"difference {dead_gap:.1f} points <= {TARGETS['dead_points']} "
              f"{'met' if dead_gap <= TARGETS['dead_points'] else 'NOT met'}; the full-width "
              f"run's slim model: {int(med['params'][0]):,} params, {int(med['macs'][0]):,} "
              f"MACs; harvests took {sum(r['harvest_seconds'] for r in harv):.1f} s in all")


if __name__ == "__main__":
    main()
