"""`implicit-sparsity datasets`: the data sets, where they were found, how to get them."""

from __future__ import annotations

import argparse

from implicit_sparsity.data import DATASETS, locate
from implicit_sparsity.data.registry import candidate_dirs
from implicit_sparsity.errors import DatasetNotFoundError

NAME = "datasets"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="list the data sets and where they are")
    parser.add_argument("--data-dir", default=None)
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:

    for name, entry in DATASETS.items():
        try:
            where = f"found at {locate(entry, args.data_dir)}"
        except DatasetNotFoundError:
            places = ", ".join(str(p) for p in candidate_dirs(entry, args.data_dir))
            where = f"not found (looked in {places}); to get it: {entry.how_to_get}"
        print(f"  {name:14s} {entry.num_classes:4d} classes  {entry.image_size:3d}px  "
              f"{entry.description}\n                 {where}")
    return 0
