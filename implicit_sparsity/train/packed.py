"""Several runs of one architecture trained as one stacked model (groundwork for packed
sweeps; not yet wired into `train` or `sweep`).

The K models' parameters and buffers are stacked with `torch.func.stack_module_state` and
evaluated with `vmap(functional_call)`, the buffers batched too, so every run keeps its own
BatchNorm running statistics (not `replace_all_batch_norm_modules_`, which would change
evaluation). Each run keeps its own optimizer and regularizer, built by the same code as a
single run over per-run views of the stacked parameters: a packed run computes what a
single run computes, with its own data, seed and hyper-parameters.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from implicit_sparsity.errors import ConfigError
from implicit_sparsity.optim import (Regularizer, build_optimizer, param_groups,
                                     regularized_step)
from implicit_sparsity.train.config import TrainConfig


class PackedModels:
    def __init__(self, models: list[nn.Module], configs: list[TrainConfig]):
        if len(models) != len(configs) or not models:
            raise ConfigError("one config per model, at least one")
        shapes = [[tuple(p.shape) for p in m.parameters()] for m in models]
        if any(s != shapes[0] for s in shapes):
            raise ConfigError("packed runs must share one architecture")
        self.configs = [c.resolved() for c in configs]
        if any(c.l1_gamma for c in self.configs):
            raise ConfigError("packed runs do not take Network Slimming's l1_gamma yet")
        self.template = models[0]
        self.base = copy.deepcopy(models[0]).to("meta")
        self.params, self.buffers = stack_module_state(models)
        self.views = [{name: nn.Parameter(t.detach()[k]) for name, t in self.params.items()}
                      for k in range(len(models))]
        self.optimizers, self.regularizers = [], []
        for k, (model, config) in enumerate(zip(models, self.configs)):
            name_of = {id(p): name for name, p in model.named_parameters()}
            groups = param_groups(model, config.lr, config.gamma_lr_scale, config.beta_lr_scale)
            for group in groups:  # the single run's groups, over this run's views
                group["params"] = [self.views[k][name_of[id(p)]] for p in group["params"]]
            self.optimizers.append(build_optimizer(config.optimizer, groups,
                                                   config.optimizer_args))
            from implicit_sparsity.train.loop import regularized_params

            regularized = [self.views[k][name_of[id(p)]]
                           for p in regularized_params(model, config.regularize_bn)]
            self.regularizers.append(Regularizer(config.regularizer, config.lam, regularized))

    def __len__(self) -> int:
        return len(self.views)

    def _forward_one(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [K, B, ...] (run k's batch at x[k]) -> logits [K, B, classes]."""
        return vmap(self._forward_one, randomness="different")(self.params, self.buffers, x)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def step(self, x: torch.Tensor, y: torch.Tensor, factors: list[float]) -> torch.Tensor:
        """One training step of every run: each run's mean cross-entropy on its own batch,
        its own regularizer and optimizer. Returns the K losses."""
        self.train(True)
        logits = self.forward(x)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                 reduction="none").view(len(self), -1).mean(1)
        for tensor in self.params.values():
            tensor.grad = None
        losses.sum().backward()  # run k's loss depends on run k's parameters only
        for k, (optimizer, regularizer) in enumerate(zip(self.optimizers, self.regularizers)):
            for name, view in self.views[k].items():
                view.grad = self.params[name].grad[k]
            regularized_step(optimizer, regularizer, factors[k])
        return losses.detach()

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Run k's weights and buffers, in the layout of a single run's state dict."""
        state = {name: t[k].detach().clone() for name, t in self.params.items()}
        state.update({name: t[k].detach().clone() for name, t in self.buffers.items()})
        return {key: state[key] for key in self.template.state_dict()}
