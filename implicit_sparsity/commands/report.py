"""`implicit-sparsity report`: a sweep's table beside the paper's numbers, and its figures."""

from __future__ import annotations

import argparse

from implicit_sparsity.commands.common import add_overwrite_flag, output_plan
from implicit_sparsity.io import atomic_write_text
from implicit_sparsity.study.figures import write_figures
from implicit_sparsity.study.report import collect, render

NAME = "report"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="a sweep's table beside the paper's numbers")
    parser.add_argument("sweep_dir")
    parser.add_argument("--format", choices=["markdown", "latex", "csv"], default="markdown")
    parser.add_argument("--out", default=None, help="write to this file")
    parser.add_argument("--figures", default=None,
                        help="folder for the figures (layer-wise bars, universality, gamma / "
                             "beta over epochs), PNG and PDF")
    add_overwrite_flag(parser)
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:

    plan = output_plan(args)
    out = plan.file(args.out, "--out")
    figures = plan.figures(args.figures, "--figures")
    spec, records = collect(args.sweep_dir)
    text = render(spec, records, fmt=args.format)
    if out:
        atomic_write_text(out, text + "\n")
        print(f"wrote {out}")
    else:
        print(text)
    if figures:

        for path in write_figures(args.sweep_dir, spec, records, figures):
            print(f"wrote {path}")
    return 0
