"""The optimizers the paper compares, built with its base learning rates and hyper-parameters,
and today's (AdamW, NAdam, RAdam, Adafactor from PyTorch; Lion from the lion-pytorch
package, the reference implementation its authors point to), with their authors' defaults.

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
}
#: Optimizers from packages other than PyTorch: name -> (module, class, pip package).
PACKAGED = {"lion": ("lion_pytorch", "Lion", "lion-pytorch")}
OPTIMIZERS = tuple(OPTIMIZER_CLASSES) + tuple(PACKAGED)
#: Those without a multi-tensor (`foreach`) implementation to ask for.
NO_FOREACH = {"lion"}
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


def build_optimizer(name: str, groups: list[dict], hyperparameters: dict
                    ) -> torch.optim.Optimizer:
    """The optimizer with the paper's hyper-parameters and no weight decay of its own (L2 and
    WD are ours: optim.regularization). The multi-tensor (`foreach`) implementation computes
    the same update as the per-tensor one in a few kernels a step instead of a few per
    parameter; PyTorch picks it by default on GPUs only, so it is asked for here."""
    extra = {"amsgrad": True} if name == "amsgrad" else {}
    if name not in NO_FOREACH:
        extra["foreach"] = True
    return optimizer_class(name)(groups, weight_decay=0.0, **extra, **hyperparameters)
