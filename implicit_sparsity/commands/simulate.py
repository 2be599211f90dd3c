"""`implicit-sparsity simulate`: the low-gradient simulation of the paper's Fig. 4."""

from __future__ import annotations

import argparse

from implicit_sparsity import defaults
from implicit_sparsity.commands.common import (
    add_overwrite_flag,
    dump_json,
    non_negative_float,
    output_plan,
    positive_int,
)
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.study.simulate import plot_simulation, simulate

#: The figure formats --plot writes (matplotlib's, by the file's suffix).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")

NAME = "simulate"


def add_parser(sub) -> argparse.ArgumentParser:
    sim = defaults.SIMULATION
    parser = sub.add_parser(NAME, help="the low-gradient simulation of the paper's Fig. 4: a "
                            "scalar under L2 / WD with each optimizer")
    parser.add_argument("--optimizers", nargs="+", default=list(sim["optimizers"]))
    parser.add_argument("--regularizers", nargs="+", default=["l2", "wd"],
                        choices=["l2", "wd", "decoupled"],
                        help="decoupled: AdamW's decoupled weight decay (beyond the paper)")
    parser.add_argument("--lambdas", nargs="+", type=non_negative_float,
                        default=list(sim["lambdas"]))
    parser.add_argument("--steps", type=positive_int, default=sim["steps"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the curves as JSON")
    parser.add_argument("--plot", default=None, help="write the figure (PNG, PDF or SVG)")
    add_overwrite_flag(parser)
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:

    if args.steps > defaults.MAX_SIMULATION_STEPS:
        raise ConfigError(f"--steps {args.steps:,} is beyond the bound of "
                          f"{defaults.MAX_SIMULATION_STEPS:,} (the paper's Fig. 4 runs 10,000)")
    plan = output_plan(args)
    json_path = plan.file(args.json, "--json")
    plot_path = plan.file(args.plot, "--plot")
    if plot_path is not None and plot_path.suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"--plot {plot_path}: give a file ending in "
                          f"{', '.join(PLOT_SUFFIXES)}")
    result = simulate(args.optimizers, args.regularizers, args.lambdas, args.steps, args.seed)
    level = 1e-3
    print(f"a scalar from 1 under simulated low gradients, {args.steps} iterations; value at "
          f"the end (and the first iteration with |value| < {level:g}):")
    lams = list(result.settings["lambdas"])
    print(f"{'optimizer':19s}{'reg':>10s}"
          + "".join(f"{f'lambda {lam:g}':>20s}" for lam in lams))
    for name, by_reg in result.curves.items():
        for reg in by_reg:
            cells = []
            for lam in lams:
                reached = result.steps_to(name, reg, lam, level)
                cells.append(f"{result.final(name, reg, lam):.3f} ({reached or '-'})")
            print(f"{name:19s}{reg:>10s}" + "".join(f"{c:>20s}" for c in cells))
    for pair in result.settings["not_defined"]:
        print(f"{pair}: not defined (see `implicit-sparsity train --help` / docs/training.md)")
    if json_path:
        dump_json(json_path, result.to_dict())
        print(f"wrote {json_path}")
    if plot_path:
        plot_simulation(result, plot_path)
        print(f"wrote {plot_path}")
    return 0
