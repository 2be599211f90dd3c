"""L2 regularization and weight decay, exactly as the paper defines them (section 2.1).

- L2: `lambda * theta` is added to the gradient of the main objective, and the optimizer's
  update is computed from that sum (so adaptive optimizers rescale it).
- WD: after the optimizer's update from the main objective's gradient alone,
  `theta <- theta * (1 - lambda_t)`, with `lambda_t = lambda * lr_t / lr_0`: the decay follows
  the learning-rate schedule (Table 1 caption). This is not AdamW, which multiplies by
  `1 - lr * wd` before its step.

Both act on every parameter, BatchNorm gamma and beta included, unless BN is excluded.
"""

from __future__ import annotations

import torch

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
    """Applies `kind` (none | l2 | wd) with strength `lam` to `params` around each step.

    `lam` is a number, or a tensor of one lambda per element for a single parameter (the
    low-gradient simulation runs many lambdas side by side that way)."""

    def __init__(self, kind: str, lam, params):
        check_regularizer(kind, lam)
        self.kind = kind
        self.lam = lam.detach().clone() if isinstance(lam, torch.Tensor) else float(lam)
        self.params = [p for p in params if p.requires_grad]
        if isinstance(self.lam, torch.Tensor) and any(
                p.shape != self.lam.shape for p in self.params):
            raise ConfigError("a tensor of lambdas needs one parameter of the same shape")

    @property
    def active(self) -> bool:
        if self.kind == "none":
            return False
        return bool((self.lam > 0).any()) if isinstance(self.lam, torch.Tensor) else self.lam > 0

    @torch.no_grad()
    def before_step(self) -> None:
        """L2: grad <- grad + lambda * theta, for the optimizer to use."""
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


def regularized_step(optimizer: torch.optim.Optimizer, regularizer: Regularizer,
                     schedule_factor: float) -> None:
    """One optimizer step with the regularizer applied as the paper defines it."""
    regularizer.before_step()
    optimizer.step()
    regularizer.after_step(schedule_factor)
