"""The optimizers the paper compares, built with its base learning rates and hyper-parameters,
and today's (AdamW, NAdam, RAdam, Adafactor from PyTorch; Muon from PyTorch on the hidden
weight matrices with AdamW on the rest, as its authors use it (optim.muon); Lion from the
lion-pytorch package, the reference implementation its authors point to; schedule-free
AdamW from the schedulefree package, its authors' own), with their authors' defaults.

Regularization is never passed to an optimizer's own `weight_decay`: it is applied by
`implicit_sparsity.optim.regularization`, where L2, WD and decoupled WD are defined once
(AdamW with the "decoupled" regularizer is torch's AdamW).
"""

from __future__ import annotations

import importlib
import inspect
import math

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.optim.muon import MuonWithAdamW

OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "amsgrad": torch.optim.Adam,  # with amsgrad=True
    "adamax": torch.optim.Adamax,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    # beyond the paper
    "adamw": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "adafactor": torch.optim.Adafactor,
    "muon": MuonWithAdamW,
}
#: Optimizers from packages other than PyTorch: name -> (module, class, pip package).
PACKAGED = {"lion": ("lion_pytorch", "Lion", "lion-pytorch"),
            "adamw-schedulefree": ("schedulefree", "AdamWScheduleFree", "schedulefree")}
OPTIMIZERS = tuple(OPTIMIZER_CLASSES) + tuple(PACKAGED)
#: Those without a multi-tensor (`foreach`) implementation to ask for.
NO_FOREACH = {"lion", "muon"}
#: Schedule-free optimizers: they replace the learning-rate schedule by an average of their
#: iterates, are switched between the point they take gradients at (`train()`) and the one
#: they are evaluated at (`eval()`), and apply decoupled weight decay themselves, at the
#: gradient point inside their update (their authors' definition).
SCHEDULE_FREE = {"adamw-schedulefree"}
#: Optimizers whose state cannot follow a change of the model's shapes or weights in
#: training (harvest, recycling): Muon keeps its own copies of the weights, schedule-free
#: two iterates besides the weights.
NOT_EDITABLE = {"muon", "adamw-schedulefree"}
#: Arguments owned by the toolkit, not settable as optimizer hyper-parameters.
_RESERVED = {"self", "params", "lr", "weight_decay", "amsgrad", "maximize", "foreach",
             "capturable", "differentiable", "fused", "decoupled_weight_decay", "use_triton"}


def check_optimizer_name(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class of optimizer `name`; one line naming the package when it is missing."""
    check_optimizer_name(name)
    if name in OPTIMIZER_CLASSES:
        return OPTIMIZER_CLASSES[name]
    module, cls, package = PACKAGED[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError:
        raise ConfigError(f"optimizer {name} needs the package {package} (pip install "
                          f"{package}, or 'implicit-sparsity[optimizers]')") from None


def settable_hyperparameters(name: str) -> list[str]:
    signature = inspect.signature(optimizer_class(name).__init__)
    return sorted(set(signature.parameters) - _RESERVED)


def resolve_hyperparameters(name: str, overrides: dict | None = None) -> dict:
    """The paper's hyper-parameters of an optimizer (learning rate excluded), with overrides."""
    check_optimizer_name(name)
    values = {k: v for k, v in defaults.OPTIMIZER_DEFAULTS[name].items() if k != "lr"}
    allowed = settable_hyperparameters(name)
    for key, value in (overrides or {}).items():
        if key not in allowed:
            raise ConfigError(f"optimizer {name} has no hyper-parameter {key!r}; "
                              f"valid: {', '.join(allowed)}")
        values[key] = _typed_hyperparameter(name, key, value)
    return values


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _typed_hyperparameter(name: str, key: str, value):
    """`value` of the type of torch's default for `key` (a number, a flag, a tuple of
    numbers of the same length); one line when it is not."""
    default = inspect.signature(optimizer_class(name).__init__).parameters[key].default
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, tuple):
        ok = (isinstance(value, (list, tuple)) and len(value) == len(default)
              and all(_is_number(v) for v in value))
        expected = f"a list of {len(default)} numbers"
        value = tuple(value) if ok else value
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a name"
    else:
        ok, expected = _is_number(value), "a finite number"
    if not ok:
        raise ConfigError(f"optimizer_args {key}: expected {expected} for {name}, got {value!r}")
    return value


def default_lr(name: str, dataset: str | None = None) -> float:
    """The paper's base learning rate for an optimizer (Adam uses 1e-4 on ImageNet)."""
    check_optimizer_name(name)
    if dataset == "imagenet" and name == "adam":
        return defaults.IMAGENET_ADAM_LR
    return defaults.OPTIMIZER_DEFAULTS[name]["lr"]


def is_batchnorm_param(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def param_groups(model: nn.Module, lr: float, gamma_lr_scale: float = 1.0,
                 beta_lr_scale: float = 1.0) -> list[dict]:
    """Three groups: BatchNorm gamma, BatchNorm beta, everything else, each with its own
    learning-rate scale (supplement Table 3). Empty groups are left out."""
    gammas, betas = [], []
    for module in model.modules():
        if is_batchnorm_param(module) and module.affine:
            gammas.append(module.weight)
            betas.append(module.bias)
    special = {id(p) for p in gammas + betas}
    others = [p for p in model.parameters() if id(p) not in special]
    groups = [("weights", others, 1.0), ("bn_gamma", gammas, gamma_lr_scale),
              ("bn_beta", betas, beta_lr_scale)]
    return [{"params": params, "lr": lr * scale, "lr_scale": scale, "name": name}
            for name, params, scale in groups if params]


def build_optimizer(name: str, groups: list[dict], hyperparameters: dict,
                    own_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer with the paper's hyper-parameters and no weight decay of its own (L2 and
    WD are ours: optim.regularization). The multi-tensor (`foreach`) implementation computes
    the same update as the per-tensor one in a few kernels a step instead of a few per
    parameter; PyTorch picks it by default on GPUs only, so it is asked for here.
    `own_decay` is the decoupled weight decay of a schedule-free optimizer (its own)."""
    extra = {"amsgrad": True} if name == "amsgrad" else {}
    if name not in NO_FOREACH:
        extra["foreach"] = True
    if own_decay and name not in SCHEDULE_FREE:
        raise ConfigError(f"{name} takes its weight decay from optim.regularization")
    return optimizer_class(name)(groups, weight_decay=own_decay, **extra, **hyperparameters)


def own_decoupled_decay(name: str, regularizer: str, lam: float) -> float:
    """The weight decay an optimizer applies itself: decoupled decay of a schedule-free
    one; 0 otherwise (the toolkit's Regularizer applies it)."""
    return float(lam) if name in SCHEDULE_FREE and regularizer == "decoupled" else 0.0


def decoupled_rates(optimizer: torch.optim.Optimizer, run_lr: float):
    """The base rate(s) decoupled weight decay is scaled by: the run's, or one per parameter
    where the optimizer steps parameters at different rates (Muon with AdamW)."""
    if isinstance(optimizer, MuonWithAdamW):
        return optimizer.base_rates(run_lr)
    return run_lr


def edits_refused(optimizer: torch.optim.Optimizer | None) -> str | None:
    """Why `optimizer`'s state cannot follow an edit of the model (a harvest), or None."""
    if isinstance(optimizer, MuonWithAdamW):
        return "Muon keeps its own 2-D copies of the weights, which a cut cannot follow"
    if is_schedule_free(optimizer):
        return "a schedule-free optimizer keeps iterates besides the weights (not supported)"
    return None


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer).__module__.split(".")[0] == "schedulefree"


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, batches) -> int:
    """Set every BatchNorm's running mean and variance to the average over `batches` (the
    model's own forward passes in train mode, no gradients), as a schedule-free optimizer's
    evaluation point needs; returns how many batches it saw. The modes and momenta are
    restored; no parameter changes."""
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch counts alike
    seen = 0
    try:
        model.train()
        for x, _ in batches:
            model(x)
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    return seen


def set_mode(optimizer: torch.optim.Optimizer, training: bool) -> None:
    """Put a schedule-free optimizer's parameters at its gradient point (training) or its
    evaluation point; nothing for other optimizers."""
    switch = getattr(optimizer, "train" if training else "eval", None)
    if callable(switch):
        switch()
