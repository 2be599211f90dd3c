"""What several subcommands share: argument types that refuse bad values in one line, the
config flags of TrainConfig, `--set KEY=VALUE` overrides, the output plan (`io.outputs`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.io import atomic_write_text
from implicit_sparsity.io.outputs import OutputPlan
from implicit_sparsity.io.yaml_text import parse_yaml
from implicit_sparsity.train.config import TrainConfig, field_type
from implicit_sparsity.train.source import Source, choose_criterion, open_run, open_user_model
from implicit_sparsity.train.source import units_for as units_of


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value:g}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
    return value


def share(text: str) -> float:
    """A share of filters to remove: in [0, 1)."""
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value:g}")
    return value


def yaml_mapping(text: str) -> dict:
    try:
        value = parse_yaml(text, repr(text))
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping like '{{betas: [0.9, 0.999]}}'"
                                         f", got {text!r}")
    return value


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (`--train-subset` for train_subset); unset flags keep
    the config file's value or the default. Values are checked by TrainConfig.resolved()."""

    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS}
        kind, _ = field_type(f.name)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs["nargs"] = "+"
        elif kind is dict:
            kwargs["type"] = yaml_mapping
            kwargs["metavar"] = "YAML"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs["help"] = f"(default: {default})".replace("%", "%%")
        names = [flag] + (["--lambda"] if f.name == "lam" else [])
        parser.add_argument(*names, **kwargs)


def overrides(pairs: list[str] | None) -> dict:
    """`--set KEY=VALUE` pairs as a dict of YAML values."""
    values = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set / --where take KEY=VALUE, got {pair!r}")
        if key.strip() in values:
            raise ConfigError(f"--set / --where: {key.strip()} is given twice")
        values[key.strip()] = parse_yaml(value, f"the value of {pair!r}")
    return values


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file (or slim folder) of the same "
                             "kind; a file that belongs to a run, sweep or slim folder is "
                             "never replaced")


def output_plan(args) -> OutputPlan:
    """The command's outputs, checked by the one output policy (`io.outputs`)."""
    return OutputPlan(overwrite=bool(getattr(args, "overwrite", False)))


def dump_json(path: Path, payload) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1))


# --- what analyze and prune work on: a run of ours, or a user's own model and data --------
def add_model_source_flags(parser: argparse.ArgumentParser) -> None:
    """A run folder / checkpoint (positional), or `--model` with `--weights` and `--data`."""
    parser.add_argument("path", nargs="?", default=None,
                        help="a run folder or checkpoint.pt of ours (or use --model)")
    group = parser.add_argument_group("your own model")
    group.add_argument("--model", default=None, metavar="MODULE:FUNCTION",
                       help="a Python factory returning your nn.Module (e.g. mymodels:resnet)")
    group.add_argument("--model-args", type=yaml_mapping, default=None, metavar="YAML",
                       help="keyword arguments for the factory, e.g. '{num_classes: 10}'")
    group.add_argument("--weights", default=None, help="its state dict (torch.save)")
    group.add_argument("--data", default=None,
                       help="its training images: an image folder (class folders or flat) "
                            "or a tensor file ([N, C, H, W], or {x: ..., y: ...})")
    group.add_argument("--check-data", default=None,
                       help="prune: the data of the proof (default: --data)")
    group.add_argument("--image-size", type=positive_int, default=None,
                       help="resize images to this side")
    group.add_argument("--channels", type=int, choices=(1, 3), default=3)
    group.add_argument("--mean", type=finite_float, nargs="+", default=None)
    group.add_argument("--std", type=finite_float, nargs="+", default=None)


def add_measurement_flags(parser: argparse.ArgumentParser) -> None:
    """Where the data is, on which device, in which batches, with which thresholds."""

    parser.add_argument("--data-dir", default=None, help="where our run's data is now")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=positive_int, default=500)
    parser.add_argument("--gamma-threshold", type=non_negative_float,
                        default=defaults.GAMMA_THRESHOLD)
    parser.add_argument("--activation-threshold", type=non_negative_float,
                        default=defaults.ACTIVATION_THRESHOLD)
    parser.add_argument("--units", choices=("conv", "all", "mlp"), default=None,
                        help="conv: conv filters, as the paper counts; all: also MLP units "
                             "(Linear -> [BatchNorm1d] -> activation, Transformer MLP blocks);"
                             " mlp: MLP units only (default: the model's own, conv for a "
                             "model of yours)")


def open_source(args, device, need_data: bool, need_test: bool = False) -> Source:
    """The model (and data) that `analyze` / `prune` work on, from their flags."""
    if args.model is None and args.path is None:
        raise ConfigError("give a run folder / checkpoint, or --model MODULE:FUNCTION")
    if args.model is not None and args.path is not None:
        raise ConfigError(f"give either a run folder ({args.path}) or --model, not both")
    if args.model is None:
        return open_run(args.path, device, with_data=need_data or need_test,
                        data_dir=args.data_dir, batch_size=args.batch_size)
    return open_user_model(args.model, device, weights=args.weights,
                           arguments=args.model_args, data=args.data,
                           check_data=getattr(args, "check_data", None),
                           need_data=need_data or need_test, batch_size=args.batch_size,
                           size=args.image_size, mean=args.mean, std=args.std,
                           channels=args.channels)


def units_for(args, source: Source) -> tuple[str, ...]:
    return units_of(source, args.units)


def criterion_for(args, source: Source, with_gamma: str) -> str:
    """--criterion as given, else the one the model allows (`train.source.choose_criterion`)."""
    return choose_criterion(source, units_for(args, source), args.criterion, with_gamma)
