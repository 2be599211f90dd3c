"""`implicit-sparsity sweep`: every run of an experiment spec (finished runs skipped,
interrupted ones resumed), locally or on SLURM, then its table."""

from __future__ import annotations

import argparse
from pathlib import Path

from implicit_sparsity.commands.common import output_plan, overrides, positive_int
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.study.report import collect, render
from implicit_sparsity.study.spec import load_spec
from implicit_sparsity.study.sweep import run_sweep, sweep_status

NAME = "sweep"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="run every run of an experiment spec (finished runs "
                            "are skipped, interrupted ones resume) and print its table")
    parser.add_argument("spec", nargs="?", default=None,
                        help="a spec name (experiments/NAME.yaml) or a YAML path")
    parser.add_argument("--status", default=None, metavar="DIR",
                        help="list the runs of sweep folder DIR: done, running, interrupted, "
                             "pending, diverged, with their last epoch (trains nothing)")
    parser.add_argument("--out", default=None, help="sweep folder (default: runs/SPEC[-quick])")
    parser.add_argument("--quick", action="store_true", help="the spec's CPU-sized scale-down")
    parser.add_argument("--executor", default="local", choices=["local", "slurm"],
                        help="local: worker processes here; slurm: a job array via submitit")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="runs at a time (default: GPUs, or half the CPU cores)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--pack", type=positive_int, default=None, metavar="K",
                        help="train up to K compatible runs as one packed model (local "
                             "executor; default: 8 on a GPU machine, none on CPUs)")
    parser.add_argument("--no-pack", dest="pack", action="store_const", const=1,
                        help="never pack runs")
    parser.add_argument("--where", action="append", metavar="KEY=V1,V2",
                        help="only the runs whose KEY is one of these values (repeatable)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config key in every run (e.g. dataset=fashion-mnist);"
                             " seed=N or seeds=[N, ...] replaces the spec's seeds")
    for flag, kind, text in (
            ("--slurm-partition", str, "SLURM partition"),
            ("--slurm-time", positive_int, "minutes per job (default 1440)"),
            ("--slurm-cpus", positive_int, "CPUs per job, also its torch threads (default 2)"),
            ("--slurm-gpus", int, "GPUs per job (default 0)"),
            ("--slurm-parallel", positive_int, "array tasks running at once (default 64)"),
            ("--runs-per-job", positive_int, "short runs packed into one job (default 1)")):
        parser.add_argument(flag, type=kind, default=None, help=text)
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:

    if args.status:
        return status(args.status)
    if args.spec is None:
        raise ConfigError("give a spec (a name in experiments/ or a YAML path), or --status DIR")
    spec = load_spec(args.spec)
    out = Path(args.out) if args.out else Path("runs") / (spec.name + ("-quick" if args.quick
                                                                      else ""))
    output_plan(args).folder(out, "--out", "sweep", resumable=True)
    slurm = {"partition": args.slurm_partition, "timeout_min": args.slurm_time,
             "cpus_per_task": args.slurm_cpus, "gpus_per_task": args.slurm_gpus,
             "array_parallelism": args.slurm_parallel, "runs_per_job": args.runs_per_job}
    run_sweep(spec, out, quick=args.quick, workers=args.workers, data_dir=args.data_dir,
              overrides=overrides(args.set), executor=args.executor,
              where={k: str(v).split(",") for k, v in overrides(args.where).items()},
              pack=args.pack,
              slurm={k: v for k, v in slurm.items() if v is not None})
    print(render(*collect(out)))
    print(f"sweep folder: {out} (implicit-sparsity report {out} for LaTeX / CSV)")
    return 0


def status(folder: str) -> int:

    rows = sweep_status(folder)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
        labels = ", ".join(f"{k}={v}" for k, v in row["labels"].items())
        print(f"  {row['state']:11s} epoch {row['epoch']:>4d}/{row['epochs']:<4d} "
              f"{row['key']}  seed {row['seed']}  {labels}")
    print(f"{folder}: {len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(
        counts.items())))
    return 0
