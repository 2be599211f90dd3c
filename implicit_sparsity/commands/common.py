"""What several subcommands share: argument types that refuse bad values in one line, the
config flags of TrainConfig, `--set KEY=VALUE` overrides, checks of output paths."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

import yaml

from implicit_sparsity.errors import ConfigError


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


def share(text: str) -> float:
    """A share of filters to remove: in [0, 1)."""
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value:g}")
    return value


def yaml_mapping(text: str) -> dict:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping like '{{betas: [0.9, 0.999]}}'"
                                         f", got {text!r}")
    return value


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (`--train-subset` for train_subset); unset flags keep
    the config file's value or the default. Values are checked by TrainConfig.resolved()."""
    from implicit_sparsity.train.config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.type.startswith("bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.type.startswith("list"):
            kwargs["nargs"] = "+"
        elif f.type.startswith("dict"):
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
        try:
            values[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{pair!r}: the value is not valid YAML") from None
    return values


def writable_file(path: str | None, flag: str) -> Path | None:
    """Check, before any work, that a file can be written at `path` (its folder exists, is
    writable, and `path` is not a folder)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {path}: folder {parent} is not writable")
    return path


def writable_folder(path: str | None, flag: str) -> Path | None:
    """Check, before any work, that a folder can be made or written at `path`."""
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"{flag} {path}: {probe} is not writable")
    return path


def dump_json(path: Path, payload) -> None:
    import json

    from implicit_sparsity.io import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=1))
