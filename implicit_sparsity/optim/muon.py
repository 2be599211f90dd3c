"""Muon the way its authors use it on a CNN: torch's `Muon` for the hidden weight matrices,
AdamW for everything else.

Muon (Jordan et al. 2024) orthogonalizes the momentum of a 2-D weight by Newton-Schulz
iterations; torch 2.13's `torch.optim.Muon` takes 2-D parameters only. Its authors advise,
for a ConvNet, Muon on every convolution's filters except the first layer's, each viewed as
an (out, in * kh * kw) matrix, and AdamW on the rest: the input layer, the classifier head,
and every gain and bias (BatchNorm's gamma and beta among them). Here "hidden" is every
parameter of two or more dimensions except the first and the last of them in the model's
order (the input convolution and the head).

`MuonWithAdamW` keeps one 2-D copy of each hidden weight for torch's Muon: at each step the
weight and its gradient are copied in, torch's Muon steps the copy, and the result is copied
back (so any memory format of the weight works, and the update is torch's own). Its learning
rate is the run's rate (Muon's 0.02 by default); AdamW's is `adamw_lr` (3e-4), and both
follow the run's schedule and the gamma / beta rate scales. Regularization is not theirs
(optim.regularization): `weight_decay` must stay 0.

Newton-Schulz runs in bfloat16 in torch's Muon (and its authors'), which GPUs multiply
fast. `ns_dtype="float32"` runs the same iteration in float32 (`Float32Muon`): the same update
without bfloat16's rounding (about 1e-2 of its size, against 1e-6), for a study of the
iteration itself or a CPU without bfloat16 units. On this project's AVX2 CPUs it saves little
(`benchmarks/optimizer_step.py`: a BasicNet step 1.05x faster at width 0.125).
"""

from __future__ import annotations

import math

import torch

from implicit_sparsity.errors import ConfigError


def hidden_matrices(params: list[torch.Tensor]) -> set[int]:
    """ids of the parameters Muon updates: those of two or more dimensions, except the
    first (the input layer) and the last (the head)."""
    matrices = [p for p in params if p.dim() >= 2]
    return {id(p) for p in matrices[1:-1]}


#: The dtypes Newton-Schulz may run in, by the name a spec gives.
NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
#: Muon's rate adjustments by the shape (A, B) of a matrix: Jordan et al.'s
#: sqrt(max(1, A / B)), and Moonshot's 0.2 sqrt(max(A, B)) that matches AdamW's update RMS.
ADJUST_LR_FNS = ("original", "match_rms_adamw")


def adjusted_rate(lr: float, adjust_lr_fn: str, shape: torch.Size) -> float:
    """The rate Muon steps an (A, B) matrix at (torch's `adjust_lr_fn`)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


def newton_schulz(matrix: torch.Tensor, coefficients: tuple[float, float, float],
                  steps: int, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """Muon's orthogonalization as torch's Muon computes it, in `dtype`: X = G / ||G||_F on
    the wide side, then `steps` times X <- a X + (b A + c A^2) X with A = X X^T."""
    a, b, c = coefficients
    x = matrix.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Float32Muon(torch.optim.Muon):
    """torch's Muon with its Newton-Schulz in float32: the same groups, state (one momentum
    buffer a matrix) and step, so checkpoints of either load into the other."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"],
                                       group["eps"], torch.float32)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-adjusted_rate(group["lr"], group["adjust_lr_fn"] or
                                                    "original", p.shape))
        return loss


def _index(groups: list[dict], group: dict) -> int | None:
    return next((i for i, g in enumerate(groups) if g is group), None)


class MuonWithAdamW(torch.optim.Optimizer):
    """torch's Muon on the hidden weight matrices (viewed as out x fan-in; `Float32Muon` with
    ns_dtype "float32"), torch's AdamW on the other parameters, in the caller's groups."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5,
                 ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                 eps: float = 1e-7, adjust_lr_fn: str = "original", ns_dtype: str = "bfloat16",
                 adamw_lr: float = 3e-4, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-8, weight_decay: float = 0.0):
        if weight_decay:
            raise ConfigError("muon: regularization is the toolkit's (regularizer / lam), "
                              "not the optimizer's weight_decay")
        if ns_dtype not in NS_DTYPES:
            raise ConfigError(f"muon: ns_dtype must be one of {', '.join(NS_DTYPES)}, "
                              f"got {ns_dtype!r}")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ConfigError(f"muon: adjust_lr_fn must be one of {', '.join(ADJUST_LR_FNS)}, "
                              f"got {adjust_lr_fn!r}")
        if not adamw_lr > 0:
            raise ValueError(f"adamw_lr must be positive, got {adamw_lr}")
        super().__init__(params, {"lr": lr})
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])
        everything = [p for group in self.param_groups for p in group["params"]]
        hidden = hidden_matrices(everything)
        self.adamw_lr = adamw_lr
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (weight, its 2-D copy)
        muon_groups, adamw_groups = [], []
        for group in self.param_groups:
            copies = []
            for p in group["params"]:
                if id(p) in hidden:
                    copy = p.detach().reshape(p.shape[0], -1).clone().requires_grad_(True)
                    self._pairs.append((p, copy))
                    copies.append(copy)
            muon_groups.append({"params": copies, "lr": group["lr"]})
            adamw_groups.append({"params": [p for p in group["params"] if id(p) not in hidden],
                                 "lr": self._adamw_rate(group)})
        kept_muon = [g for g in muon_groups if g["params"]]
        kept_adamw = [g for g in adamw_groups if g["params"]]
        muon_class = torch.optim.Muon if ns_dtype == "bfloat16" else Float32Muon
        self.muon = muon_class(
            kept_muon or [torch.zeros(1, 1, requires_grad=True)],
            lr=lr, weight_decay=0.0, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn)
        self.adamw = torch.optim.AdamW(
            kept_adamw or [torch.zeros(1, requires_grad=True)],
            lr=adamw_lr, betas=adamw_betas, eps=adamw_eps, weight_decay=0.0)
        # (outer group, index of its Muon group, of its AdamW group): indices, since loading
        # a state dict replaces the inner optimizers' group dicts
        self._inner = [(group, _index(kept_muon, m), _index(kept_adamw, a))
                       for group, m, a in zip(self.param_groups, muon_groups, adamw_groups)]

    def _adamw_rate(self, group: dict) -> float:
        """AdamW's rate for a group: adamw_lr times the group's scale and the schedule's
        current factor (the group's rate over its rate at the start)."""
        factor = group["lr"] / group["base_lr"] if group["base_lr"] else 0.0
        return self.adamw_lr * group.get("lr_scale", 1.0) * factor

    def base_rates(self, run_lr: float) -> dict[int, float]:
        """The unscheduled rate each parameter is stepped with, by id: the run's (Muon's)
        for a hidden matrix, adamw_lr for the others (decoupled weight decay multiplies it
        by lambda)."""
        hidden = {id(weight) for weight, _ in self._pairs}
        return {id(p): run_lr if id(p) in hidden else self.adamw_lr
                for group in self.param_groups for p in group["params"]}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, muon_index, adamw_index in self._inner:
            if muon_index is not None:
                self.muon.param_groups[muon_index]["lr"] = group["lr"]
            if adamw_index is not None:
                self.adamw.param_groups[adamw_index]["lr"] = self._adamw_rate(group)
        for weight, copy in self._pairs:
            copy.copy_(weight.reshape(copy.shape))
            copy.grad = None if weight.grad is None else weight.grad.reshape(copy.shape).clone()
        self.muon.step()
        for weight, copy in self._pairs:
            weight.copy_(copy.reshape(weight.shape))
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        super().zero_grad(set_to_none)
        for _, copy in self._pairs:
            copy.grad = None

    def state_dict(self):
        return {"groups": [{k: v for k, v in g.items() if k != "params"}
                           for g in self.param_groups],
                "muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        for group, saved in zip(self.param_groups, state_dict["groups"]):
            group.update(saved)
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
