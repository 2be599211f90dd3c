"""How the `findings --quick` preset was chosen: train the runs of several candidate quick
scales (the quick scale with some keys changed) and print, per candidate, the verdicts of
the findings that need trained runs (1-8, 10) and the numbers behind them.

A quick scale has to reproduce the *direction* of each effect in under an hour on 2 CPU
cores; the paper's own settings do not fit (a CPU run of that length sits early in the
low-gradient regime where the sparsity emerges). Candidates are trained in parallel
processes, each a sweep of its own (resumable: rerun with the same --out to finish).

    python benchmarks/findings_calibration.py --out DIR [--candidates a,b] [--parallel 4]
        [--seeds 0] [--data-dir DIR] [--deadline-min 8] [--list]
        [--roles adam-l2,adam-l2-big-batch]

`--roles` trains only those runs of each candidate (finding 6's pair, say): a finding whose
runs are left out reads "inconclusive", with "-" for their numbers.

The simulation (finding 9) and the comparison with explicit pruning (finding 11) do not
depend on the candidate's runs alone and are left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from implicit_sparsity.findings.claims import FINDINGS, Context
from implicit_sparsity.findings.plan import SCALES, Scale, findings_spec, roles
from implicit_sparsity.findings.run import collect_roles
from implicit_sparsity.study.sweep import in_worker, run_sweep, worker_pool

QUICK = SCALES["quick"]
CHECKED = (1, 2, 3, 4, 5, 6, 7, 8, 10)


def _candidate(name: str, lam: float, subset: int, classes: int | None,
               width: str = "0.125") -> tuple[str, Scale]:
    # same iterations (~5,000 at batch 40) whatever the subset: 40 epochs of 5,000 images
    epochs = {5000: [32, 8], 20000: [8, 2], 60000: [3, 1]}[subset]
    base = {**QUICK.base, "train_subset": subset, "epochs": epochs, "width": width}
    if classes is not None:
        base["class_subset"] = classes
    narrow = {"0.125": "0.0625", "0.25": "0.125"}[width]
    return name, dataclasses.replace(QUICK, name=name, description=name, base=base, lam=lam,
                                     low_lam=lam / 10, narrow={"width": narrow},
                                     harder={"class_subset": None},
                                     easier={"class_subset": 2})


def _standard_candidate(name: str, lam: float, subset: int, classes: int | None,
                        epochs: list[int], batches: tuple[int, int] = (40, 160)
                        ) -> tuple[str, Scale]:
    """A candidate for `--scale standard`: 10,000 iterations at the smaller batch (epochs x
    subset / batch), the larger batch on the same iterations."""
    small, big = batches
    assert sum(epochs) * subset // small == 10000, name
    base = {**QUICK.base, "train_subset": subset, "epochs": epochs, "class_subset": classes,
            "channels_last": True, "batch_size": small}
    return name, dataclasses.replace(QUICK, name=name, description=name, base=base, lam=lam,
                                     low_lam=lam / 10, big_batch=big)


def candidates() -> dict[str, Scale]:
    """The candidates, most promising first: λ, images, classes in the reference task."""
    found = [
        _candidate("l2e-3-n5k-c10", 2e-3, 5000, None),  # the preset before calibration
        _candidate("l1e-3-n20k-c5", 1e-3, 20000, 5),
        _candidate("l2e-3-n20k-c5", 2e-3, 20000, 5),
        _candidate("l1e-3-n5k-c5", 1e-3, 5000, 5),
        _candidate("l5e-4-n20k-c5", 5e-4, 20000, 5),
        _candidate("l1e-3-n20k-c10", 1e-3, 20000, None),
        _candidate("l2e-3-n20k-c10", 2e-3, 20000, None),
        _candidate("l1e-3-n5k-c10", 1e-3, 5000, None),
        _candidate("l5e-4-n5k-c5", 5e-4, 5000, 5),
        _candidate("l1e-3-n60k-c5", 1e-3, 60000, 5),
        _candidate("l1e-3-n20k-c10-w.25", 1e-3, 20000, None, "0.25"),
        _candidate("l2e-3-n5k-c10-w.25", 2e-3, 5000, None, "0.25"),
    ]
    # --scale standard: 10,000 iterations; 2,000 images are passed over 200 times at batch
    # 40 (and 800 at 160): both batch sizes fit them, as the paper's runs fit CIFAR
    found += [
        _standard_candidate("std-l2e-3-n2k-c10", 2e-3, 2000, None, [160, 40]),
        _standard_candidate("std-l2e-3-n5k-c10", 2e-3, 5000, None, [64, 16]),
        _standard_candidate("std-l1e-3-n2k-c10", 1e-3, 2000, None, [160, 40]),
        _standard_candidate("std-l2e-3-n2k-c5", 2e-3, 2000, 5, [160, 40]),
        # a class is missing from a batch of B with probability (1 - 1/C)^B: 0.67 / 0.20 for
        # the paper's 40 / 160 on CIFAR-100, 0.015 / 0.00 for 40 / 160 on 10 classes; 4 / 16
        # on 10 classes give 0.66 / 0.19, the paper's
        _standard_candidate("std-l2e-3-n2k-c10-b4", 2e-3, 2000, None, [16, 4], (4, 16)),
        _standard_candidate("std-l2e-3-n5k-c10-b4", 2e-3, 5000, None, [6, 2], (4, 16)),
    ]
    # the machinery alone, in seconds (for a smoke test of this script)
    found.append(("tiny", dataclasses.replace(SCALES["tiny"], name="tiny")))
    return dict(found)


def only_roles(scale: Scale, names: tuple[str, ...] | None):
    """The candidate's findings spec, cut to the runs of the named roles (all: None)."""
    spec = findings_spec(scale)
    if names:
        unknown = set(names) - set(roles(scale))
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; valid: {sorted(roles(scale))}")
        wanted = [roles(scale)[name] for name in names]
        spec = dataclasses.replace(spec, variants=[v for v in spec.variants if v in wanted])
    return spec


def train_candidate(scale: Scale, out: Path, seeds: tuple[int, ...], data_dir: str | None,
                    threads: int, pack: int | None = None,
                    role_names: tuple[str, ...] | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    scale = dataclasses.replace(scale, seeds=seeds)
    started = time.perf_counter()
    # its share of the cores: the sweep would give its one worker all of them
    run_sweep(only_roles(scale, role_names), out / "runs", workers=1, data_dir=data_dir,
              pack=pack, threads=threads)
    result = verdicts(scale, out)
    result["minutes"] = (time.perf_counter() - started) / 60
    (out / "calibration.json").write_text(json.dumps(result, indent=1))
    return result


def verdicts(scale: Scale, out: Path) -> dict:
    """The checked findings' verdicts from the runs finished so far under `out`."""
    runs = collect_roles(out / "runs", scale) if (out / "runs" / "index.json").is_file() else {}
    context = Context(runs, scale.adaptive, settings={"lam": scale.lam, "wd_lam": scale.wd_lam})
    result = {"candidate": scale.name, "runs": sum(len(r) for r in runs.values()),
              "reference_error": context.stat("adam-l2", "test_error").mean,
              "findings": {}}
    for finding in FINDINGS:
        if finding.number in CHECKED:
            outcome = finding.measure(context)
            result["findings"][finding.number] = {"verdict": outcome.verdict,
                                                  "ours": outcome.ours}
    return result


def _work(item):
    name, scale, out, seeds, data_dir, threads, pack, role_names = item
    try:
        return train_candidate(scale, out / name, seeds, data_dir, threads, pack, role_names)
    except Exception as error:  # one candidate failing must not lose the others
        return {"candidate": name, "error": f"{type(error).__name__}: {error}"}


def print_result(result: dict) -> None:
    if "error" in result:
        print(f"== {result['candidate']}: failed: {result['error']}", flush=True)
        return
    verdicts = " ".join(f"{n}:{v['verdict'][0].upper()}" for n, v in result["findings"].items())
    took = f"{result['minutes']:.1f} min" if "minutes" in result else "unfinished"
    print(f"== {result['candidate']} ({took}, {result['runs']} runs, reference test error "
          f"{result['reference_error']:.1f}%)  {verdicts}", flush=True)
    for number, v in result["findings"].items():
        print(f"   {number:>2} {v['verdict']:<14} {v['ours']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--candidates", help="comma-separated names (default: all; --list)")
    parser.add_argument("--parallel", type=int, default=1, help="candidates at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per candidate")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--data-dir")
    parser.add_argument("--pack", type=int, help="runs packed into one model (the sweep's "
                        "default: 8 on a GPU, none on CPUs)")
    parser.add_argument("--deadline-min", type=float, default=None,
                        help="print what finished by then and stop")
    parser.add_argument("--roles", help="comma-separated roles to train (default: all)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    found = candidates()
    if args.list:
        for name, scale in found.items():
            print(name, json.dumps(scale.base), f"λ {scale.lam:g}")
        return
    names = args.candidates.split(",") if args.candidates else list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        sys.exit(f"unknown candidates {unknown}; see --list")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    out = Path(args.out)
    role_names = tuple(args.roles.split(",")) if args.roles else None
    items = [(n, found[n], out, seeds, args.data_dir, args.threads, args.pack, role_names)
             for n in names]
    deadline = None if args.deadline_min is None else time.time() + 60 * args.deadline_min
    # the sweep's own pool: its workers die with this script (Ctrl-C, kill, the deadline)
    with worker_pool(args.parallel) as pool:
        pending = [pool.submit(in_worker, _work, item) for item in items]
        for item, job in zip(items, pending):
            left = None if deadline is None else max(deadline - time.time(), 0.1)
            try:
                print_result(job.result(timeout=left))
            except FutureTimeout:  # what its finished runs say so far
                print_result(verdicts(dataclasses.replace(item[1], seeds=seeds),
                                      out / item[0]))
        if deadline is not None:
            sys.stdout.flush()
            os._exit(0)  # the workers end with it; the unfinished runs resume with --out

if __name__ == "__main__":
    main()
