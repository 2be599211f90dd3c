"""Remove dead filters for real: smaller tensors, the same predictions, or nothing.

Coupled layers are found with torch-pruning's dependency graph: removing output channel j
of a conv also removes its BatchNorm entries and input channel j of whatever reads it,
and, through residual adds and concatenations, channel j of every other producer of the
same tensor. A channel goes only when it is dead, with a zero output, in every producer of
its group (a producer that is not a dead conv feature, such as a Linear broadcast-added,
keeps it), a model output is never pruned, and no layer is ever emptied.

A filter whose |gamma| ~ 0 outputs the constant act(beta) (beta itself when no activation
follows its BatchNorm): zero only when that constant is zero. A non-zero constant is folded
into the bias of the layers that read it where that is exact (a Linear after flattening
or global pooling, a conv without zero padding); elsewhere (a zero-padded conv or average
pool sees zeros at the borders, a residual add mixes it with other tensors, a normalization
turns it into something else) the filter is kept, and the report says so.

Exact or not at all: each group is removed as one transaction and the model's outputs on
the example batch are compared with the original's; a removal that changes them beyond the
tolerance, or that torch-pruning cannot carry out (a channel shuffle, a grouped conv it
cannot regroup), is undone and its channels are kept, with the reason.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ImplicitSparsityError, first_line
from implicit_sparsity.prune import torch_pruning_api
from implicit_sparsity.prune.budget import analysis_budget
from implicit_sparsity.prune.origins import note_selection
from implicit_sparsity.measure.features import Feature, TracedModel


def require_torch_pruning():
    """torch-pruning, or one line saying how to install it (also called before long work
    that ends in a removal, so that hours of training are not lost to a missing package)."""
    try:
        import torch_pruning
    except ImportError:
        raise ImplicitSparsityError("pruning needs torch-pruning: pip install torch-pruning"
                                    ) from None
    torch_pruning_api.check(torch_pruning)
    return torch_pruning


#: Why a conv's channels that become tokens stay, without asking torch-pruning (whose
#: groups through a transformer's reshapes grow for minutes and by gigabytes): every block
#: of the token stream writes them (Linear projections, not dead conv features) and
#: normalizes them together (LayerNorm).
TOKENS_REASON = ("its channels become tokens (a permute / transpose: a patch embedding), "
                 "written by every block of the stream")
#: Why a channel with a constant, non-zero output stays when nothing may be folded (a harvest
#: while training: the constant would go on training as a bias, not as this channel's beta).
NOT_FOLDED_REASON = "a non-zero constant output, not folded while training"
#: Why channels that reach a channel shuffle stay: their index after it is a permutation
#: torch-pruning cannot follow, so their group (the other producers and readers) is unknown.
SHUFFLE_REASON = ("its channels pass a reshape that torch-pruning cannot map (a channel "
                  "shuffle)")
#: In such a model a coupled layer is kept without a group search: its group may pass the
#: shuffle, where torch-pruning's index maps multiply into millions of indices.
SHUFFLE_COUPLED_REASON = ("coupled (an add or concatenation) in a model with a reshape "
                          "torch-pruning cannot map (a channel shuffle)")


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
    kept_unsafe: list[int] = field(default_factory=list)    # removal not exact / not possible
    #: removed although alive by the criterion: the depthwise layer that is its only reader
    #: (or its only input) lost that channel, so nothing can see it any more
    removed_through: list[int] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)   # why, and how many channels

    def keep(self, originals, reason: str) -> None:
        new = [o for o in originals if o not in self.kept_unsafe]
        self.kept_unsafe += new
        if new:
            self.reasons[reason] = self.reasons.get(reason, 0) + len(new)

    def to_dict(self) -> dict:
        return {"name": self.name, "filters_before": self.filters_before,
                "filters_after": self.filters_after, "dead": self.dead,
                "removed": len(self.removed), "folded": self.folded,
                "kept_constant": self.kept_constant, "kept_coupled": self.kept_coupled,
                "kept_last": self.kept_last, "kept_unsafe": self.kept_unsafe,
                "removed_through": self.removed_through, "reasons": self.reasons}


@torch.no_grad()
def constant_outputs(feature: Feature) -> torch.Tensor:
    """Per channel, what the feature outputs when its gamma is zero: act(beta), or beta; a
    BN-with-activation module is run itself (its activation is whatever it applies)."""
    bn = feature.bn
    if bn is None or not bn.affine:
        return torch.zeros(feature.num_features)
    if feature.bn_has_activation:
        probe = copy.deepcopy(bn).eval().cpu()
        probe.weight.zero_()
        return probe(torch.zeros(1, feature.num_features, 1, 1, dtype=bn.weight.dtype)
                     ).reshape(-1)
    beta = bn.bias.detach().cpu().clone()  # its own dtype: a float64 proof stays float64
    if feature.activation is not None:
        return feature.activation(beta.reshape(1, -1, 1, 1)).reshape(-1)
    return beta


@torch.no_grad()
def zero_input_outputs(feature: Feature) -> torch.Tensor:
    """Per channel, what a depthwise feature outputs when its input channel is zero
    everywhere (its input feature's channel is dead): act(BN(conv bias)), eval statistics."""
    conv = feature.conv
    value = (conv.bias.detach().cpu().clone() if conv.bias is not None
             else torch.zeros(feature.num_features, dtype=conv.weight.dtype)
             ).reshape(1, -1, 1, 1)
    if feature.bn is not None:
        value = copy.deepcopy(feature.bn).eval().cpu()(value.to(feature.bn.weight.dtype))
        if feature.bn_has_activation:
            return value.reshape(-1)
    if feature.activation is not None:
        value = feature.activation(value)
    return value.reshape(-1)


def _foldable(feature: Feature, gm: torch.fx.GraphModule) -> bool:
    """Can a constant channel of this feature be folded exactly into its readers?"""
    if feature.coupled or feature.border_sensitive or feature.reaches_output \
            or feature.shared_norm or feature.gated or not feature.consumers:
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


class _Outputs:
    """The model's outputs on the example batch, compared with the original's after each
    removal: the per-group proof. A failed forward counts as a change."""

    def __init__(self, model: nn.Module, example: torch.Tensor, tolerance: float):
        self.model, self.example, self.tolerance = model, example, tolerance
        self.reference = self._run()
        if not isinstance(self.reference, torch.Tensor):
            raise ImplicitSparsityError("the model must return one tensor to be pruned")
        self.scale = max(float(self.reference.abs().max()), 1e-12)

    @torch.no_grad()
    def _run(self):
        return self.model(self.example)

    def change(self) -> str | None:
        """None when the outputs are those of the original, else what changed."""
        try:
            now = self._run()
        except Exception as error:  # e.g. a grouped conv left with the wrong width
            first = first_line(error)
            return f"the pruned model fails to run ({first[:100]})"
        if not isinstance(now, torch.Tensor) or now.shape != self.reference.shape:
            return "the output's shape changed"
        if not bool(torch.isfinite(now).all()):
            return "outputs became non-finite"
        relative = float((now - self.reference).abs().max()) / self.scale
        if relative > self.tolerance:
            return f"outputs moved by {relative:.1e} of max |output|"
        return None


class _Transaction:
    """Snapshots of the leaf modules a removal touches, to undo it in place (the dependency
    graph and the traced features keep referring to the same module objects)."""

    def __init__(self, modules):
        self.saved = [(m, copy.deepcopy(m.__dict__)) for m in {id(m): m for m in modules}.values()]

    def undo(self) -> None:
        for module, state in self.saved:
            module.__dict__.clear()
            module.__dict__.update(state)


def remove_dead_filters(model: nn.Module, traced: TracedModel, dead: dict[str, torch.Tensor],
                        example_input: torch.Tensor,
                        strength: dict[str, torch.Tensor] | None = None,
                        exact: bool = True, zero_when_dead: bool = False,
                        tolerance: float = 1e-5,
                        analysis_seconds: float = defaults.ANALYSIS_SECONDS,
                        fold: bool = True) -> list[LayerDecision]:
    """Prune `model` in place. `dead[name]` marks each feature's dead channels (original
    indices); `strength[name]` (e.g. |gamma|) picks which dead filter a layer keeps when all
    are dead. `traced` must come from the same model (its modules are edited in place).
    `zero_when_dead`: dead channels output zero (dead by activation over the corpus), not
    the constant act(beta) of a zero gamma. Each removal is checked on `example_input`
    against `tolerance` (relative to max |output|) and undone when it changes the outputs.

    `exact=False` removes every marked filter as it is, live or constant (the explicit
    methods' pruning, to be followed by fine-tuning): nothing is folded, kept or checked.
    `fold=False` removes only channels that output zero: a constant is kept, not folded into
    its readers' bias (a harvest while training, where the constant would go on training).

    The analysis is bounded (`prune.budget`): past `analysis_seconds`, or grown by half the
    memory available, it raises AnalysisBudgetError naming the layer (`model` is then
    partly edited: pass a copy, as `prune_model` does)."""
    model.eval()
    surgery = _Surgery(model, traced, dead, example_input, strength, exact, zero_when_dead,
                       tolerance, fold)
    with analysis_budget(surgery.where, analysis_seconds):
        return surgery.run()


class _Surgery:
    """One removal of dead channels, feature by feature: what each may lose (its mask, the
    constants that fold), what its coupled producers allow, what keeps a layer non-empty,
    then the removal as a transaction checked against the original outputs."""

    def __init__(self, model, traced, dead, example_input, strength, exact, zero_when_dead,
                 tolerance, fold=True):
        self.tp = require_torch_pruning()
        self.fold = fold
        self.model, self.traced, self.dead = model, traced, dead
        self.example_input, self.strength, self.exact = example_input, strength, exact
        self.tolerance = tolerance
        features = traced.features
        self.decisions = {f.name: LayerDecision(f.name, f.num_features) for f in features}
        self.by_conv = {id(f.conv): f for f in features}
        self.by_name = {f.name: f for f in features}
        self.paths = {id(m): n for n, m in model.named_modules()}
        #: depthwise features: what each channel outputs once its input channel is zero
        self.chain_constants = {f.name: zero_input_outputs(f) for f in features
                                if f.chain_from}
        self.group_size = {f.name: f.num_features // f.norm_groups for f in features
                           if f.norm_groups}
        # original index of each current output channel, per feature
        self.remaining = {f.name: list(range(f.num_features)) for f in features}
        self.constants = {f.name: torch.zeros(f.num_features) if zero_when_dead
                          else constant_outputs(f) for f in features}
        tp = self.tp
        self.conv_out = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels,
                         tp.prune_linear_out_channels)
        norms = (tp.prune_batchnorm_out_channels, tp.prune_layernorm_out_channels,
                 tp.prune_groupnorm_out_channels, tp.prune_instancenorm_out_channels,
                 tp.prune_prelu_out_channels)
        self.producers = {h for h in (getattr(tp, n) for n in dir(tp)
                                      if n.startswith("prune_") and n.endswith("_out_channels"))
                          if h not in norms}
        self.graph = None
        self.outputs = None
        self.unmapped: set = set()  # reshape nodes torch-pruning could not map
        self.widths_changed = 0  # counts the removals: torch-pruning's index maps follow
        self.current = "the dependency graph of the whole model"

    # --- the whole model ---------------------------------------------------------------
    def run(self) -> list[LayerDecision]:
        # torch-pruning recomputes its index maps at every group: keep them tolerant throughout
        with _tolerant_reshape_mapping(self.unmapped), _index_maps_once_per_change(self):
            return self._run()

    def where(self) -> str:
        return self.current

    def _run(self) -> list[LayerDecision]:
        features = self.traced.features
        try:
            self.graph = self._build_graph()
        except Exception as error:  # torch-pruning cannot analyse it: keep everything
            self._keep_everything(f"torch-pruning cannot analyse this model "
                                  f"({type(error).__name__}: {first_line(error, 80)})")
        else:
            self.outputs = (_Outputs(self.model, self.example_input, self.tolerance)
                            if self.exact else None)
            for feature in features:
                self._remove_from(feature)
        for f in features:
            self.decisions[f.name].filters_after = f.num_features
        return [self.decisions[f.name] for f in features]

    def _build_graph(self):
        self.unmapped.clear()
        return self.tp.DependencyGraph().build_dependency(
            self.model, example_inputs=self.example_input, verbose=False)

    def _keep_everything(self, reason: str) -> None:
        for f in self.traced.features:
            mask = self.dead.get(f.name)
            if mask is not None and bool(mask.any()):
                self.decisions[f.name].dead = int(mask.sum())
                self.decisions[f.name].keep(torch.nonzero(mask).flatten().tolist(), reason)

    # --- one feature -------------------------------------------------------------------
    def _remove_from(self, feature: Feature) -> None:
        self.current = f"layer {feature.name}"
        mask = self._mask(feature)
        if mask is None:
            return
        candidates, folds = self._candidates(feature, mask)
        if not candidates:
            return
        allowed = self._allowed_by_coupling(feature, candidates)
        if allowed is None:
            return
        if self._drop_whole_groups(feature, allowed):
            self._remove_from(feature)  # the rest, with the indices that are left
            return
        allowed = self._even_groups(feature, allowed)
        chosen = self._never_empty(feature, sorted(allowed)) if allowed else []
        if chosen:
            self._remove_chosen(feature, chosen, folds)

    def _mask(self, feature: Feature) -> torch.Tensor | None:
        """The dead channels this feature may lose at all (original indices), or None."""
        decision = self.decisions[feature.name]
        mask = self.dead.get(feature.name)
        if mask is None:
            return None
        decision.dead = int(mask.sum())
        if not decision.dead:
            return None
        if self.exact and feature.reaches_output:
            decision.keep(torch.nonzero(mask).flatten().tolist(),
                          "its channels are the model's output")
            return None
        if self.exact and feature.tokens:
            decision.keep(torch.nonzero(mask).flatten().tolist(), TOKENS_REASON)
            return None
        if not feature.shared_norm:
            return mask
        whole = feature.removable(mask)  # under a shared norm, whole groups only
        if not self.exact and not torch.equal(whole, mask):
            raise ImplicitSparsityError(
                f"{feature.name}: the selection removes part of a group of its "
                f"{feature.shared_norm}; under a GroupNorm whole groups go or none (under a "
                "LayerNorm, all channels or none)")
        if bool((mask & ~whole).any()):
            decision.keep(torch.nonzero(mask & ~whole).flatten().tolist(),
                          f"normalized together with other channels ({feature.shared_norm})")
        return whole if bool(whole.any()) else None

    def _removable_constant(self, feature: Feature, original: int) -> bool:
        return not self.exact or float(self.constants[feature.name][original]) == 0.0

    def _candidates(self, feature: Feature, mask: torch.Tensor
                    ) -> tuple[list[int], list[tuple[int, Feature, float]]]:
        """Current indices of the channels that may go, and the constants to fold first
        (current index, the feature whose readers take it, value); a constant that cannot
        be folded is kept. A zero channel read only by a depthwise conv (`chain_to`) makes
        that conv's channel a constant, folded into the depthwise feature's readers."""
        gm = self.traced.graph_module
        foldable = _foldable(feature, gm)
        partner = self._chain_partner(feature)
        candidates, folds = [], []
        for current, original in enumerate(self.remaining[feature.name]):
            if not mask[original]:
                continue
            zero = self._removable_constant(feature, original)
            if zero and partner is not None:
                value = float(self.chain_constants[partner.name][
                    self.remaining[partner.name][current]])
                if value == 0.0:
                    candidates.append(current)
                elif not self.fold:
                    self.decisions[feature.name].keep([original], NOT_FOLDED_REASON)
                elif _foldable(partner, gm):
                    candidates.append(current)
                    folds.append((current, partner, value))
                else:
                    self.decisions[feature.name].keep(
                        [original], f"its depthwise reader {partner.name} then outputs a "
                        "non-zero constant that cannot be folded into its readers")
            elif zero:
                candidates.append(current)
            elif not self.fold:
                self.decisions[feature.name].keep([original], NOT_FOLDED_REASON)
            elif foldable:
                candidates.append(current)
                folds.append((current, feature, float(self.constants[feature.name][original])))
            else:
                self.decisions[feature.name].kept_constant.append(original)
        return candidates, folds

    def _chain_partner(self, feature: Feature) -> Feature | None:
        """The depthwise feature reading only this one, when the removal is exact and their
        channels still line up one to one."""
        partner = self.by_name.get(feature.chain_to) if self.exact else None
        if partner is None or len(self.remaining[partner.name]) != len(
                self.remaining[feature.name]):
            return None
        return partner

    def _group(self, feature: Feature, channels: list[int]):
        handler = (self.tp.prune_linear_out_channels if feature.kind == "linear"
                   else self.tp.prune_conv_out_channels)
        return self.graph.get_pruning_group(feature.conv, handler, channels)

    def _is_dead_zero(self, other: Feature, current: int) -> bool:
        mask = self.dead.get(other.name)
        original = self.remaining[other.name][current]
        return mask is not None and bool(mask[original]) and self._removable_constant(
            other, original)

    def _allowed_by_coupling(self, feature: Feature, candidates: list[int]) -> set[int] | None:
        """The candidates dead (with a zero output) in every coupled producer; None when
        torch-pruning cannot group or map them (all kept, with the reason)."""
        decision = self.decisions[feature.name]
        remaining = self.remaining[feature.name]
        if self.unmapped and feature.coupled:
            decision.keep([remaining[c] for c in candidates], SHUFFLE_COUPLED_REASON)
            return None
        try:
            group = self._group(feature, candidates)
        except Exception as error:  # torch-pruning's analysis of this structure
            reason = (SHUFFLE_REASON if self.unmapped and feature.coupled else
                      f"torch-pruning cannot group its channels ({first_line(error, 80)})"
                      + ("; the model has a channel shuffle it cannot map" if self.unmapped
                         else ""))
            decision.keep([remaining[c] for c in candidates], reason)
            return None
        if any(item.dep.target in self.unmapped for item in group):
            decision.keep([remaining[c] for c in candidates], SHUFFLE_REASON)
            return None
        allowed, mapped = set(candidates), True
        chained = {feature.chain_to, feature.chain_from} - {None}
        gates = set(feature.gate_modules)
        if feature.chain_to:
            gates |= set(self.by_name[feature.chain_to].gate_modules)
        for item in group:
            module = item.dep.target.module
            if item.dep.handler not in self.producers or module is feature.conv:
                continue
            if self.paths.get(id(module)) in gates:
                continue  # a gate's factor for a zero channel: nothing left to scale
            other = self.by_conv.get(id(module)) if item.dep.handler in self.conv_out else None
            if other is not None and other.name in chained:
                continue  # its depthwise partner: the channel's value is decided above
            for idx, root in zip(item.idxs, item.root_idxs):
                if other is not None and not 0 <= idx < len(self.remaining[other.name]):
                    mapped = False  # torch-pruning's index map does not fit (a shuffle?)
                    continue
                if (other is None or not self._is_dead_zero(other, idx)) and root in allowed:
                    allowed.discard(root)
                    decision.kept_coupled.append(remaining[root])
        if not mapped:
            decision.keep([remaining[c] for c in allowed],
                          "torch-pruning's channel index map does not fit this structure "
                          "(a channel shuffle or split)")
            return None
        return allowed

    def _drop_whole_groups(self, feature: Feature, allowed: set[int]) -> bool:
        """Where every input channel of some groups of a grouped conv reading this feature
        is zero, those groups go whole: the channels, the grouped conv's filters of the
        groups (which then output act(BN(bias)), folded into their readers) and the group
        count. One transaction, proven like any other; True when something was removed."""
        if not self.exact or not allowed:
            return False
        for item in self._group(feature, sorted(allowed)):
            reader = item.dep.target.module
            if item.dep.handler != self.tp.prune_conv_in_channels or \
                    _grouped_span(reader, item.dep.handler, self.tp) is None:
                continue
            grouped = self.by_conv.get(id(reader))
            if grouped is None or not _foldable(grouped, self.traced.graph_module) or \
                    grouped.chain_from or len(self.remaining[grouped.name]) != \
                    reader.out_channels:
                continue
            span = reader.in_channels // reader.groups
            members: dict[int, list[int]] = {}
            for idx, root in zip(item.idxs, item.root_idxs):
                if root in allowed:
                    members.setdefault(idx // span, []).append(root)
            whole = sorted(g for g, roots in members.items() if len(roots) == span)
            if whole and len(whole) < reader.groups:
                roots = [r for g in whole for r in members[g]]
                problem = self._attempt_whole_groups(feature, grouped, whole, roots)
                if problem is None:
                    return True
                self.decisions[feature.name].keep(
                    [self.remaining[feature.name][r] for r in roots],
                    f"removing whole groups of {grouped.name} is not exact ({problem})")
                return False
        return False

    def _attempt_whole_groups(self, feature: Feature, grouped: Feature, whole: list[int],
                              roots: list[int]) -> str | None:
        conv = grouped.conv
        span_out = conv.out_channels // conv.groups
        outputs = [g * span_out + p for g in whole for p in range(span_out)]
        inputs = self._group(feature, roots)
        filters = self.graph.get_pruning_group(conv, self.tp.prune_conv_out_channels, outputs)
        touched = [i.dep.target.module for i in list(inputs) + list(filters)]
        touched += [self.model.get_submodule(p) for p in grouped.consumers]
        transaction = _Transaction(touched)
        before = {name: list(r) for name, r in self.remaining.items()}
        constants = zero_input_outputs(grouped)
        if not self.fold and any(float(constants[before[grouped.name][c]]) != 0.0
                                 for c in outputs):
            return NOT_FOLDED_REASON
        folded = []
        for current in outputs:  # these filters now see only zeros: their constant onward
            value = float(constants[before[grouped.name][current]])
            if value != 0.0:
                _fold_constant(self.model, grouped, current, grouped.num_features, value)
                folded.append(before[grouped.name][current])
        removed = self._record_removal(filters)
        removed.update(self._record_removal(inputs))
        self.widths_changed += 1
        try:
            filters.prune()  # its rows, its BatchNorm entries, its readers' columns
            for item in inputs:
                if item.dep.target.module is conv:  # the groups' inputs: the rows are gone
                    conv.in_channels -= len(roots)
                    conv.groups -= len(whole)
                else:
                    item.dep(item.idxs)
        except Exception as error:  # torch-pruning's index mapping, a shape it cannot fix
            problem = f"torch-pruning cannot remove it ({type(error).__name__})"
        else:
            problem = self.outputs.change()
        if problem is None:
            self._record_success(removed)
            self.decisions[grouped.name].folded += folded
            return None
        self._roll_back(transaction, before)
        return problem

    def _record_success(self, removed: dict[str, list[int]]) -> None:
        """Each narrowed feature's decision gains what it lost (original indices); what was
        alive by its own criterion went with a partner (`removed_through`)."""
        for name, gone in removed.items():
            self.decisions[name].removed += gone
            mask = self.dead.get(name)
            self.decisions[name].removed_through += [
                o for o in gone if mask is None or not bool(mask[o])]

    def _roll_back(self, transaction: _Transaction, before: dict[str, list[int]]) -> None:
        transaction.undo()
        self.remaining.clear()
        self.remaining.update(before)
        self.graph = self._build_graph()  # its index maps may have moved with the undo

    def _even_groups(self, feature: Feature, allowed: set[int]) -> set[int]:
        """`allowed` less what a grouped conv in the group cannot lose: every group of its
        channels (its outputs, or its inputs when it reads them) must keep as many as the
        others, so each group loses the fewest that any group can, the weakest first (the
        dead channels kept are exact as they are, like the latency rounding's)."""
        remaining = self.remaining[feature.name]
        score = self.strength.get(feature.name) if self.strength else None
        for _ in range(8):  # each grouped conv narrows it; a few passes settle it
            if not allowed:
                return allowed
            changed = False
            for item in self._group(feature, sorted(allowed)):
                module = item.dep.target.module
                size = _grouped_span(module, item.dep.handler, self.tp)
                if size is None:
                    continue
                by_group: dict[int, list[int]] = {}
                for idx, root in zip(item.idxs, item.root_idxs):
                    if root in allowed:
                        by_group.setdefault(idx // size, []).append(root)
                groups = module.groups
                fewest = min(len(by_group.get(g, [])) for g in range(groups))
                keep = []
                for roots in by_group.values():
                    roots.sort(key=lambda c: float(score[remaining[c]]) if score is not None
                               else c)  # weakest first
                    keep += roots[fewest:]
                if keep:
                    changed = True
                    allowed -= set(keep)
                    self.decisions[feature.name].keep(
                        [remaining[c] for c in keep],
                        f"kept so that the {groups} groups of the grouped conv "
                        f"{self.paths.get(id(module), '?')} lose as many ({fewest} each)")
            if not changed:
                return allowed
        return allowed

    def _never_empty(self, feature: Feature, chosen: list[int]) -> list[int]:
        """`chosen` less the strongest dead filter (and its norm group) of every layer the
        removal would empty."""
        remaining = self.remaining[feature.name]
        score = self.strength.get(feature.name) if self.strength else None
        while chosen:
            emptied = [item for item in self._group(feature, chosen)
                       if item.dep.handler in self.producers
                       and len(item.idxs) >= _out_size(item.dep.target.module)]
            if not emptied:
                break
            keep = max(chosen, key=lambda c: float(score[remaining[c]])
                       if score is not None else -c)
            for c in _with_its_group(feature, keep, chosen, remaining, self.group_size):
                chosen.remove(c)
                self.decisions[feature.name].kept_last.append(remaining[c])
        return chosen

    def _remove_chosen(self, feature: Feature, chosen: list[int],
                       folds: list[tuple[int, Feature, float]]) -> None:
        decision = self.decisions[feature.name]
        originals = {c: self.remaining[feature.name][c] for c in chosen}
        problem = self._attempt(feature, chosen, folds)
        folded = {c for c, _, _ in folds}
        if problem is not None and any(c in chosen for c in folded):
            # the folds may be what is not exact: try the channels that output zero alone
            zero = [c for c in chosen if c not in folded]
            decision.keep([originals[c] for c in chosen if c in folded],
                          f"folding its constant is not exact ({problem})")
            problem = self._attempt(feature, zero, []) if zero else None
            if problem is not None:
                decision.keep([originals[c] for c in zero], problem)
        elif problem is not None:
            decision.keep(list(originals.values()), problem)

    # --- the transaction ---------------------------------------------------------------
    def _attempt(self, feature: Feature, chosen: list[int],
                 folds: list[tuple[int, Feature, float]]) -> str | None:
        """Remove `chosen` (current indices) of `feature` with their group, folding the
        constants of `folds`; undo and say why when that is not exact."""
        group = self._group(feature, chosen)
        folds = [fold for fold in folds if fold[0] in chosen]
        touched = [item.dep.target.module for item in group]
        touched += [self.model.get_submodule(p) for _, target, _ in folds
                    for p in target.consumers]
        transaction = _Transaction(touched) if self.exact else None
        before = {name: list(r) for name, r in self.remaining.items()}
        for current, target, value in folds:
            _fold_constant(self.model, target, current, target.num_features, value)
        removed = self._record_removal(group)
        self.widths_changed += 1
        try:
            _prune_group(group)
        except Exception as error:  # torch-pruning's index mapping, a shape it cannot fix
            problem = (f"torch-pruning cannot remove it ({type(error).__name__}: "
                       f"{first_line(error, 80)})")
        else:
            _regroup_norm(self.model, feature, self.group_size)
            problem = self.outputs.change() if self.outputs is not None else None
        if problem is None:
            self._record_success(removed)
            self.decisions[feature.name].folded += [before[feature.name][c]
                                                    for c, _, _ in folds]
            return None
        if transaction is None:
            raise ImplicitSparsityError(f"{feature.name}: {problem}")
        self._roll_back(transaction, before)
        return problem

    def _record_removal(self, group) -> dict[str, list[int]]:
        """Per feature the group narrows: the original indices it loses (and `remaining`
        updated to what stays)."""
        removed = {}
        for item in group:
            module = item.dep.target.module
            if item.dep.handler in self.conv_out and id(module) in self.by_conv:
                name = self.by_conv[id(module)].name
                gone = set(item.idxs)
                removed[name] = [self.remaining[name][i] for i in sorted(gone)]
                self.remaining[name] = [r for i, r in enumerate(self.remaining[name])
                                        if i not in gone]
        return removed


@contextlib.contextmanager
def _tolerant_reshape_mapping(unmapped: set):
    """While the dependency graph is built, a reshape whose channel index map torch-pruning
    cannot work out (a channel shuffle: it divides by zero) is recorded in `unmapped`
    instead of failing the whole model; every group through it is then kept, and the rest
    of the model (a shuffle unit's inner layers, say) can still lose its dead channels."""
    try:
        from torch_pruning.dependency import index_mapping
        original = index_mapping.update_reshape_index_mapping
    except (ImportError, AttributeError):  # another layout: build as torch-pruning does
        yield
        return

    def tolerant(graph, node):
        try:
            original(graph, node)
        except ArithmeticError:
            unmapped.add(node)

    index_mapping.update_reshape_index_mapping = tolerant
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = original


@contextlib.contextmanager
def _index_maps_once_per_change(surgery: "_Surgery"):
    """torch-pruning recomputes every index map of the whole graph at each group it builds;
    they depend only on the layers' widths, so during the surgery they are recomputed once
    per removal (and for each new graph) instead: the same maps, far fewer passes."""
    try:
        from torch_pruning.dependency import graph as graph_module
        original = graph_module.index_mapping.update_index_mapping
    except (ImportError, AttributeError):
        yield
        return

    def once(graph):
        if getattr(graph, "_implicit_sparsity_widths", None) != surgery.widths_changed:
            original(graph)
            graph._implicit_sparsity_widths = surgery.widths_changed

    graph_module.index_mapping.update_index_mapping = once
    try:
        yield
    finally:
        graph_module.index_mapping.update_index_mapping = original


def _grouped_span(module: nn.Module, handler, tp) -> int | None:
    """Channels per group when `handler` narrows a grouped (not depthwise) conv's outputs or
    inputs, else None."""
    if not isinstance(module, nn.Conv2d) or module.groups == 1 or (
            module.groups == module.in_channels == module.out_channels):
        return None
    if handler == tp.prune_conv_in_channels:
        return module.in_channels // module.groups
    if handler == tp.prune_conv_out_channels:
        return module.out_channels // module.groups
    return None


def _prune_group(group) -> None:
    """Carry out a torch-pruning group. A grouped conv reading the channels loses, in each
    of its groups, the input columns of that group's removed channels (torch-pruning would
    cut the same columns from every group); the rest is torch-pruning's own."""
    tp = require_torch_pruning()
    readers = [item for item in group if isinstance(item.dep.target.module, nn.Conv2d)
               and item.dep.handler == tp.prune_conv_in_channels
               and _grouped_span(item.dep.target.module, item.dep.handler, tp)]
    if not readers:
        group.prune()
        return
    for item in group:
        if not isinstance(item.dep.target.module, nn.Module):
            raise ImplicitSparsityError("a grouped conv reads channels that also feed a bare "
                                        "parameter: not removed")
    for item in group:
        if any(item is reader for reader in readers):
            _prune_grouped_inputs(item.dep.target.module, [int(i) for i in item.idxs])
        else:
            item.dep(item.idxs)


@torch.no_grad()
def _prune_grouped_inputs(conv: nn.Conv2d, idxs: list[int]) -> None:
    """Remove input channels `idxs` of a grouped conv: each group's own columns (as many in
    every group, or the conv would not run)."""
    span_in = conv.in_channels // conv.groups
    span_out = conv.out_channels // conv.groups
    gone = set(idxs)
    keep = [[p for p in range(span_in) if g * span_in + p not in gone]
            for g in range(conv.groups)]
    if len({len(k) for k in keep}) != 1:
        raise ImplicitSparsityError(f"uneven removal from the groups of {conv}")
    def columns(tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor[g * span_out:(g + 1) * span_out][:, keep[g]]
                          for g in range(conv.groups)], 0).contiguous()

    weight = conv.weight.detach()
    source = torch.arange(weight.numel()).reshape(weight.shape)
    conv.weight = nn.Parameter(columns(weight), requires_grad=conv.weight.requires_grad)
    note_selection(conv, "weight", columns(source))
    conv.in_channels = conv.groups * len(keep[0])


def _with_its_group(feature: Feature, current: int, chosen: list[int], originals: list[int],
                    group_size: dict[str, int]) -> list[int]:
    """`current` and, under a shared norm, the chosen channels of its group (current
    indices; `originals` maps them to original ones): a layer that must keep a channel
    keeps its whole group."""
    size = group_size.get(feature.name)
    if not size:
        return [current]
    return [c for c in chosen if originals[c] // size == originals[current] // size]


def _regroup_norm(model: nn.Module, feature: Feature, group_size: dict[str, int]) -> None:
    """After whole groups of a feature's channels went, its GroupNorm has fewer groups of
    the same size (torch-pruning narrows it but keeps its group count)."""
    if feature.norm_path is None or feature.name not in group_size:
        return
    norm = model.get_submodule(feature.norm_path)
    if isinstance(norm, nn.GroupNorm) and norm.num_channels % group_size[feature.name] == 0:
        norm.num_groups = norm.num_channels // group_size[feature.name]


def _out_size(module: nn.Module) -> int:
    """The output width of a producer (conv, linear, ...), for "never empty a layer"."""
    for name in ("out_channels", "out_features", "num_embeddings"):
        if hasattr(module, name):
            return int(getattr(module, name))
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if weight is not None else 1 << 30


@torch.no_grad()
def fold_batchnorm(model: nn.Module, traced: TracedModel) -> int:
    """Fold each feature's BatchNorm (eval statistics) into its conv, for deployment.
    Returns the number of BatchNorm layers folded (replaced by identities)."""
    folded = 0
    for feature in traced.features:
        bn, conv = feature.bn, feature.conv
        if bn is None or feature.bn_has_activation or bn.running_var is None:
            continue  # a BN-with-activation module keeps its activation: not folded
        scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight
        conv.weight.mul_(scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1)))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * scale + (bn.bias if bn.affine else 0.0)
        conv.bias = nn.Parameter(new_bias.detach().clone())
        parent_path, _, child = feature.bn_path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, nn.Identity())
        folded += 1
    return folded
