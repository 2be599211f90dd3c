"""Sparsity by scale (section 2.1): a conv feature is inactive when its BatchNorm |gamma|
is below a threshold (1e-3 by default). Only convolution features count."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.models.blocks import feature_layers


@dataclass
class LayerSparsity:
    name: str
    features: int
    inactive: int

    @property
    def percent(self) -> float:
        return 100.0 * self.inactive / self.features if self.features else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "percent": self.percent}


def inactive_by_gamma(gamma: torch.Tensor, threshold: float = defaults.GAMMA_THRESHOLD
                      ) -> torch.Tensor:
    """Boolean mask of features whose |gamma| < threshold."""
    return gamma.detach().abs() < threshold


def gamma_sparsity(model: nn.Module, threshold: float = defaults.GAMMA_THRESHOLD
                   ) -> list[LayerSparsity]:
    """Per conv layer C1..Cn: how many features are inactive by |gamma| < threshold."""
    layers = feature_layers(model)
    masks = [inactive_by_gamma(block.bn.weight, threshold) for _, block in layers]
    counts = torch.stack([m.sum() for m in masks]).tolist() if masks else []  # one sync
    return [LayerSparsity(name, block.bn.num_features, int(count))
            for (name, block), count in zip(layers, counts)]


def total(layers: list[LayerSparsity]) -> LayerSparsity:
    return LayerSparsity("total", sum(l.features for l in layers),
                         sum(l.inactive for l in layers))
