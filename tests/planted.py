"""A few dead channels planted in every BatchNorm feature of a model, and which of them the
README's rules say can go ("what is removed, what is kept, and why"), worked out from the
traced structure alone (not from the surgery), so that a test or benchmark can ask what
share of the removable ones a removal took.

The pattern is the one of the outside check (issue 24): in each BatchNorm layer of at least
8 channels, 3 channels gamma 0, beta -5 (zero after a ReLU; a small negative constant after
SiLU) and 2 channels gamma 0, beta +1 (a constant)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from implicit_sparsity.measure import trace_features
from implicit_sparsity.prune import PruneResult, prune_model
from implicit_sparsity.prune.surgery import _foldable, constant_outputs, zero_input_outputs

ZERO, CONSTANT = 3, 2
MIN_CHANNELS = 8


def plant_few(model: nn.Module, generator: torch.Generator) -> dict[str, list[int]]:
    """Plant the pattern in each feature's BatchNorm; returns feature name -> channels."""
    planted = {}
    with torch.no_grad():
        for feature in trace_features(model).features:
            bn = feature.bn
            if bn is None or not bn.affine or bn.num_features < MIN_CHANNELS:
                continue
            chosen = torch.randperm(bn.num_features, generator=generator)[:ZERO + CONSTANT]
            bn.weight[chosen] = 0.0
            bn.bias[chosen[:ZERO]] = -5.0
            bn.bias[chosen[ZERO:]] = 1.0
            planted[feature.name] = sorted(chosen.tolist())
    return planted


def _grouped(conv) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and not (
        conv.groups == conv.in_channels == conv.out_channels)


def removable_by_rules(model: nn.Module, planted: dict[str, list[int]], criterion: str
                       ) -> set[tuple[str, int]]:
    """(feature, channel) of the planted channels the rules remove on their own: a zero
    channel of a layer read by plain convs / Linears, or by a depthwise conv whose channel
    then is a zero or foldable constant; a constant where it folds (no zero padding, no gate,
    no add). Left out: channels that meet other producers (residual adds, concatenations,
    shuffles) or a grouped conv, whose fate depends on other layers' channels. By activation
    only zero channels are dead."""
    traced = trace_features(model)
    gm = traced.graph_module
    by_name = {f.name: f for f in traced.features}
    modules = dict(model.named_modules())
    found = set()
    for name, channels in planted.items():
        feature = by_name[name]
        if feature.coupled or feature.reaches_output or feature.shared_norm:
            continue
        if _grouped(feature.conv) or any(_grouped(modules[c]) for c in feature.consumers):
            continue
        conv = feature.conv
        if conv.groups > 1 and not feature.chain_from:
            continue  # a depthwise conv whose input others read too: its channels are tied
        if any(isinstance(modules[c], nn.Conv2d) and modules[c].groups > 1
               for c in feature.consumers) and not feature.chain_to:
            continue  # read by a depthwise conv among others (no chain): not a rule yet
        constants = constant_outputs(feature)
        for c in channels:
            zero = float(constants[c]) == 0.0
            if criterion == "activation" and not zero:
                continue  # a constant is not dead by activation
            if feature.chain_to:
                partner = by_name[feature.chain_to]
                if zero and (float(zero_input_outputs(partner)[c]) == 0.0
                             or _foldable(partner, gm)):
                    found.add((name, c))
            elif zero or _foldable(feature, gm):
                found.add((name, c))
    return found


@dataclass
class PlantedRun:
    planted: dict[str, list[int]]
    removable: set[tuple[str, int]]   # what the rules say can go
    removed: set[tuple[str, int]]     # what went (planted or not)
    result: PruneResult

    @property
    def taken(self) -> int:
        """How many of the removable planted channels went."""
        return len(self.removable & self.removed)

    @property
    def planted_pairs(self) -> set[tuple[str, int]]:
        return {(name, c) for name, channels in self.planted.items() for c in channels}


def prune_planted(model: nn.Module, generator: torch.Generator, criterion: str,
                  shape: tuple[int, ...], tolerance: float) -> PlantedRun:
    """Plant the pattern in `model` (BatchNorm statistics already its own, eval mode), then
    prune by `criterion` with one random batch of `shape` (the model's dtype) as corpus and
    check batch."""
    planted = plant_few(model, generator)
    removable = removable_by_rules(model, planted, criterion)
    dtype = next(model.parameters()).dtype
    x = torch.randn(*shape, generator=generator, dtype=dtype)
    result = prune_model(model, x, criterion=criterion, corpus=[x], check_data=[x],
                         tolerance=tolerance)
    removed = {(d.name, c) for d in result.layers for c in d.removed}
    return PlantedRun(planted, removable, removed, result)
