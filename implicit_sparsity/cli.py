"""The `implicit-sparsity` command: a thin layer over the Python API.

Bad input fails before any work with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

from implicit_sparsity.errors import ConfigError, ImplicitSparsityError


# --- train ---------------------------------------------------------------------------------
def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (`--train-subset` for train_subset); unset flags keep
    the config file's value or the default."""
    from implicit_sparsity.train.config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.type.startswith("bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.type.startswith("list"):
            kwargs["nargs"] = "+"
        elif f.type.startswith("dict"):
            kwargs["type"] = _yaml_mapping
            kwargs["metavar"] = "YAML"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs["help"] = f"(default: {default})"
        names = [flag] + (["--lambda"] if f.name == "lam" else [])
        parser.add_argument(*names, **kwargs)


def _yaml_mapping(text: str) -> dict:
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping like '{{betas: [0.9, 0.999]}}'"
                                         f", got {text!r}")
    return value


def default_run_name(config) -> str:
    return (f"{config.model}-{config.width}-{config.dataset}-{config.optimizer}-"
            f"{config.regularizer}{config.lam:g}-b{config.batch_size}-s{config.seed}")


def cmd_train(args) -> int:
    from implicit_sparsity.train import TrainConfig, load_config_file, train

    values = load_config_file(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items()
                   if k not in ("command", "config", "out", "func")})
    config = TrainConfig.from_dict(values).resolved()
    out = Path(args.out) if args.out else Path("runs") / default_run_name(config)
    result = train(config, out)
    final = result.metrics[-1]
    print(f"finished {out}: test error {final['test_error']:.2f}%, sparsity by |gamma| "
          f"{final['sparsity_gamma_total']:.1f}%")
    return 0


# --- models / datasets ---------------------------------------------------------------------
def cmd_models(args) -> int:
    import torch

    from implicit_sparsity.data import get_dataset_entry
    from implicit_sparsity.models import MODELS, build_model, conv_param_count, feature_layers

    entry = get_dataset_entry(args.dataset)
    print(f"models for {entry.name} ({entry.in_channels} channel(s), {entry.num_classes} "
          f"classes, {entry.head} head), width {args.width}:")
    for name, model_entry in MODELS.items():
        size = max(entry.image_size, model_entry.min_input_size(entry.head))
        try:
            with torch.device("meta"):  # shapes only, no memory or init cost
                model = build_model(name, in_channels=entry.in_channels,
                                    num_classes=entry.num_classes, head=entry.head,
                                    input_size=size, width=args.width)
        except ConfigError as error:
            print(f"  {name:9s} {error}")
            continue
        filters = [block.conv.out_channels for _, block in feature_layers(model)]
        total = sum(p.numel() for p in model.parameters())
        print(f"  {name:9s} conv params {conv_param_count(model):>11,}  all params {total:>12,}"
              f"  {len(filters)} conv layers, {sum(filters)} filters: {filters}")
        print(f"            {model_entry.description}"
              + (f"; inputs padded {entry.image_size}->{size}" if size > entry.image_size
                 else ""))
    return 0


def cmd_datasets(args) -> int:
    from implicit_sparsity.data import DATASETS, locate
    from implicit_sparsity.data.registry import candidate_dirs
    from implicit_sparsity.errors import DatasetNotFoundError

    for name, entry in DATASETS.items():
        try:
            where = f"found at {locate(entry, args.data_dir)}"
        except DatasetNotFoundError:
            places = ", ".join(str(p) for p in candidate_dirs(entry, args.data_dir))
            where = f"not found (looked in {places}); to get it: {entry.how_to_get}"
        print(f"  {name:14s} {entry.num_classes:4d} classes  {entry.image_size:3d}px  "
              f"{entry.description}\n                 {where}")
    return 0


# --- analyze -------------------------------------------------------------------------------
def cmd_analyze(args) -> int:
    import json

    from implicit_sparsity.measure.report import analyze
    from implicit_sparsity.train.loop import resolve_device
    from implicit_sparsity.train.restore import load_trained, load_training_data

    device = resolve_device(args.device)
    run = load_trained(args.path, device)
    batches, samples = None, None
    if args.criterion != "gamma":
        data = load_training_data(run, device, args.data_dir)
        batches = lambda: data.train_eval_batches(args.batch_size)  # noqa: E731
        samples = data.num_train
    print(f"{run.config.model} (width {run.config.width}) trained on {run.config.dataset} "
          f"with {run.config.optimizer} + {run.config.regularizer} {run.config.lam:g}, "
          f"epoch {run.epoch}" + (f"; activations over {samples} training images"
                                  if samples else ""))
    report = analyze(run.model, batches, criterion=args.criterion,
                     gamma_threshold=args.gamma_threshold,
                     activation_threshold=args.activation_threshold,
                     universality=not args.no_universality)
    print(report.table())
    if args.json:
        payload = {"source": str(args.path), "epoch": run.epoch,
                   "config": run.config.to_dict(), **report.to_dict()}
        Path(args.json).write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.json}")
    if args.plots:
        from implicit_sparsity.measure.plots import (plot_bn_history, plot_layer_sparsity,
                                                     plot_universality)
        from implicit_sparsity.train import load_bn_history

        folder = Path(args.plots)
        folder.mkdir(parents=True, exist_ok=True)
        written = [plot_layer_sparsity(report, folder / "layer_sparsity.png")]
        if any(l.universality is not None for l in report.layers):
            written.append(plot_universality(report, folder / "universality.png"))
        history = load_bn_history(run.run_dir) if run.run_dir else {}
        if history:
            written.append(plot_bn_history(history, folder / "gamma_beta_history.png"))
        for path in written:
            print(f"wrote {path}")
    return 0


# --- prune ---------------------------------------------------------------------------------
def cmd_prune(args) -> int:
    import json
    import warnings

    import torch

    from implicit_sparsity.prune import prune_model
    from implicit_sparsity.prune.slim_io import check_before_writing, load_slim, save_slim
    from implicit_sparsity.train.loop import resolve_device
    from implicit_sparsity.train.restore import load_trained, load_training_data

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_trained(args.checkpoint, device)
    data = load_training_data(run, device, args.data_dir)
    corpus = lambda: data.train_eval_batches(args.batch_size)  # noqa: E731
    test = list(data.test_batches(args.batch_size))
    example = next(iter(data.test_batches(64)))[0]
    print(f"pruning {run.config.model} (width {run.config.width}, {run.config.dataset}, "
          f"epoch {run.epoch}) by {args.criterion}; proof on {data.num_test} test images")
    result = prune_model(run.model, example, criterion=args.criterion,
                         corpus=corpus if args.criterion == "activation" else None,
                         check_data=test, gamma_threshold=args.gamma_threshold,
                         activation_threshold=args.activation_threshold, fold_bn=args.fold_bn,
                         latency_batches=() if args.no_latency else (1, 64),
                         threads=args.threads)
    if device.type != "cpu" and not args.no_latency:  # the CPU figures too
        import copy

        from implicit_sparsity.prune.cost import latency_table

        result.latency += latency_table(copy.deepcopy(run.model).cpu(),
                                        copy.deepcopy(result.model).cpu(), example.cpu(),
                                        (1, 64), args.threads)
    print(result.table())
    check_before_writing(result, args.tolerance, args.force)
    files = save_slim(result, args.out, example, config=run.config.to_dict(),
                      tolerance=args.tolerance, force=args.force,
                      extra={"source": str(args.checkpoint), "epoch": run.epoch})
    # the written files give the same outputs as the model in memory
    reloaded = load_slim(files["slim"], device)
    exported = torch.export.load(files["exported"]).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(files["torchscript"]), map_location=device)
    with torch.no_grad():
        expected = result.model(example)
        drift = max((loaded(example) - expected).abs().max().item()
                    for loaded in (reloaded, exported, scripted))
    print(f"wrote {args.out} (slim.pt, slim.pt2, slim.torchscript.pt, prune_report.json); reloaded "
          f"outputs differ by at most {drift:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
        print(f"wrote {args.json}")
    return 0


# --- simulate ------------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    import json

    from implicit_sparsity.study.simulate import plot_simulation, simulate

    result = simulate(args.optimizers, args.regularizers, args.lambdas, args.steps, args.seed)
    level = 1e-3
    print(f"a scalar from 1 under simulated low gradients, {args.steps} iterations; value at "
          f"the end (and the first iteration with |value| < {level:g}):")
    lams = list(result.settings["lambdas"])
    print(f"{'optimizer':10s}{'reg':>4s}" + "".join(f"{f'lambda {lam:g}':>20s}" for lam in lams))
    for name, by_reg in result.curves.items():
        for reg in by_reg:
            cells = []
            for lam in lams:
                reached = result.steps_to(name, reg, lam, level)
                cells.append(f"{result.final(name, reg, lam):.3f} ({reached or '-'})")
            print(f"{name:10s}{reg:>4s}" + "".join(f"{c:>20s}" for c in cells))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict()))
        print(f"wrote {args.json}")
    if args.plot:
        plot_simulation(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


# --- sweep / report ------------------------------------------------------------------------
def _overrides(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}")
        values[key.strip()] = yaml.safe_load(value)
    return values


def cmd_sweep(args) -> int:
    from implicit_sparsity.study.report import collect, render
    from implicit_sparsity.study.spec import load_spec
    from implicit_sparsity.study.sweep import run_sweep

    spec = load_spec(args.spec)
    out = Path(args.out) if args.out else Path("runs") / (spec.name + ("-quick" if args.quick
                                                                      else ""))
    slurm = {"partition": args.slurm_partition, "timeout_min": args.slurm_time,
             "cpus_per_task": args.slurm_cpus, "gpus_per_task": args.slurm_gpus,
             "array_parallelism": args.slurm_parallel, "runs_per_job": args.runs_per_job}
    run_sweep(spec, out, quick=args.quick, workers=args.workers, data_dir=args.data_dir,
              overrides=_overrides(args.set), executor=args.executor,
              where={k: str(v).split(",") for k, v in _overrides(args.where).items()},
              pack=args.pack,
              slurm={k: v for k, v in slurm.items() if v is not None})
    print(render(*collect(out)))
    print(f"sweep folder: {out} (implicit-sparsity report {out} for LaTeX / CSV)")
    return 0


def cmd_report(args) -> int:
    from implicit_sparsity.study.report import collect, render

    spec, records = collect(args.sweep_dir)
    text = render(spec, records, fmt=args.format)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    if args.figures:
        from implicit_sparsity.study.figures import write_figures

        for path in write_figures(args.sweep_dir, spec, records, args.figures):
            print(f"wrote {path}")
    return 0


# --- compare -------------------------------------------------------------------------------
def cmd_compare(args) -> int:
    from implicit_sparsity.explicit.compare import compare, comparison_table, plot_tradeoff
    from implicit_sparsity.train import TrainConfig, load_config_file

    paper = None
    if args.spec:
        from implicit_sparsity.explicit.compare import load_comparison

        spec, base, kwargs = load_comparison(args.spec, quick=args.quick,
                                             overrides=_overrides(args.set))
        paper = spec.get("paper")
        print(f"{spec.get('title', spec.get('name'))}" + (" (quick)" if args.quick else ""))
    else:
        values = load_config_file(args.config) if args.config else {}
        values.update({k: v for k, v in vars(args).items()
                       if k in TrainConfig.__dataclass_fields__})
        base = TrainConfig.from_dict(values).resolved()
        fractions = None
        if args.l1_layers:
            fractions = {k: float(v) for k, v in (item.split("=") for item in args.l1_layers)}
        kwargs = dict(methods=tuple(args.methods),
                      implicit_batch_sizes=tuple(args.batch_sizes or ()),
                      slimming_strength=args.slimming_s, slimming_ratios=tuple(args.ratios),
                      l1_fractions=fractions, explicit_optimizer=args.explicit_optimizer,
                      finetune_epochs=tuple(args.finetune_epochs))
    points = compare(base, args.out, latency=not args.no_latency, verbose=True, **kwargs)
    print(comparison_table(points, paper))
    path = plot_tradeoff(points, Path(args.out) / "tradeoff.png")
    print(f"wrote {Path(args.out) / 'comparison.json'} and {path}")
    return 0


# --- demo ----------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from implicit_sparsity.demo import run_demo

    run_demo(out=Path(args.out), data_dir=args.data_dir, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="implicit-sparsity",
        description="Train, measure and exploit the implicit filter sparsity of CNNs "
                    "(Mehta, Kim, Theobalt, CVPR 2019).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one run into a run folder (resumes if killed)",
                           argument_default=argparse.SUPPRESS)
    train.add_argument("--config", default=None, help="YAML file of config keys; flags override")
    train.add_argument("--out", default=None,
                       help="run folder (default: runs/<model>-<width>-<dataset>-...)")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list the models with their conv parameters")
    models.add_argument("--dataset", default="cifar10")
    models.add_argument("--width", default="1")
    models.set_defaults(func=cmd_models)

    datasets = sub.add_parser("datasets", help="list the data sets and where they are")
    datasets.add_argument("--data-dir", default=None)
    datasets.set_defaults(func=cmd_datasets)

    from implicit_sparsity import defaults

    analyze = sub.add_parser("analyze", help="per-layer sparsity (|gamma| and activation), "
                             "universality, % params, of a run folder or checkpoint")
    analyze.add_argument("path", help="a run folder or a checkpoint.pt")
    analyze.add_argument("--criterion", choices=("gamma", "activation", "both"), default="both")
    analyze.add_argument("--json", default=None, help="write the per-layer figures as JSON")
    analyze.add_argument("--plots", default=None, help="folder for PNG figures")
    analyze.add_argument("--data-dir", default=None, help="where the training data is now")
    analyze.add_argument("--batch-size", type=int, default=500)
    analyze.add_argument("--device", default="auto")
    analyze.add_argument("--gamma-threshold", type=float, default=defaults.GAMMA_THRESHOLD)
    analyze.add_argument("--activation-threshold", type=float,
                         default=defaults.ACTIVATION_THRESHOLD)
    analyze.add_argument("--no-universality", action="store_true",
                         help="skip the second pass over the corpus")
    analyze.set_defaults(func=cmd_analyze)

    prune = sub.add_parser("prune", help="remove dead filters for real, prove predictions "
                           "did not change, measure the speed-up")
    prune.add_argument("checkpoint", help="a run folder or a checkpoint.pt")
    prune.add_argument("--out", required=True, help="folder for the slim model and report")
    prune.add_argument("--criterion", choices=("gamma", "activation"), default="gamma")
    prune.add_argument("--json", default=None, help="also write the report here")
    prune.add_argument("--tolerance", type=float, default=1e-4,
                       help="largest max|delta logits| / max|logits| accepted (and no test "
                            "prediction may change)")
    prune.add_argument("--force", action="store_true",
                       help="write even if predictions changed (the report says so)")
    prune.add_argument("--fold-bn", action="store_true",
                       help="fold BatchNorm into the convolutions for deployment")
    prune.add_argument("--data-dir", default=None)
    prune.add_argument("--device", default="auto")
    prune.add_argument("--batch-size", type=int, default=500)
    prune.add_argument("--threads", type=int, default=None, help="CPU threads (latency)")
    prune.add_argument("--no-latency", action="store_true")
    prune.add_argument("--gamma-threshold", type=float, default=defaults.GAMMA_THRESHOLD)
    prune.add_argument("--activation-threshold", type=float,
                       default=defaults.ACTIVATION_THRESHOLD)
    prune.set_defaults(func=cmd_prune)

    sim = defaults.SIMULATION
    simulate = sub.add_parser("simulate", help="the low-gradient simulation of the paper's "
                              "Fig. 4: a scalar under L2 / WD with each optimizer")
    simulate.add_argument("--optimizers", nargs="+", default=list(sim["optimizers"]))
    simulate.add_argument("--regularizers", nargs="+", default=["l2", "wd"],
                          choices=["l2", "wd"])
    simulate.add_argument("--lambdas", nargs="+", type=float, default=list(sim["lambdas"]))
    simulate.add_argument("--steps", type=int, default=sim["steps"])
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--json", default=None, help="write the curves as JSON")
    simulate.add_argument("--plot", default=None, help="write the figure (PNG or PDF)")
    simulate.set_defaults(func=cmd_simulate)

    sweep = sub.add_parser("sweep", help="run every run of an experiment spec (finished runs "
                           "are skipped, interrupted ones resume) and print its table")
    sweep.add_argument("spec", help="a spec name (experiments/NAME.yaml) or a YAML path")
    sweep.add_argument("--out", default=None, help="sweep folder (default: runs/SPEC[-quick])")
    sweep.add_argument("--quick", action="store_true", help="the spec's CPU-sized scale-down")
    sweep.add_argument("--executor", default="local", choices=["local", "slurm"],
                       help="local: worker processes here; slurm: a job array via submitit")
    sweep.add_argument("--workers", type=int, default=None,
                       help="runs at a time (default: GPUs, or half the CPU cores)")
    sweep.add_argument("--data-dir", default=None)
    sweep.add_argument("--pack", type=int, default=None, metavar="K",
                       help="train up to K compatible runs as one packed model (local "
                            "executor; default: 8 on a GPU machine, none on CPUs)")
    sweep.add_argument("--no-pack", dest="pack", action="store_const", const=1,
                       help="never pack runs")
    sweep.add_argument("--where", action="append", metavar="KEY=V1,V2",
                       help="only the runs whose KEY is one of these values (repeatable)")
    sweep.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key in every run (e.g. dataset=fashion-mnist)")
    for flag, kind, text in (
            ("--slurm-partition", str, "SLURM partition"),
            ("--slurm-time", int, "minutes per job (default 1440)"),
            ("--slurm-cpus", int, "CPUs per job, also its torch threads (default 2)"),
            ("--slurm-gpus", int, "GPUs per job (default 0)"),
            ("--slurm-parallel", int, "array tasks running at once (default 64)"),
            ("--runs-per-job", int, "short runs packed into one job (default 1)")):
        sweep.add_argument(flag, type=kind, default=None, help=text)
    sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser("report", help="a sweep's table beside the paper's numbers")
    report.add_argument("sweep_dir")
    report.add_argument("--format", choices=["markdown", "latex", "csv"], default="markdown")
    report.add_argument("--out", default=None, help="write to this file")
    report.add_argument("--figures", default=None,
                        help="folder for the figures (layer-wise bars, universality, gamma / "
                             "beta over epochs), PNG and PDF")
    report.set_defaults(func=cmd_report)

    compare = sub.add_parser("compare", help="implicit sparsity against Network Slimming and "
                             "L1-norm filter pruning on the same model and data",
                             argument_default=argparse.SUPPRESS)
    compare.add_argument("--spec", default=None,
                         help="a comparison spec (experiments/compare_*.yaml) instead of flags")
    compare.add_argument("--quick", action="store_true", default=False,
                         help="with --spec: its CPU-sized scale-down")
    compare.add_argument("--set", action="append", metavar="KEY=VALUE", default=None,
                         help="with --spec: override a base config key (dataset=...)")
    compare.add_argument("--config", default=None, help="YAML of the base (implicit) run")
    compare.add_argument("--out", required=True)
    compare.add_argument("--methods", nargs="+", default=["implicit", "slimming", "l1norm"],
                         choices=["implicit", "slimming", "l1norm"])
    compare.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                         help="implicit: mini-batch sizes to try (same iterations)")
    compare.add_argument("--slimming-s", type=float, default=1e-4,
                         help="Network Slimming's L1 strength on gamma")
    compare.add_argument("--ratios", nargs="+", type=float, default=[0.5],
                         help="Network Slimming: shares of all filters to remove")
    compare.add_argument("--l1-layers", nargs="+", default=None, metavar="LAYER=SHARE",
                         help="L1-norm pruning: per-layer shares (default 0.5 everywhere; "
                              "VGG-16-A: C1=0.5 C8=0.5 ... C13=0.5)")
    compare.add_argument("--explicit-optimizer", default="sgd")
    compare.add_argument("--finetune-epochs", nargs="+", type=int, default=[2])
    compare.add_argument("--no-latency", action="store_true", default=False)
    _add_config_flags(compare)
    compare.set_defaults(func=cmd_compare)

    demo = sub.add_parser("demo", help="Adam + L2 vs SGD + L2 on Fashion-MNIST, offline")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--data-dir", default=None)
    demo.add_argument("--quick", action="store_true", help="a much smaller smoke-test version")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ImplicitSparsityError as error:
        print(f"implicit-sparsity: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("implicit-sparsity: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
