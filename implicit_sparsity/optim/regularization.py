"""L2 regularization and weight decay, exactly as the paper defines them (section 2.1).

- L2: `lambda * theta` is added to the gradient of the main objective, and the optimizer's
  update is computed from that sum (so adaptive optimizers rescale it).
- WD: after the optimizer's update from the main objective's gradient alone,
  `theta <- theta * (1 - lambda_t)`, with `lambda_t = lambda * lr_t / lr_0`: the decay follows
  the learning-rate schedule (Table 1 caption). This is not AdamW, which multiplies by
  `1 - lr * wd` before its step.
- decoupled (beyond the paper): AdamW's decoupled weight decay, `theta <- theta - lr_t *
  lambda * theta` before the optimizer's update (torch's AdamW order), with `lr_t` the run's
  base rate times the schedule (the gamma / beta learning-rate scales are not applied to
  it). It differs from the paper's WD by the factor lr_0: AdamW's lambda 0.05 at lr 1e-3 is
  the paper's WD at 5e-5, applied before the update instead of after it.

Both act on every parameter, BatchNorm gamma and beta included, unless BN is excluded.

- Network Slimming's L1 penalty (Liu et al. 2017), a training regularizer of the explicit
  method the paper compares with: `s * sum |gamma|` over every conv BatchNorm scale; its
  subgradient `s * sign(gamma)` is added to gamma's gradient before the optimizer's step.
"""

from __future__ import annotations

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError


def check_regularizer(kind: str, lam) -> None:
    if kind not in defaults.REGULARIZERS:
        raise ConfigError(f"unknown regularizer {kind!r}; valid regularizers: "
                          f"{', '.join(defaults.REGULARIZERS)}")
    values = lam.flatten().tolist() if isinstance(lam, torch.Tensor) else [float(lam)]
    if not all(0.0 <= v < 1.0 for v in values):
        raise ConfigError(f"lambda must be in [0, 1), got {lam}")


class Regularizer:
    """Applies `kind` (none | l2 | wd | decoupled) with strength `lam` to `params` around each
    step; `lr` (the base learning rate) is needed by decoupled weight decay only: one rate, or
    one per parameter id where the optimizer steps parameters at different rates (Muon's
    matrices and AdamW's rest).

    `lam` is a number, or a tensor of one lambda per element for a single parameter (the
    low-gradient simulation runs many lambdas side by side that way)."""

    def __init__(self, kind: str, lam, params, lr: float | dict[int, float] | None = None):
        check_regularizer(kind, lam)
        if kind == "decoupled" and lr is None:
            raise ConfigError("decoupled weight decay needs the base learning rate")
        self.kind, self.lr = kind, lr
        self.lam = lam.detach().clone() if isinstance(lam, torch.Tensor) else float(lam)
        self.params = [p for p in params if p.requires_grad]
        if isinstance(self.lam, torch.Tensor) and any(
                p.shape != self.lam.shape for p in self.params):
            raise ConfigError("a tensor of lambdas needs one parameter of the same shape")
        self.rate_groups: list[tuple[float, list]] = []  # decoupled: (base rate, parameters)
        if kind == "decoupled":
            rates = lr if isinstance(lr, dict) else {id(p): lr for p in self.params}
            for rate in sorted({rates[id(p)] for p in self.params}):
                self.rate_groups.append(
                    (rate, [p for p in self.params if rates[id(p)] == rate]))

    @property
    def active(self) -> bool:
        if self.kind == "none":
            return False
        return bool((self.lam > 0).any()) if isinstance(self.lam, torch.Tensor) else self.lam > 0

    @torch.no_grad()
    def before_step(self, schedule_factor: float = 1.0) -> None:
        """L2: grad <- grad + lambda * theta, for the optimizer to use. Decoupled: theta <-
        theta * (1 - lr_0 * lr_t / lr_0 * lambda), before the optimizer's update."""
        if self.kind == "decoupled" and self.active:
            for rate, params in self.rate_groups:
                scale = rate * schedule_factor
                if isinstance(self.lam, torch.Tensor):
                    torch._foreach_mul_(params, [1.0 - self.lam * scale] * len(params))
                else:
                    torch._foreach_mul_(params, 1.0 - self.lam * scale)
            return
        if self.kind != "l2" or not self.active:
            return
        pairs = [(p.grad, p) for p in self.params if p.grad is not None]
        if not pairs:
            return
        grads, params = (list(x) for x in zip(*pairs))
        if isinstance(self.lam, torch.Tensor):
            torch._foreach_addcmul_(grads, params, [self.lam] * len(params))
        else:
            torch._foreach_add_(grads, params, alpha=self.lam)

    @torch.no_grad()
    def after_step(self, schedule_factor: float) -> None:
        """WD: theta <- theta * (1 - lambda * lr_t / lr_0), after the optimizer's update."""
        if self.kind != "wd" or not self.active:
            return
        if isinstance(self.lam, torch.Tensor):
            torch._foreach_mul_(self.params, [1.0 - self.lam * schedule_factor] * len(self.params))
        else:
            torch._foreach_mul_(self.params, 1.0 - self.lam * schedule_factor)


def slimming_gammas(model: nn.Module) -> list[nn.Parameter]:
    """The scales Network Slimming penalizes: those of every affine BatchNorm2d."""
    return [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]


@torch.no_grad()
def add_l1_gradient(gammas, strength: float) -> None:
    """Network Slimming's penalty: gamma.grad += s * sign(gamma), in place."""
    if strength <= 0:
        return
    for gamma in gammas:
        if gamma.grad is not None:
            gamma.grad.add_(torch.sign(gamma), alpha=strength)


def add_l1_gamma_gradient(model: nn.Module, strength: float) -> None:
    """Network Slimming's penalty on every BatchNorm2d scale of `model`."""
    add_l1_gradient(slimming_gammas(model), strength)


class L1GammaPenalty:
    """Network Slimming's L1 penalty with strength `strength` on `gammas`, as a regularizer
    of the same shape as `Regularizer` (the parameter list is made once, not every step)."""

    def __init__(self, strength: float, gammas):
        strength = float(strength)
        if not strength >= 0.0:
            raise ConfigError(f"l1_gamma must be >= 0, got {strength}")
        self.strength = strength
        self.gammas = list(gammas) if strength > 0 else []

    @property
    def active(self) -> bool:
        return self.strength > 0

    def before_step(self, schedule_factor: float = 1.0) -> None:
        add_l1_gradient(self.gammas, self.strength)

    def after_step(self, schedule_factor: float) -> None:
        """Nothing after the step: the penalty acts through the gradient."""


def regularized_step(optimizer: torch.optim.Optimizer, regularizers, schedule_factor: float
                     ) -> None:
    """One optimizer step with the regularizer(s) applied as the paper defines them (a
    `Regularizer`, or a sequence of regularizers applied in order)."""
    if not isinstance(regularizers, (list, tuple)):
        regularizers = (regularizers,)
    for regularizer in regularizers:
        regularizer.before_step(schedule_factor)
    optimizer.step()
    for regularizer in regularizers:
        regularizer.after_step(schedule_factor)
