"""`implicit-sparsity compare`: implicit sparsity against Network Slimming and L1-norm filter
pruning on the same model and data (the paper's Tables 7, 9, 10)."""

from __future__ import annotations

import argparse
from pathlib import Path

from implicit_sparsity.commands.common import (
    add_config_flags,
    finite_float,
    output_plan,
    overrides,
    positive_int,
    share,
)
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.explicit.compare import (
    compare,
    arms_table,
    comparison_table,
    load_comparison,
    plot_tradeoff,
    summarize_arms,
)
from implicit_sparsity.measure.plots import pyplot
from implicit_sparsity.train import TrainConfig, load_config_file

NAME = "compare"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="implicit sparsity against Network Slimming and "
                            "L1-norm filter pruning on the same model and data",
                            argument_default=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None,
                        help="a comparison spec (experiments/compare_*.yaml) instead of flags")
    parser.add_argument("--quick", action="store_true", default=False,
                        help="with --spec: its CPU-sized scale-down")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=None,
                        help="with --spec: override a base config key (dataset=...)")
    parser.add_argument("--config", default=None, help="YAML of the base (implicit) run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", nargs="+", default=["implicit", "slimming", "l1norm"],
                        choices=["implicit", "slimming", "l1norm", "selectivity"],
                        help="selectivity: the implicit run's least universal filters removed "
                             "(at its own share and at half), then fine-tuned")
    parser.add_argument("--batch-sizes", nargs="+", type=positive_int, default=None,
                        help="implicit: mini-batch sizes to try (same iterations)")
    parser.add_argument("--slimming-s", type=finite_float, default=1e-4,
                        help="Network Slimming's L1 strength on gamma")
    parser.add_argument("--ratios", nargs="+", type=share, default=[0.5],
                        help="Network Slimming: shares of all filters to remove")
    parser.add_argument("--l1-layers", nargs="+", default=None, metavar="LAYER=SHARE",
                        help="L1-norm pruning: per-layer shares (default 0.5 everywhere; "
                             "VGG-16-A: C1=0.5 C8=0.5 ... C13=0.5)")
    parser.add_argument("--explicit-optimizer", default="sgd")
    parser.add_argument("--finetune-epochs", nargs="+", type=positive_int, default=None,
                        help="fixed fine-tuning stages for every explicit arm (default: "
                             "each method's own protocol, scaled to the training: Network "
                             "Slimming the training schedule again, L1-norm a quarter of it "
                             "at 1/100 of the rate)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run every arm once per seed (means and spreads per arm)")
    parser.add_argument("--no-latency", action="store_true", default=False)
    add_config_flags(parser)
    parser.set_defaults(func=run)
    return parser


def layer_shares(items: list[str] | None) -> dict[str, float] | None:
    """`C1=0.5 C8=0.5` as {"C1": 0.5, "C8": 0.5}; each share in [0, 1]."""
    if not items:
        return None
    shares = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            shares[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(f"--l1-layers takes LAYER=SHARE (e.g. C1=0.5), got {item!r}")
    return shares


def run(args) -> int:

    output_plan(args).folder(args.out, "--out", "comparison", resumable=True)
    pyplot()  # the trade-off figure comes last: a missing matplotlib is said now, not then
    paper = None
    if args.spec:

        spec, base, kwargs = load_comparison(args.spec, quick=args.quick,
                                             overrides=overrides(args.set))
        paper = spec.get("paper")
        print(f"{spec.get('title', spec.get('name'))}" + (" (quick)" if args.quick else ""))
    else:
        values = load_config_file(args.config) if args.config else {}
        values.update({k: v for k, v in vars(args).items()
                       if k in TrainConfig.__dataclass_fields__})
        base = TrainConfig.from_dict(values).resolved()
        kwargs = dict(methods=tuple(args.methods),
                      implicit_batch_sizes=tuple(args.batch_sizes or ()),
                      slimming_strength=args.slimming_s, slimming_ratios=tuple(args.ratios),
                      l1_fractions=layer_shares(args.l1_layers),
                      explicit_optimizer=args.explicit_optimizer,
                      finetune_epochs=tuple(args.finetune_epochs)
                      if args.finetune_epochs else None)
    if getattr(args, "seeds", None):
        kwargs["seeds"] = tuple(args.seeds)
    points = compare(base, args.out, latency=not args.no_latency, verbose=True, **kwargs)
    print(comparison_table(points, paper))
    print(arms_table(summarize_arms(points)))
    path = plot_tradeoff(points, Path(args.out) / "tradeoff.png", paper)
    print(f"wrote {Path(args.out) / 'comparison.json'} and {path}")
    return 0
