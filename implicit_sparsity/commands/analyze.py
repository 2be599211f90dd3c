"""`implicit-sparsity analyze`: per-layer sparsity by |gamma| and by activation, universality
and % of conv parameters freed, of a run folder or checkpoint, or of a user's own model
(`--model module:function --weights state.pt --data images/`); of a weights file alone
(`analyze state.pt`), sparsity by |gamma| only (measure.weights_only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from implicit_sparsity.commands.common import (
    add_measurement_flags,
    add_model_source_flags,
    add_overwrite_flag,
    criterion_for,
    dump_json,
    open_source,
    output_plan,
    units_for,
)
from implicit_sparsity.errors import ConfigError, ImplicitSparsityError
from implicit_sparsity.io.run_dir import load_bn_history
from implicit_sparsity.measure.plots import plot_bn_history, plot_layer_sparsity, plot_universality
from implicit_sparsity.measure.report import analyze
from implicit_sparsity.measure.sensitivity import sensitivity, sensitivity_json, sensitivity_table
from implicit_sparsity.measure.weights_only import weights_only_report
from implicit_sparsity.models.huggingface import is_huggingface_folder
from implicit_sparsity.models.user import read_weights, tensors_of
from implicit_sparsity.train.loop import resolve_device

NAME = "analyze"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="per-layer sparsity (|gamma| and activation), "
                            "universality, %% params, of a run folder or of your own model")
    add_model_source_flags(parser)
    parser.add_argument("--criterion", choices=("gamma", "activation", "both"), default=None,
                        help="default: both, or activation for a model without BatchNorm")
    parser.add_argument("--json", default=None, help="write the per-layer figures as JSON")
    parser.add_argument("--plots", default=None, help="folder for PNG figures")
    add_overwrite_flag(parser)
    add_measurement_flags(parser)
    parser.add_argument("--no-universality", action="store_true",
                        help="skip the second pass over the corpus")
    parser.add_argument("--sensitivity", action="store_true",
                        help="also count inactive units at several |gamma| and activation "
                             "thresholds and ReDo's dormancy tau (one more pass)")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:

    plan = output_plan(args)
    json_path = plan.file(args.json, "--json")
    weights = weights_file(args)
    if weights is not None:
        return analyze_weights_only(args, weights, json_path)
    plots = plan.figures(args.plots, "--plots")
    device = resolve_device(args.device)
    source = open_source(args, device, need_data=args.criterion != "gamma")
    print(source.description)
    report = analyze(source.model, source.corpus,
                     criterion=criterion_for(args, source, with_gamma="both"),
                     gamma_threshold=args.gamma_threshold,
                     activation_threshold=args.activation_threshold,
                     universality=not args.no_universality, units=units_for(args, source))
    if source.harvest:  # the filters it harvested while training count as dead
        from implicit_sparsity.study.evaluation import count_harvested
        from implicit_sparsity.train import TrainConfig
        from implicit_sparsity.train.restore import build_model_for

        count_harvested(report, source.harvest,
                        build_model_for(TrainConfig.from_dict(source.config)),
                        units_for(args, source))
    print(report.table())

    table = None
    if args.sensitivity:

        table = sensitivity(source.model, source.corpus, units=units_for(args, source))
        print("sensitivity to the thresholds (units counted per layer):")
        print(sensitivity_table(table))
    if json_path:
        dump_json(json_path, {"source": str(args.path or args.model), "epoch": source.epoch,
                              "config": source.config, **report.to_dict(),
                              **({"sensitivity": sensitivity_json(table)} if table else {})})
        print(f"wrote {json_path}")
    if plots:

        plots.mkdir(parents=True, exist_ok=True)
        written = [plot_layer_sparsity(report, plots / "layer_sparsity.png")]
        if any(l.universality is not None for l in report.layers):
            written.append(plot_universality(report, plots / "universality.png"))
        history = load_bn_history(source.run_dir) if source.run_dir else {}
        if history:
            written.append(plot_bn_history(history, plots / "gamma_beta_history.png",
                                           title=source.description))
        for path in written:
            print(f"wrote {path}")
    return 0


def weights_file(args) -> dict | None:
    """The tensors of `analyze FILE` when FILE is a weights file that is not ours (a state
    dict, a checkpoint holding one, `.safetensors`, a Hugging Face folder) and no --model is
    given; else None."""
    if args.model is not None or args.path is None or not (
            Path(args.path).is_file() or is_huggingface_folder(args.path)):
        return None
    try:
        saved = read_weights(args.path, "analyze")  # weights_only: never code from a file
    except ImplicitSparsityError:
        return None  # unreadable: the run / checkpoint path below says why in its words
    if isinstance(saved, dict) and ({"config", "model", "epoch"} <= set(saved)
                                    or str(saved.get("format", "")).startswith(
                                        "implicit-sparsity")):
        return None  # a checkpoint or slim model of ours: measured as one
    return tensors_of(saved, args.path, "analyze")


def analyze_weights_only(args, state: dict, json_path) -> int:
    """Sparsity by |gamma| from the tensors alone (measure.weights_only)."""
    refused = [flag for flag, given in (("--criterion activation / both", args.criterion
                                         not in (None, "gamma")),
                                        ("--plots", args.plots), ("--sensitivity",
                                                                  args.sensitivity),
                                        ("--data", args.data)) if given]
    if refused:
        raise ConfigError(f"{args.path} holds weights only: {refused[0]} needs the model "
                          "(--model MODULE:FUNCTION --weights FILE)")
    report = weights_only_report(state, args.gamma_threshold)
    if not report.layers:
        raise ConfigError(f"{args.path}: no BatchNorm layer among its {report.tensors} tensors "
                          "(weight, bias, running_mean, running_var of one length), so no "
                          "sparsity by |gamma|; give the model and data for sparsity by "
                          "activation")
    print(f"{args.path}: {report.tensors} tensors, {len(report.layers)} BatchNorm layers "
          f"(weights only)")
    print(report.table())
    if json_path:
        dump_json(json_path, {"source": str(args.path), **report.to_dict()})
        print(f"wrote {json_path}")
    return 0
