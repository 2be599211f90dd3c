"""Remove dead filters for real: smaller tensors, the same predictions.

Coupled layers are found with torch-pruning's dependency graph: removing output channel j
of a conv also removes its BatchNorm entries and input channel j of whatever reads it,
and, through residual adds and concatenations, channel j of every other producer of the
same tensor. A channel goes only when it is dead in every producer of its group, and no
layer is ever emptied.

A filter whose |gamma| ~ 0 outputs the constant act(beta) (beta itself when no activation
follows its BatchNorm): zero only when that constant is zero. A non-zero constant is folded
into the bias of the layers that read it where that is exact (a Linear after flattening,
a conv without zero padding); elsewhere (a zero-padded conv sees zeros at the borders, a
residual add mixes it with other tensors) the filter is kept, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from implicit_sparsity.errors import ImplicitSparsityError
from implicit_sparsity.measure.features import Feature, TracedModel


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise ImplicitSparsityError("pruning needs torch-pruning: pip install torch-pruning"
                                    ) from None
    return torch_pruning


@dataclass
class LayerDecision:
    """What happened to one conv feature layer."""

    name: str
    filters_before: int
    filters_after: int = 0
    dead: int = 0                                        # by the criterion
    removed: list[int] = field(default_factory=list)     # original indices
    folded: list[int] = field(default_factory=list)      # removed, constant folded onward
    kept_constant: list[int] = field(default_factory=list)  # constant output, not foldable
    kept_coupled: list[int] = field(default_factory=list)   # alive in a coupled producer
    kept_last: list[int] = field(default_factory=list)      # kept so the layer is not empty

    def to_dict(self) -> dict:
        return {"name": self.name, "filters_before": self.filters_before,
                "filters_after": self.filters_after, "dead": self.dead,
                "removed": len(self.removed), "folded": self.folded,
                "kept_constant": self.kept_constant, "kept_coupled": self.kept_coupled,
                "kept_last": self.kept_last}


def constant_outputs(feature: Feature) -> torch.Tensor:
    """Per channel, what the feature outputs when its gamma is zero: act(beta), or beta."""
    if feature.bn is None:
        return torch.zeros(feature.num_features)
    beta = feature.bn.bias.detach().float().cpu().clone()
    if feature.has_activation:
        return feature.activation(beta.reshape(1, -1, 1, 1)).reshape(-1)
    return beta


def _foldable(feature: Feature, gm: torch.fx.GraphModule) -> bool:
    """Can a constant channel of this feature be folded exactly into its readers?"""
    if feature.coupled or not feature.consumers:
        return False
    for path in feature.consumers:
        module = gm.get_submodule(path)
        if isinstance(module, nn.Conv2d) and any(p != 0 for p in module.padding) or (
                isinstance(module, nn.Conv2d) and module.padding_mode != "zeros"):
            return False
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            return False
    return True


@torch.no_grad()
def _fold_constant(model: nn.Module, feature: Feature, channel: int, total_channels: int,
                   value: float) -> None:
    """Add a constant input channel's contribution to the bias of each reader."""
    for path in feature.consumers:
        module = model.get_submodule(path)
        if isinstance(module, nn.Conv2d):
            contribution = module.weight[:, channel].sum(dim=(1, 2)) * value
        else:  # Linear after flattening C x H x W: channel j owns columns j*S ... (j+1)*S-1
            span = module.in_features // total_channels
            contribution = module.weight[:, channel * span:(channel + 1) * span].sum(1) * value
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(contribution))
        module.bias += contribution


def remove_dead_filters(model: nn.Module, traced: TracedModel, dead: dict[str, torch.Tensor],
                        example_input: torch.Tensor,
                        strength: dict[str, torch.Tensor] | None = None,
                        exact: bool = True) -> list[LayerDecision]:
    """Prune `model` in place. `dead[name]` marks each feature's dead channels (original
    indices); `strength[name]` (e.g. |gamma|) picks which dead filter a layer keeps when all
    are dead. `traced` must come from the same model (its modules are edited in place).

    `exact=False` removes every marked filter as it is, live or constant (the explicit
    methods' pruning, to be followed by fine-tuning): nothing is folded or kept for it."""
    tp = _torch_pruning()
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input,
                                                  verbose=False)
    features = traced.features
    by_conv = {id(f.conv): f for f in features}
    # original index of each current output channel, per conv
    remaining = {f.name: list(range(f.num_features)) for f in features}
    constants = {f.name: constant_outputs(f) for f in features}
    decisions = {f.name: LayerDecision(f.name, f.num_features) for f in features}
    out_fns = (tp.prune_conv_out_channels,)

    def is_dead(feature: Feature, current: int) -> bool:
        mask = dead.get(feature.name)
        return mask is not None and bool(mask[remaining[feature.name][current]])

    def removable_constant(feature: Feature, original: int) -> bool:
        return not exact or float(constants[feature.name][original]) == 0.0

    for feature in features:
        decision = decisions[feature.name]
        mask = dead.get(feature.name)
        if mask is None:
            continue
        decision.dead = int(mask.sum())
        foldable = _foldable(feature, traced.graph_module)
        candidates, folds = [], []
        for current, original in enumerate(remaining[feature.name]):
            if not mask[original]:
                continue
            if removable_constant(feature, original):
                candidates.append(current)
            elif foldable:
                candidates.append(current)
                folds.append(current)
            else:
                decision.kept_constant.append(original)
        if not candidates:
            continue
        # a channel goes only if it is dead (with a zero output) in every coupled producer
        group = graph.get_pruning_group(feature.conv, tp.prune_conv_out_channels, candidates)
        allowed = set(candidates)
        for item in group:
            module = item.dep.target.module
            if item.dep.handler not in out_fns or module is feature.conv:
                continue
            other = by_conv.get(id(module))
            for idx, root in zip(item.idxs, item.root_idxs):
                if other is None or not is_dead(other, idx) or not removable_constant(
                        other, remaining[other.name][idx]):
                    if root in allowed:
                        allowed.discard(root)
                        decision.kept_coupled.append(remaining[feature.name][root])
        # never empty a layer: keep the strongest dead filter of any layer the group empties
        chosen = sorted(allowed)
        while chosen:
            group = graph.get_pruning_group(feature.conv, tp.prune_conv_out_channels, chosen)
            emptied = [item for item in group if item.dep.handler in out_fns
                       and len(item.idxs) >= item.dep.target.module.out_channels]
            if not emptied:
                break
            score = strength.get(feature.name) if strength else None
            keep = max(chosen, key=lambda c: float(score[remaining[feature.name][c]])
                       if score is not None else -c)
            chosen.remove(keep)
            decision.kept_last.append(remaining[feature.name][keep])
        if not chosen:
            continue
        total = feature.conv.out_channels
        for current in folds:
            if current in chosen:
                original = remaining[feature.name][current]
                _fold_constant(model, feature, current, total,
                               float(constants[feature.name][original]))
                decision.folded.append(original)
        # prune, then update every pruned conv's map of original indices
        for item in group:
            module = item.dep.target.module
            if item.dep.handler in out_fns and id(module) in by_conv:
                name = by_conv[id(module)].name
                gone = set(item.idxs)
                if module is feature.conv:
                    decision.removed += [remaining[name][i] for i in sorted(gone)]
                else:
                    decisions[name].removed += [remaining[name][i] for i in sorted(gone)]
                remaining[name] = [r for i, r in enumerate(remaining[name]) if i not in gone]
        group.prune()
    for f in features:
        decisions[f.name].filters_after = f.conv.out_channels
    return [decisions[f.name] for f in features]


@torch.no_grad()
def fold_batchnorm(model: nn.Module, traced: TracedModel) -> int:
    """Fold each feature's BatchNorm (eval statistics) into its conv, for deployment.
    Returns the number of BatchNorm layers folded (replaced by identities)."""
    folded = 0
    for feature in traced.features:
        bn, conv = feature.bn, feature.conv
        if bn is None:
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * scale + bn.bias
        conv.bias = nn.Parameter(new_bias.detach().clone())
        parent_path, _, child = feature.bn_path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, nn.Identity())
        folded += 1
    return folded
