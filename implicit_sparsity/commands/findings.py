"""`implicit-sparsity findings`: the experiments behind each of the paper's findings, one
report with a verdict per finding."""

from __future__ import annotations

import argparse
from pathlib import Path

from implicit_sparsity.commands.common import output_plan, positive_int
from implicit_sparsity.findings import SCALES, run_findings

NAME = "findings"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="re-check the paper's findings: the runs behind each, "
                            "a verdict per finding, one report (Markdown and HTML)")
    parser.add_argument("--quick", dest="scale", action="store_const", const="quick",
                        help="the CPU preset (Fashion-MNIST, offline; about 30 minutes on 2 "
                             "cores with --workers 2)")
    parser.add_argument("--scale", choices=tuple(SCALES),
                        help="full: the paper's settings; quick: the CPU preset; standard: "
                             "a longer CPU scale (10,000 iterations a run; about 48 minutes on 2 "
                             "cores with --workers 2); tiny: a "
                             "seconds-long smoke test of the machinery")
    parser.add_argument("--out", default=None, help="folder (default: runs/findings-SCALE)")
    parser.add_argument("--executor", default="local", choices=["local", "slurm"])
    parser.add_argument("--workers", type=positive_int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--no-explicit", action="store_true",
                        help="skip the comparison with explicit pruning (finding 11)")
    parser.set_defaults(func=run, scale="full")
    return parser


def run(args) -> int:

    out = Path(args.out) if args.out else Path("runs") / f"findings-{args.scale}"
    output_plan(args).folder(out, "--out", "findings", resumable=True)
    result = run_findings(out, args.scale, workers=args.workers, data_dir=args.data_dir,
                          executor=args.executor, explicit=not args.no_explicit)
    for finding in result["findings"]:
        print(f"{finding['number']:2d}. {finding['verdict']:13s} {finding['claim']}\n"
              f"    ours: {finding['ours']}")
    print(f"wrote {result['files']['markdown']} and {result['files']['html']} "
          f"({result['wall_seconds'] / 60:.1f} min)")
    return 0
