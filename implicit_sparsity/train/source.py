"""What `analyze` and `prune` work on: a run of ours (its model, rebuilt from its config,
and its data) or a user's own model with the user's data, each checked once at the door
(`models.check`) before anything is measured."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from implicit_sparsity.data.user import load_user_data
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.measure.features import CONV_UNITS, UNIT_CHOICES, has_gamma, trace_features
from implicit_sparsity.models import get_model_entry
from implicit_sparsity.models.check import check_something_to_measure, check_user_model
from implicit_sparsity.models.user import load_user_model
from implicit_sparsity.train.restore import load_trained, load_training_data


@dataclass
class Source:
    model: nn.Module
    description: str
    corpus: Callable | None  # returns the training batches afresh, or None
    test: list | None        # batches for the proof
    config: dict | None      # our run's config (None for a user's model)
    run_dir: Path | None
    epoch: int | None = None
    name: str = ""           # how errors name it (the path or the factory)
    harvest: dict | None = None  # a run that harvested while training: what it removed


def open_run(path: str | Path, device: torch.device, *, with_data: bool,
             data_dir: str | None = None, batch_size: int = 500) -> Source:
    """A run folder or checkpoint of ours, with its training and test data if asked."""
    run = load_trained(path, device)
    corpus = test = None
    c = run.config
    description = (f"{c.model} (width {c.width}) trained on {c.dataset} with "
                   f"{c.optimizer} + {c.regularizer} {c.lam:g}, epoch {run.epoch}")
    if run.harvest:
        removed = sum(w - len(run.harvest["channels"][n]) for n, w in
                      run.harvest["widths"].items())
        description += (f"; {removed} dead filters harvested while training (counted as "
                        "dead, at the original widths)")
    if with_data:
        data = load_training_data(run, device, data_dir)

        def corpus():
            return data.train_eval_batches(batch_size)
        test = list(data.test_batches(batch_size))
        description += f"; {data.num_train} training / {data.num_test} test images"
    return Source(run.model, description, corpus, test, c.to_dict(), run.run_dir, run.epoch,
                  str(path), run.harvest)


def open_user_model(factory: str, device: torch.device, *, weights: str | None = None,
                    arguments: dict | None = None, data: str | None = None,
                    check_data: str | None = None, need_data: bool = False,
                    **data_options) -> Source:
    """A user's model from its factory (and weights), with the user's data: `data_options`
    are those of `load_user_data` (batch_size, size, mean, std, channels)."""
    if need_data and data is None:
        raise ConfigError("--model needs --data (its training images) for this")
    model = load_user_model(factory, weights, arguments).to(device)
    description = f"{type(model).__name__} from {factory}"
    if data is None:
        return Source(model, description, None, None, None, None, name=factory)

    def batches_of(path):
        return [(x.to(device), None if y is None else y.to(device))
                for x, y in load_user_data(path, **data_options)]
    batches = batches_of(data)
    test = batches_of(check_data) if check_data else batches
    description += f"; {sum(len(x) for x, _ in batches)} images from {data}"
    check_user_model(model, batches, factory, data)
    if test is not batches:
        check_user_model(model, test, factory, check_data)
    return Source(model, description, lambda: iter(batches), test, None, None, name=factory)


def units_for(source: Source, asked: str | None) -> tuple[str, ...]:
    """The unit kinds asked (a key of UNIT_CHOICES), else those our run's model is measured
    on (MLP units for the ViT), else conv filters."""
    if asked is not None:
        return UNIT_CHOICES[asked]
    if source.config is not None:
        return get_model_entry(source.config["model"]).units
    return CONV_UNITS


def choose_criterion(source: Source, units: tuple[str, ...], asked: str | None,
                     with_gamma: str, say=print) -> str:
    """The criterion asked, else `with_gamma` for a model with BatchNorm scales and
    "activation" (said) for one without (a Transformer, a GroupNorm net). Refuses a model
    with nothing to measure; says first which convolutions cannot be measured, if any."""
    traced = trace_features(source.model, units)
    check_something_to_measure(traced, units, source.name)
    note = traced.describe_unmeasured()
    if note:
        say(note)
    if asked is not None:
        return asked
    if has_gamma(traced.features):
        return with_gamma
    say("no BatchNorm scale to measure: by activation")
    return "activation"
