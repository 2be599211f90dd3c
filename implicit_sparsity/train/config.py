"""The configuration of one training run: defaults from the paper, validation, YAML I/O.

A config is checked completely before any work starts; every error is one clear line.
`resolved()` turns paper defaults (learning rate, schedule, hyper-parameters) into
explicit values, and that resolved config is what a run folder records.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from implicit_sparsity import defaults
from implicit_sparsity.data.registry import get_dataset_entry
from implicit_sparsity.errors import ConfigError, first_line
from implicit_sparsity.io import atomic_write_text
from implicit_sparsity.io.files import require_regular_file
from implicit_sparsity.io.yaml_text import load_yaml_file
from implicit_sparsity.models.registry import get_model_entry, parse_width
from implicit_sparsity.optim.optimizers import (
    NOT_EDITABLE,
    SCHEDULE_FREE,
    build_optimizer,
    default_lr,
    resolve_hyperparameters,
)
from implicit_sparsity.optim.regularization import check_regularizer
from implicit_sparsity.optim.schedule import StepSchedule, same_iterations_epochs

CAPTURE_MODES = ("auto", "off", "cuda-graph", "compile")  # how a training step runs (train.capture)
HARVEST_CRITERIA = ("gamma", "activation")  # what makes a filter dead for train.harvest


def _field(default=dataclasses.MISSING, *, factory=dataclasses.MISSING, pack: bool = False,
           neutral: bool = False, later: bool = False):
    """A TrainConfig field and what the toolkit needs to know of it, in one place:
    `pack`: runs trained as one packed model must share it; `neutral`: it changes where or
    how fast a run computes, not what (a captured step is checked against the eager one);
    `later`: added after run folders existed, left out of a run's key at its default so
    that earlier sweeps keep their keys."""
    return field(default=default, default_factory=factory,
                 metadata={"pack": pack, "neutral": neutral, "later": later})


@dataclass
class TrainConfig:
    # what is trained, on what
    model: str = _field("basicnet", pack=True)
    # multiplier, or a BasicNet variant like 64-0.5x
    width: str = _field("1", pack=True)
    dataset: str = _field("fashion-mnist", pack=True)
    data_dir: str | None = _field(None, pack=True, neutral=True)
    train_subset: int | None = _field(None, pack=True)  # fixed, seeded subsets for quick runs
    # only the first N classes: a task of graded difficulty
    class_subset: int | None = _field(None, later=True)
    test_subset: int | None = _field(None, pack=True)
    subset_seed: int = _field(0, pack=True)
    # how
    optimizer: str = _field("adam")
    lr: float | None = _field(None)  # None: the paper's base rate for the optimizer
    optimizer_args: dict = _field(factory=dict)  # e.g. {betas: [0.9, 0.999]}
    regularizer: str = _field(defaults.DEFAULT_REGULARIZER)  # none | l2 | wd
    lam: float = _field(defaults.DEFAULT_LAMBDA)
    regularize_bn: bool = _field(True)  # the paper regularizes BN gamma and beta too
    gamma_lr_scale: float = _field(1.0)
    beta_lr_scale: float = _field(1.0)
    # None: the paper's for the data set (40 mostly)
    batch_size: int | None = _field(None, pack=True)
    # stage lengths; None: the paper's for the data set
    epochs: list[int] | None = _field(None, pack=True)
    lr_decay: float = _field(defaults.LR_DECAY_FACTOR, pack=True)
    # scale epochs to keep this batch size's iterations
    same_iterations_as: int | None = _field(None)
    l1_gamma: float = _field(0.0)  # Network Slimming's L1 penalty on BN gamma
    # start from these weights (slim.pt, checkpoint.pt)
    init_from: str | None = _field(None, pack=True)
    # > 0: recycle dormant units every N steps (ReDo)
    recycle_every: int = _field(0, later=True)
    # ... those whose ReDo score is <= this
    recycle_tau: float = _field(defaults.RECYCLE_TAU, later=True)
    # > 0: remove the dead filters from the model being trained every N epochs (train.harvest)
    harvest_every: int = _field(0, later=True)
    # ... dead by |gamma| < gamma_threshold, or by no activation over the training corpus
    harvest_criterion: str = _field("gamma", later=True)
    # CPU: floats below 1.2e-38 count as 0 (train.device)
    flush_denormal: bool = _field(False, pack=True, later=True)
    negative_slope: float = _field(0.0, pack=True)  # > 0: Leaky ReLU
    beta_init: float = _field(defaults.BETA_INIT)
    flip: bool = _field(True, pack=True)
    crop_padding: int = _field(0, pack=True)
    seed: int = _field(0)
    # where and how fast (results do not depend on these)
    device: str = _field("auto", pack=True, neutral=True)
    eval_batch_size: int = _field(500, pack=True, neutral=True)
    num_workers: int = _field(4, neutral=True)
    # GPUs: strict fp32 unless TF32 is asked for
    allow_tf32: bool = _field(False, pack=True)
    # fp32, or bf16 autocast for training steps only
    precision: str = _field("fp32", pack=True)
    # NHWC memory layout (faster convs on many GPUs)
    channels_last: bool = _field(False, pack=True)
    # auto | off | cuda-graph (see train.capture)
    step_capture: str = _field("auto", pack=True, neutral=True)
    # let cuDNN time its algorithms for each shape
    cudnn_benchmark: bool = _field(True, pack=True, neutral=True)
    # what is recorded
    gamma_threshold: float = _field(defaults.GAMMA_THRESHOLD)

    # ---------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Check every field; raise ConfigError with one line naming the problem."""
        get_model_entry(self.model)
        entry = get_dataset_entry(self.dataset)
        parse_width(self.width)
        check_optimizer_args(self.optimizer, self.optimizer_args)
        check_regularizer(self.regularizer, self.lam)
        self._check_numbers(entry)
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.step_capture not in CAPTURE_MODES:
            raise ConfigError(f"step_capture must be one of {', '.join(CAPTURE_MODES)}, "
                              f"got {self.step_capture!r}")
        if self.crop_padding < 0 or self.num_workers < 0:
            raise ConfigError("crop_padding and num_workers must be >= 0")
        # the decay is checked with the paper's stages too: they are made explicit later
        StepSchedule(tuple(self.epochs) if self.epochs is not None else
                     tuple(defaults.DEFAULT_EPOCHS), self.lr_decay)
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if entry.streaming and self.crop_padding:
            raise ConfigError(f"{self.dataset} uses its own crop (resize 256, crop 224); "
                              "crop_padding does not apply")
        return self

    def _check_numbers(self, entry) -> None:
        """Every number in its range (finite, positive where it must be, within the bounds
        of `defaults`)."""
        for name in ("seed", "subset_seed"):
            if not 0 <= getattr(self, name) <= defaults.MAX_SEED:
                raise ConfigError(f"{name} must be in [0, {defaults.MAX_SEED}], got "
                                  f"{getattr(self, name)}")
        if self.batch_size is not None and self.batch_size == 1:
            raise ConfigError("batch_size must be >= 2: BatchNorm cannot normalize a batch of "
                              "one sample in training")
        if self.epochs is not None and sum(self.epochs) > defaults.MAX_EPOCHS:
            raise ConfigError(f"epochs {self.epochs}: more than {defaults.MAX_EPOCHS:,} in all "
                              "(implicit_sparsity.defaults.MAX_EPOCHS)")
        if self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.class_subset is not None and not 2 <= self.class_subset <= entry.num_classes:
            raise ConfigError(f"class_subset must be in [2, {entry.num_classes}] for "
                              f"{self.dataset}, got {self.class_subset}")
        if self.class_subset is not None and entry.streaming:
            raise ConfigError(f"class_subset does not apply to {self.dataset} (streamed)")
        for name in ("batch_size", "train_subset", "test_subset", "same_iterations_as"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 when given, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr}")
        for name in ("lam", "lr_decay", "beta_init"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise ConfigError(f"init_from: no file {self.init_from}")
        for name in ("gamma_lr_scale", "beta_lr_scale", "negative_slope", "gamma_threshold",
                     "l1_gamma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):  # NaN compares false: refuse it
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        if self.recycle_every < 0:
            raise ConfigError(f"recycle_every must be >= 0 steps (0: off), got "
                              f"{self.recycle_every}")
        if not (math.isfinite(self.recycle_tau) and 0.0 <= self.recycle_tau < 1.0):
            raise ConfigError(f"recycle_tau must be in [0, 1), got {self.recycle_tau}")
        if self.harvest_every < 0:
            raise ConfigError(f"harvest_every must be >= 0 epochs (0: off), got "
                              f"{self.harvest_every}")
        if self.harvest_criterion not in HARVEST_CRITERIA:
            raise ConfigError(f"harvest_criterion must be one of {', '.join(HARVEST_CRITERIA)}, "
                              f"got {self.harvest_criterion!r}")
        if self.harvest_every and self.recycle_every:
            raise ConfigError("harvest_every and recycle_every: a run either removes its dead "
                              "filters or recycles them, not both")
        self._check_optimizer_fits()

    def _check_optimizer_fits(self) -> None:
        """What Muon and schedule-free optimizers cannot do, refused before any work."""
        name = self.optimizer
        if name in NOT_EDITABLE and (self.harvest_every or self.recycle_every):
            raise ConfigError(f"{name} keeps state that cannot follow a harvest or recycling "
                              "in training (its own copies of the weights or iterates); "
                              "prune after training instead")
        if name not in SCHEDULE_FREE:
            return
        one_stage = self.epochs is not None and sum(1 for e in self.epochs if e) == 1
        if not one_stage and self.lr_decay != 1:
            raise ConfigError(f"{name} replaces the learning-rate schedule: give epochs as one "
                              f"stage (epochs: [N]) or a constant rate (lr_decay: 1), got "
                              f"epochs {self.epochs or 'the paper schedule'}, lr_decay "
                              f"{self.lr_decay:g}")
        if self.regularizer == "wd":
            raise ConfigError(f"{name} keeps two iterates and is evaluated at a third: the "
                              "paper's WD (one iterate scaled after the step) is not defined "
                              "for it; use decoupled (its own weight decay) or l2")

    def resolved(self) -> "TrainConfig":
        """A validated copy with every paper default made explicit."""
        self.validate()
        entry = get_dataset_entry(self.dataset)
        schedule = defaults.PAPER_SCHEDULES[self._schedule_key(entry.schedule)]
        epochs = list(self.epochs) if self.epochs is not None else list(schedule["epochs"])
        batch_size = self.batch_size if self.batch_size is not None else schedule["batch_size"]
        if self.same_iterations_as is not None:
            epochs = list(same_iterations_epochs(epochs, batch_size, self.same_iterations_as))
        hyper = resolve_hyperparameters(self.optimizer, self.optimizer_args)
        return dataclasses.replace(
            self, width=str(self.width),
            lr=float(self.lr) if self.lr is not None else default_lr(self.optimizer, self.dataset),
            optimizer_args={k: list(v) if isinstance(v, tuple) else v for k, v in hyper.items()},
            epochs=epochs, batch_size=batch_size, same_iterations_as=None)

    def _schedule_key(self, family: str) -> str:
        if family == "imagenet-basicnet" and self.model in ("vgg11", "vgg16"):
            return f"imagenet-{self.model}"
        return family

    # ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from plain values (YAML or flags), coercing types; unknown keys fail."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: "
                              f"{', '.join(known)}")
        return cls(**{k: _coerce(k, v) for k, v in values.items()})

    def save_yaml(self, path: Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


#: Derived from the fields' metadata (`_field`): what a run computes does not depend on
#: these (RESULT_NEUTRAL_FIELDS); packed runs share these (PACK_FIELDS); these were added
#: after run folders existed and are left out of a run's key at their default.
RESULT_NEUTRAL_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                              if f.metadata["neutral"])
PACK_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["pack"])
LATER_FIELDS_AT_DEFAULT = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                           if f.metadata["later"]}


def result_fields(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in RESULT_NEUTRAL_FIELDS}


def key_fields(config: TrainConfig) -> dict[str, Any]:
    """What a run's key (a sweep's folder name) is made of."""
    return {k: v for k, v in result_fields(config).items()
            if k not in LATER_FIELDS_AT_DEFAULT or v != LATER_FIELDS_AT_DEFAULT[k]}


def field_type(name: str) -> tuple[Any, bool]:
    """A TrainConfig field's type from its annotation: (bool, int, float, str, list or
    dict; whether None is allowed). The one source the YAML reader and the CLI flags use."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    return typing.get_origin(hint) or hint, optional


_HINTS = typing.get_type_hints(TrainConfig)
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _coerce(name: str, value: Any) -> Any:
    """A value from YAML or a flag as the field's type (YAML reads `1e-4` as a string, flags
    are strings); one ConfigError line when it is not of that type."""
    kind, optional = field_type(name)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be empty")
    try:
        return _as(kind, value)
    except (TypeError, ValueError, OverflowError):
        expected = getattr(kind, "__name__", str(kind)) + (" or empty" if optional else "")
        raise ConfigError(f"{name}: cannot read {value!r} as {expected}") from None


def _as(kind, value):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).lower() in _TRUE + _FALSE:
            return str(value).lower() in _TRUE
        raise ValueError(value)
    if kind is list:  # [10, 5], or "10 5" / "10,5" from a flag, or one number
        if isinstance(value, (bool, dict)):
            raise TypeError(value)
        items = value if isinstance(value, list) else str(value).replace(",", " ").split()
        return [_as(int, v) for v in items]
    if isinstance(value, bool) or isinstance(value, (list, dict)) != (kind is dict):
        raise TypeError(value)  # a flag where a number goes, a list where text goes, ...
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if kind is float:
        return float(value)
    if kind is dict:
        return dict(value)
    return str(value)


def check_optimizer_args(name: str, args: dict | None) -> None:
    """Refuse hyper-parameters that the optimizer itself would refuse, before any data is
    loaded or folder made: build it once on a dummy parameter."""

    hyper = resolve_hyperparameters(name, args)
    try:
        build_optimizer(name, [{"params": [torch.zeros(1, requires_grad=True)], "lr": 1e-3}],
                        hyper)
    except (TypeError, ValueError, IndexError) as error:
        raise ConfigError(f"optimizer_args {args}: {name} refuses them "
                          f"({first_line(error)})"
                          ) from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config (safe, no key twice); one clear error if that is not possible."""
    path = Path(path)
    require_regular_file(path, "config")
    values = load_yaml_file(path, "config")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    return values
