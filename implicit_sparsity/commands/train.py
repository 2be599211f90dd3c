"""`implicit-sparsity train`: one run into a run folder, resumed if it was killed."""

from __future__ import annotations

import argparse
from pathlib import Path

from implicit_sparsity.commands.common import add_config_flags, output_plan
from implicit_sparsity.io.run_dir import is_finished, read_metrics
from implicit_sparsity.train import TrainConfig, load_config_file, train
from implicit_sparsity.train.loop import gamma_text
from implicit_sparsity.train.run_folder import check_run_dir_config

NAME = "train"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="train one run into a run folder (resumes if killed)",
                            argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help="YAML file of config keys; flags override")
    parser.add_argument("--out", default=None,
                        help="run folder (default: runs/<model>-<width>-<dataset>-...)")
    add_config_flags(parser)
    parser.set_defaults(func=run)
    return parser


def default_run_name(config) -> str:
    return (f"{config.model}-{config.width}-{config.dataset}-{config.optimizer}-"
            f"{config.regularizer}{config.lam:g}-b{config.batch_size}-s{config.seed}")


def run(args) -> int:

    values = load_config_file(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items()
                   if k not in ("command", "config", "out", "func")})
    config = TrainConfig.from_dict(values).resolved()
    out = Path(args.out) if args.out else Path("runs") / default_run_name(config)
    output_plan(args).folder(out, "--out", "run", resumable=True)
    if is_finished(out):  # the same command again: nothing to do, nothing overwritten
        check_run_dir_config(out, config)
        final = (read_metrics(out) or [{}])[-1]
        print(f"{out} is already finished: test error {final.get('test_error', float('nan')):.2f}%"
              f"{gamma_text(final)}")
        return 0
    result = train(config, out)
    final = result.metrics[-1]
    print(f"finished {out}: test error {final['test_error']:.2f}%{gamma_text(final)}")
    return 0
