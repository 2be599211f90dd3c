"""The explicit methods' definitions, each in one place.

- Network Slimming (Liu et al. 2017): an L1 penalty `s * sum |gamma|` on every conv
  BatchNorm scale during training (a training regularizer: `optim.regularization`), then
  the filters whose |gamma| falls below one global threshold, chosen so
  that a given share of all conv filters goes, are removed, then the net is fine-tuned.
- L1-norm filter pruning (Li et al. 2017): in each chosen layer, the filters with the
  smallest sum of absolute kernel weights are removed (a given share per layer), then the
  net is fine-tuned. VGG-16-A removes 50% of the filters of conv1 and conv8-13.

- Selectivity (the authors' follow-up, Mehta et al. 2019, arXiv 1905.04967): the features
  least universal over the training corpus (the share of images on which a feature's
  normalized activation exceeds 1e-3, see measure.activation) are the most selective; the
  given share of all conv filters with the lowest universality goes (one global ranking,
  ties broken by the smaller max activation), then the net is fine-tuned.

Selections return per-layer masks of the filters to remove, never a whole layer.
"""

from __future__ import annotations

import torch
from torch import nn

from implicit_sparsity.errors import ConfigError
from implicit_sparsity.measure.activation import activation_statistics
from implicit_sparsity.measure.features import require_batchnorm, trace_features

#: Network Slimming's sparsity strength for VGG (Liu et al. 2017).
SLIMMING_S_VGG = 1e-4
#: Li et al.'s VGG-16-A: the share of filters removed per conv layer.
VGG16_A_FRACTIONS = {"C1": 0.5, **{f"C{i}": 0.5 for i in range(8, 14)}}


def _keep_one(mask: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Never empty a layer: if every filter is selected, keep the highest-scoring one."""
    if bool(mask.all()):
        mask = mask.clone()
        mask[int(score.argmax())] = False
    return mask


def slimming_selection(model: nn.Module, ratio: float) -> dict[str, torch.Tensor]:
    """Masks of the `ratio` of all conv filters with the smallest |gamma| (one global
    threshold across layers), each layer keeping at least one filter (so a layer that the
    threshold would empty makes the share removed slightly smaller than `ratio`)."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"channel ratio must be in [0, 1), got {ratio}")
    features = [f for f in trace_features(model).features if f.gamma is not None]
    require_batchnorm(features)
    scores = {f.name: f.gamma.detach().abs().cpu() for f in features}
    everything = torch.cat(list(scores.values()))
    chosen = torch.zeros(len(everything), dtype=torch.bool)
    chosen[everything.argsort(stable=True)[:int(round(ratio * len(everything)))]] = True
    masks, start = {}, 0
    for name, score in scores.items():
        masks[name] = _keep_one(chosen[start:start + len(score)], score)
        start += len(score)
    return masks


def l1_norm_selection(model: nn.Module, fractions: dict[str, float]) -> dict[str, torch.Tensor]:
    """Per named layer, masks of the `fraction` of filters with the smallest L1 norm."""
    features = {f.name: f for f in trace_features(model).features}
    unknown = sorted(set(fractions) - set(features))
    if unknown:
        raise ConfigError(f"no conv layer(s) {', '.join(unknown)}; layers: "
                          f"{', '.join(features)}")
    masks = {}
    for name, feature in features.items():
        norms = feature.conv.weight.detach().abs().sum(dim=(1, 2, 3)).cpu()
        mask = torch.zeros(len(norms), dtype=torch.bool)
        fraction = fractions.get(name, 0.0)
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"{name}: fraction must be in [0, 1], got {fraction}")
        count = min(int(round(fraction * len(norms))), len(norms) - 1)
        if count > 0:
            mask[norms.argsort()[:count]] = True
        masks[name] = mask
    return masks


def selectivity_selection(model: nn.Module, corpus, ratio: float) -> dict[str, torch.Tensor]:
    """Masks of the `ratio` of all conv filters that are least universal over `corpus` (the
    training corpus: a re-iterable of batches or a callable returning an iterator)."""

    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"selectivity ratio must be in [0, 1), got {ratio}")
    stats = activation_statistics(model, corpus, universality=True)
    names = [f.name for f in trace_features(model).features]
    universality = torch.cat([stats.universality[n].float() for n in names])
    strength = torch.cat([stats.max_activation[n].float() for n in names])
    # lowest universality first; among equals (the dead ones, say) the weakest first
    order = sorted(range(len(universality)),
                   key=lambda i: (float(universality[i]), float(strength[i])))
    chosen = torch.zeros(len(universality), dtype=torch.bool)
    chosen[order[:int(round(ratio * len(universality)))]] = True
    masks, start = {}, 0
    for name in names:
        size = len(stats.universality[name])
        part = slice(start, start + size)
        masks[name] = _keep_one(chosen[part], universality[part])
        start += size
    return masks
