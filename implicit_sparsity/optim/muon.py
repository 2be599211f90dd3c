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
"""

from __future__ import annotations

import torch

from implicit_sparsity.errors import ConfigError


def hidden_matrices(params: list[torch.Tensor]) -> set[int]:
    """ids of the parameters Muon updates: those of two or more dimensions, except the
    first (the input layer) and the last (the head)."""
    matrices = [p for p in params if p.dim() >= 2]
    return {id(p) for p in matrices[1:-1]}


def _index(groups: list[dict], group: dict) -> int | None:
    return next((i for i, g in enumerate(groups) if g is group), None)


class MuonWithAdamW(torch.optim.Optimizer):
    """torch's Muon on the hidden weight matrices (viewed as out x fan-in), torch's AdamW on
    the other parameters, in the caller's parameter groups."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5,
                 ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                 eps: float = 1e-7, adjust_lr_fn: str | None = None,
                 adamw_lr: float = 3e-4, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-8, weight_decay: float = 0.0):
        if weight_decay:
            raise ConfigError("muon: regularization is the toolkit's (regularizer / lam), "
                              "not the optimizer's weight_decay")
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
        self.muon = torch.optim.Muon(
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
