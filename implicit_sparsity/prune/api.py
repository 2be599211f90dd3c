"""`prune_model`: dead filters out, proof in, cost measured. Works on any traceable CNN."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError, ProofError
from implicit_sparsity.measure.activation import activation_statistics
from implicit_sparsity.measure.features import (
    CONV_UNITS,
    require_batchnorm,
    require_finite,
    trace_features,
)
from implicit_sparsity.measure.scale import inactive_by_gamma
from implicit_sparsity.prune.cost import describe_latency, latency_table, macs, parameter_counts
from implicit_sparsity.prune.proof import Equivalence, compare_outputs
from implicit_sparsity.prune.surgery import LayerDecision, fold_batchnorm, remove_dead_filters

CRITERIA = ("gamma", "activation")
#: Largest |logits before - logits after| / max |logits| accepted as "unchanged" (and no
#: test prediction may change). Exact removals stay far below; |gamma| that is small but
#: not zero leaves a trace of this order at most.
DEFAULT_TOLERANCE = 1e-4
#: Each removal is checked on the example batch against this share of max |output|: float32
#: rounding of a removal that changes nothing is ~1e-7 of it, an inexact one far more.
DEFAULT_STEP_TOLERANCE = 1e-5


@dataclass
class PruneResult:
    model: nn.Module                      # the slim model (the input model is untouched)
    criterion: str
    layers: list[LayerDecision]
    equivalence: Equivalence | None
    params: dict = field(default_factory=dict)   # {"before": {...}, "after": {...}}
    macs: dict = field(default_factory=dict)
    conv_macs: dict = field(default_factory=dict)  # per conv layer name: before, after
    conv_params: dict = field(default_factory=dict)
    latency: list[dict] = field(default_factory=list)
    folded_batchnorm: int = 0
    mlp_units: bool = False  # some layers are MLP units (Linear), not conv filters

    def verified(self, tolerance: float = DEFAULT_TOLERANCE) -> bool:
        return self.equivalence is not None and self.equivalence.holds(tolerance)

    @property
    def mac_reduction(self) -> float:
        return self.macs["before"] / max(1, self.macs["after"])

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "layers": [
            {**l.to_dict(), "conv_params": self.conv_params.get(l.name),
             "macs": self.conv_macs.get(l.name)} for l in self.layers],
            "equivalence": self.equivalence.to_dict() if self.equivalence else None,
            "params": self.params, "macs": self.macs, "mac_reduction": self.mac_reduction,
            "latency": self.latency, "folded_batchnorm": self.folded_batchnorm}

    def table(self) -> str:
        def arrow(pair: dict) -> str:
            return f"{pair.get('before', 0):,} -> {pair.get('after', 0):,}"

        unit, weights = ("units", "unit weights") if self.mlp_units else ("filters",
                                                                          "conv params")
        name = max([12] + [len(l.name) + 1 for l in self.layers])
        lines = [f"{'layer':{name}s}{unit:>16s}{weights:>24s}{'MACs':>26s}"]
        for l in self.layers:
            filters = {"before": l.filters_before, "after": l.filters_after}
            lines.append(f"{l.name:{name}s}{arrow(filters):>16s}"
                         f"{arrow(self.conv_params.get(l.name, {})):>24s}"
                         f"{arrow(self.conv_macs.get(l.name, {})):>26s}")
        before = sum(l.filters_before for l in self.layers)
        after = sum(l.filters_after for l in self.layers)
        conv = {k: self.params[k]["conv"] for k in ("before", "after")}
        if self.mlp_units:  # the unit layers' own weights, conv and Linear
            conv = {k: sum(p.get(k, 0) for p in self.conv_params.values())
                    for k in ("before", "after")}
        lines.append(f"{'total':{name}s}{arrow({'before': before, 'after': after}):>16s}"
                     f"{arrow(conv):>24s}{arrow(self.macs):>26s}")
        lines.append(f"{unit} removed: {100 * (1 - after / max(1, before)):.1f}%, all params "
                     f"{self.params['before']['all']:,} -> {self.params['after']['all']:,}, "
                     f"MAC reduction {self.mac_reduction:.2f}x")
        kept = {k: sum(len(getattr(l, k)) for l in self.layers)
                for k in ("kept_constant", "kept_coupled", "kept_last", "kept_unsafe")}
        folded = sum(len(l.folded) for l in self.layers)
        if any(kept.values()) or folded:
            lines.append(f"dead but kept: {kept['kept_constant']} constant (not foldable), "
                         f"{kept['kept_coupled']} coupled with a live channel, "
                         f"{kept['kept_last']} last of their layer, {kept['kept_unsafe']} "
                         f"whose removal would not be exact; {folded} constant filters "
                         "folded into the next layer's bias")
        for l in self.layers:
            for reason, count in l.reasons.items():
                lines.append(f"  {l.name}: {count} kept: {reason}")
        lines += [describe_latency(row) for row in self.latency]
        if self.equivalence is not None:
            e = self.equivalence
            errors = (f", test error {e.error_before:.2f}% -> {e.error_after:.2f}%"
                      if e.error_before is not None else "")
            lines.append(f"proof on {e.samples} samples: {e.describe()}{errors}")
        return "\n".join(lines)


def dead_masks(model: nn.Module, criterion: str, corpus=None,
               gamma_threshold: float = defaults.GAMMA_THRESHOLD,
               activation_threshold: float = defaults.ACTIVATION_THRESHOLD,
               units: tuple[str, ...] = CONV_UNITS):
    """(dead, strength) per feature name: which channels are dead, and how alive each is."""
    features = trace_features(model, units).features
    require_finite(model)
    if criterion == "gamma":
        require_batchnorm(features)
        dead = {f.name: inactive_by_gamma(f.gamma, gamma_threshold).cpu()
                for f in features if f.gamma is not None}
        strength = {f.name: f.gamma.detach().abs().cpu() for f in features
                    if f.gamma is not None}
        return dead, strength
    if criterion == "activation":
        if corpus is None:
            raise ConfigError("pruning by activation needs the training corpus")
        stats = activation_statistics(model, corpus, universality=False, units=units)
        return stats.inactive(activation_threshold), stats.max_activation
    raise ConfigError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")


def keep_for_width(dead: dict[str, torch.Tensor], strength: dict[str, torch.Tensor] | None,
                   multiple: int | dict[str, int]) -> dict[str, torch.Tensor]:
    """Dead masks with a few dead units kept, so that each layer keeps a multiple of
    `multiple` units (the widths CPU / GPU conv kernels run fastest at); one multiple for
    all layers, or one per layer name (a layer not named: 1, left as it is). Exact: a kept
    unit is left as it is. The dead units kept are the strongest (largest |gamma| or
    activation), in index order on ties."""
    per_layer = multiple if isinstance(multiple, dict) else dict.fromkeys(dead, multiple)
    if all(m <= 1 for m in per_layer.values()):
        return dead
    rounded = {}
    for name, mask in dead.items():
        multiple = per_layer.get(name, 1)
        if multiple <= 1:
            rounded[name] = mask
            continue
        mask = mask.clone()
        alive = int((~mask).sum())
        target = min(len(mask), max(multiple, -(-alive // multiple) * multiple))
        extra = target - alive
        if extra > 0:
            candidates = mask.nonzero().flatten()
            if strength is not None and name in strength:
                order = torch.argsort(strength[name][candidates].float(), descending=True,
                                      stable=True)
                candidates = candidates[order]
            mask[candidates[:extra]] = False
        rounded[name] = mask
    return rounded


def _per_conv(model, traced, per_module: dict) -> dict[str, int]:
    return {f.name: per_module.get(f.conv_path, 0) for f in traced.features}


def prune_model(model: nn.Module, example_input: torch.Tensor, *, criterion: str = "gamma",
                corpus=None, check_data=None,
                gamma_threshold: float = defaults.GAMMA_THRESHOLD,
                activation_threshold: float = defaults.ACTIVATION_THRESHOLD,
                fold_bn: bool = False, latency_batches: tuple[int, ...] = (),
                threads: int | None = None, min_run_time: float = 0.5,
                selection: dict[str, torch.Tensor] | None = None,
                tolerance: float = DEFAULT_TOLERANCE, force: bool = False,
                units: tuple[str, ...] = CONV_UNITS,
                round_to: int | dict[str, int] = 1,
                analysis_seconds: float = defaults.ANALYSIS_SECONDS) -> PruneResult:
    """Remove the dead filters of a copy of `model`; `model` itself is left as it was (its
    weights and the train / eval mode of every module).

    `example_input`: one input batch (shapes for tracing and MACs). `corpus`: the training
    corpus, for the activation criterion. `check_data`: batches (inputs or (inputs,
    labels)) on which outputs before and after are compared, the proof. `latency_batches`:
    batch sizes at which latency is measured (default: none; `(1, 64)` as `prune` does).
    `selection`: masks of filters
    to remove whatever they compute (an explicit method's choice, see
    `implicit_sparsity.explicit`); predictions then change, and fine-tuning follows.
    `units=ALL_UNITS`: MLP units (Linear -> activation) too, besides conv filters.
    `round_to`: keep enough dead units that each layer's width is a multiple of it, or of
    its entry per layer name (the latency-tuned model of `prune.tune`; 1: the exact minimum).
    `analysis_seconds`: the removal's analysis is refused (AnalysisBudgetError, one line
    naming the layer) past this many seconds or half the memory available.

    Exact or refused: when dead filters are removed and `check_data` is given, a slim model
    whose outputs differ beyond `tolerance` (relative to max |logit|), change a prediction or
    are not finite raises `ProofError`, unless `force` (the result then says so).
    """
    with eval_mode(model):  # measured and compared in eval mode; the caller's modes come back
        return _prune_in_eval(model, example_input, criterion, corpus, check_data,
                              gamma_threshold, activation_threshold, fold_bn, latency_batches,
                              threads, min_run_time, selection, tolerance, force, units,
                              round_to, analysis_seconds)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """`model` in eval mode for the block, then every module back in the mode it had (a
    frozen BatchNorm inside a training model stays frozen)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def _prune_in_eval(model, example_input, criterion, corpus, check_data, gamma_threshold,
                   activation_threshold, fold_bn, latency_batches, threads, min_run_time,
                   selection, tolerance, force, units, round_to,
                   analysis_seconds) -> PruneResult:
    if selection is not None:
        dead, strength, criterion = selection, None, "selection"
    else:
        dead, strength = dead_masks(model, criterion, corpus, gamma_threshold,
                                    activation_threshold, units)
        rounds = round_to.values() if isinstance(round_to, dict) else (round_to,)
        if max(rounds, default=1) > 1:  # round the widths the removal leaves: see what it removes
            trial = copy.deepcopy(model).eval()
            removable = remove_dead_filters(
                trial, trace_features(trial, units), dead, example_input, strength,
                zero_when_dead=criterion == "activation",
                tolerance=min(tolerance, DEFAULT_STEP_TOLERANCE),
                analysis_seconds=analysis_seconds)
            dead = {d.name: torch.isin(torch.arange(len(dead[d.name])),
                                       torch.tensor(d.removed, dtype=torch.long))
                    for d in removable if d.name in dead}
            dead = keep_for_width(dead, strength, round_to)
    slim = copy.deepcopy(model).eval()
    example = example_input[:1]
    before_traced = trace_features(model, units)
    macs_before = macs(model, example)
    traced = trace_features(slim, units)
    decisions = remove_dead_filters(slim, traced, dead, example_input, strength,
                                    exact=selection is None,
                                    zero_when_dead=criterion == "activation",
                                    tolerance=min(tolerance, DEFAULT_STEP_TOLERANCE),
                                    analysis_seconds=analysis_seconds)
    folded = fold_batchnorm(slim, traced) if fold_bn else 0
    macs_after = macs(slim, example)
    equivalence = compare_outputs(model, slim, check_data) if check_data is not None else None
    if (equivalence is not None and selection is None and not force
            and not equivalence.holds(tolerance)):
        raise ProofError(f"removing the dead filters changed the outputs: "
                         f"{equivalence.describe()} (tolerance {tolerance:g}); refused "
                         "(force=True returns the slim model anyway)")
    conv_params = {f.name: {"before": b.conv.weight.numel(), "after": f.conv.weight.numel()}
                   for f, b in zip(traced.features, before_traced.features)}
    before_per = _per_conv(model, before_traced, macs_before["per_module"])
    after_per = _per_conv(slim, traced, macs_after["per_module"])
    conv_macs = {name: {"before": before_per[name], "after": after_per[name]}
                 for name in before_per}
    rows = latency_table(model, slim, example_input, latency_batches, threads, min_run_time) \
        if latency_batches else []
    return PruneResult(slim, criterion, decisions, equivalence,
                       {"before": parameter_counts(model), "after": parameter_counts(slim)},
                       {"before": macs_before["total"], "after": macs_after["total"]},
                       conv_macs, conv_params, rows, folded,
                       any(f.kind == "linear" for f in traced.features))
