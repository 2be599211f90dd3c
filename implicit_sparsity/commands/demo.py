"""`implicit-sparsity demo`: Adam + L2 against SGD + L2 on Fashion-MNIST, offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from implicit_sparsity.commands.common import output_plan
from implicit_sparsity.demo import run_demo

NAME = "demo"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="Adam + L2 vs SGD + L2 on Fashion-MNIST, offline")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true", help="a much smaller smoke-test version")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:

    output_plan(args).folder(args.out, "--out", "demo", resumable=True)
    run_demo(out=Path(args.out), data_dir=args.data_dir, quick=args.quick)
    return 0
