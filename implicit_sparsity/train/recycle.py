"""Recycling dormant units during training instead of removing them afterwards (ReDo:
Sokar et al., ICML 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning").

Every `every` steps the units of each conv feature layer are scored on one training batch
by ReDo's score (measure.activation: a unit's mean |activation| over samples and positions
divided by its layer's mean; the model in eval mode, as every activation measure here). A
unit scoring <= tau is recycled:

- its incoming weights (the conv filter) are drawn afresh from the model's initialization
  (Xavier-uniform with the activation's gain), its BatchNorm gamma / beta and running
  statistics reset to their initial values, so that the unit computes something again;
- its outgoing weights (the input channel in every consumer conv / linear layer) are set to
  zero, so that the network's function does not jump;
- the optimizer's per-element state of all those weights (Adam's moments, SGD's momentum,
  ...) is zeroed, so that stale moments do not drive the unit back to zero at once.

Conv filters, and MLP units for models measured on them (features whose channels end in
convs / linears, not coupled by an add or concat, grouped convs excluded); the choice is the
trade-off between free compression
(remove the dead units after training) and kept capacity (revive them while training).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.measure.activation import activation_statistics
from implicit_sparsity.measure.features import CONV_UNITS, Feature, trace_features


@dataclass
class RecycleLog:
    """Units recycled so far, per layer, and the checks made."""

    recycled: dict[str, int] = field(default_factory=dict)
    checks: int = 0

    @property
    def total(self) -> int:
        return sum(self.recycled.values())


def recyclable(features: list[Feature], model: nn.Module) -> list[Feature]:
    """The features whose units can be recycled without changing the model's function at
    the moment of recycling: a plain conv (no groups), an activation, channels read only by
    conv / linear layers that take them one to one (or as whole flattened blocks)."""
    modules = dict(model.named_modules())
    found = []
    for f in features:
        if f.coupled or f.gated or f.reaches_output or not f.has_activation or not f.consumers:
            continue
        if f.shared_norm:  # new incoming weights would move its group's statistics
            continue
        if getattr(f.conv, "groups", 1) != 1:
            continue
        if all(_outgoing_block(modules[c], f.num_features) for c in f.consumers):
            found.append(f)
    return found


def _outgoing_block(consumer: nn.Module, channels: int) -> int:
    """How many input columns of `consumer` each of the feature's channels feeds (0: none
    we can zero exactly)."""
    if isinstance(consumer, nn.Conv2d):
        return 1 if consumer.groups == 1 and consumer.in_channels == channels else 0
    if isinstance(consumer, nn.Linear) and consumer.in_features % channels == 0:
        return consumer.in_features // channels  # flattened C x H x W: channel-major blocks
    return 0


class Recycler:
    """Scores and recycles dormant units of `model` (see the module's text)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, every: int,
                 tau: float = defaults.RECYCLE_TAU, negative_slope: float = 0.0,
                 gamma_init: float = defaults.GAMMA_INIT, beta_init: float = defaults.BETA_INIT,
                 seed: int = 0, units: tuple[str, ...] = CONV_UNITS):
        if every < 1:
            raise ConfigError(f"recycle_every must be >= 1 step, got {every}")
        if not 0.0 <= tau < 1.0:
            raise ConfigError(f"recycle_tau must be in [0, 1), got {tau}")
        self.model, self.optimizer, self.every, self.tau = model, optimizer, every, tau
        self.gain = (nn.init.calculate_gain("relu") if negative_slope == 0.0 else
                     nn.init.calculate_gain("leaky_relu", negative_slope))
        self.gamma_init, self.beta_init = gamma_init, beta_init
        self.units = units  # conv filters, and MLP units with ALL_UNITS
        self.features = recyclable(trace_features(model, units).features, model)
        if not self.features:
            raise ConfigError("recycling found no feature layer whose units it can recycle")
        self.modules = dict(model.named_modules())
        self.seed = seed
        self.log = RecycleLog({f.name: 0 for f in self.features})
        self.steps = 0  # training steps so far (set it when resuming)

    def step(self, x: torch.Tensor) -> dict[str, int]:
        """Count one training step; every `every` steps, recycle on batch `x`. Returns the
        units recycled now per layer (empty between checks)."""
        self.steps += 1
        if self.steps % self.every:
            return {}
        return self.recycle(x)

    @torch.no_grad()
    def recycle(self, x: torch.Tensor) -> dict[str, int]:
        scores = activation_statistics(self.model, [x], universality=False, mean_abs=True,
                                       units=self.units).dormancy()
        self.log.checks += 1
        # fresh weights drawn from the seed and the step: a resumed run draws the same
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)
        done = {}
        for f in self.features:
            units = torch.nonzero(scores[f.name] <= self.tau).flatten()
            if len(units):
                self._recycle_units(f, units.to(f.conv.weight.device))
                done[f.name] = len(units)
                self.log.recycled[f.name] += len(units)
        return done

    def _recycle_units(self, f: Feature, units: torch.Tensor) -> None:
        fresh = torch.empty(f.conv.weight.shape, dtype=torch.float32)
        nn.init.xavier_uniform_(fresh, gain=self.gain, generator=self.generator)
        weight = f.conv.weight
        weight[units] = fresh.to(weight.device, weight.dtype)[units]
        self._reset_state(weight, units, dim=0)
        if f.conv.bias is not None:
            f.conv.bias[units] = 0.0
            self._reset_state(f.conv.bias, units, dim=0)
        if f.bn is not None:
            if f.bn.affine:
                f.bn.weight[units] = self.gamma_init
                f.bn.bias[units] = self.beta_init
                self._reset_state(f.bn.weight, units, dim=0)
                self._reset_state(f.bn.bias, units, dim=0)
            if f.bn.track_running_stats and f.bn.running_mean is not None:
                f.bn.running_mean[units] = 0.0
                f.bn.running_var[units] = 1.0
        for path in f.consumers:
            consumer = self.modules[path]
            block = _outgoing_block(consumer, f.num_features)
            columns = (units[:, None] * block + torch.arange(block, device=units.device)
                       ).flatten()
            consumer.weight[:, columns] = 0.0
            self._reset_state(consumer.weight, columns, dim=1)

    def _reset_state(self, param: torch.Tensor, index: torch.Tensor, dim: int) -> None:
        """Zero the optimizer's per-element state of `param` at `index` along `dim`."""
        for value in self.optimizer.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.index_fill_(dim, index, 0.0)
