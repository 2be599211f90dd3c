"""Per-layer sparsity report of any CNN: by |gamma|, by activation, universality, % params.

`analyze(model, batches)` is the Python API behind `implicit-sparsity analyze`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.measure.activation import activation_statistics
from implicit_sparsity.measure.features import (
    CONV_UNITS,
    TracedModel,
    count_conv_params,
    require_batchnorm,
    require_finite,
    trace_features,
)
from implicit_sparsity.measure.scale import inactive_by_gamma

CRITERIA = ("gamma", "activation", "both")
#: Universality histogram bins (% of the corpus), as on the x-axis of the paper's Fig. 3.
UNIVERSALITY_BINS = tuple(range(0, 101, 10))


@dataclass
class LayerReport:
    name: str
    features: int
    has_batchnorm: bool
    coupled: bool
    inactive_gamma: int | None = None
    inactive_activation: int | None = None
    agree: int | None = None          # features on which both criteria give the same verdict
    universality: list[float] | None = None
    inactive_dormant: int | None = None  # ReDo-dormant units (score <= tau), when asked
    kind: str = "conv"                # conv filters, or MLP units ("linear")

    def percent(self, count: int | None) -> float | None:
        return None if count is None else 100.0 * count / self.features

    def universality_histogram(self) -> dict | None:
        if self.universality is None:
            return None
        counts = torch.histc(torch.tensor(self.universality), bins=len(UNIVERSALITY_BINS) - 1,
                             min=0, max=100)
        return {"edges": list(UNIVERSALITY_BINS), "counts": [int(c) for c in counts],
                "zero": sum(1 for u in self.universality if u == 0.0)}

    def to_dict(self) -> dict:
        return {"name": self.name, "features": self.features,
                "has_batchnorm": self.has_batchnorm, "coupled": self.coupled,
                "inactive_gamma": self.inactive_gamma,
                "inactive_activation": self.inactive_activation, "agree": self.agree,
                "percent_gamma": self.percent(self.inactive_gamma),
                "percent_activation": self.percent(self.inactive_activation),
                "universality_histogram": self.universality_histogram(),
                "universality": self.universality, "kind": self.kind,
                "inactive_dormant": self.inactive_dormant,
                "percent_dormant": self.percent(self.inactive_dormant)}


@dataclass
class SparsityReport:
    layers: list[LayerReport]
    conv_params: int
    conv_params_kept: dict[str, int] = field(default_factory=dict)  # criterion -> kept
    samples: int | None = None
    thresholds: dict = field(default_factory=dict)
    unmeasured: list[str] = field(default_factory=list)  # convolutions no feature covers

    def total(self, criterion: str) -> tuple[int, int] | None:
        """(inactive, features) over all conv layers, or None if not measured."""
        counts = [getattr(l, f"inactive_{criterion}") for l in self.layers]
        counted = [(c, l.features) for c, l in zip(counts, self.layers) if c is not None]
        if not counted:
            return None
        return sum(c for c, _ in counted), sum(n for _, n in counted)

    def percent_params_pruned(self, criterion: str) -> float | None:
        if criterion not in self.conv_params_kept or not self.conv_params:
            return None  # not measured, or a model without convolutions
        return 100.0 * (1 - self.conv_params_kept[criterion] / self.conv_params)

    def to_dict(self) -> dict:
        totals = {}
        for criterion in ("gamma", "activation"):
            t = self.total(criterion)
            totals[criterion] = None if t is None else {
                "inactive": t[0], "features": t[1], "percent": 100.0 * t[0] / t[1],
                "percent_params_pruned": self.percent_params_pruned(criterion)}
        return {"layers": [l.to_dict() for l in self.layers], "total": totals,
                "conv_params": self.conv_params, "conv_params_kept": self.conv_params_kept,
                "samples": self.samples, "thresholds": self.thresholds,
                "unmeasured_convolutions": self.unmeasured}

    def table(self) -> str:
        """The layout of the paper's Table 2: % inactive per layer, total, % params pruned."""
        width = max(7, max(len(l.name) for l in self.layers) + 1)
        head = f"{'':15s}" + "".join(f"{l.name:>{width}s}" for l in self.layers)
        sizes = f"{'':15s}" + "".join(f"{f'({l.features})':>{width}s}" for l in self.layers)
        total_features = sum(l.features for l in self.layers)
        lines = [head + f"{'Total':>9s}{'% Param':>12s}",
                 sizes + f"{f'({total_features})':>9s}{f'({self.conv_params})':>12s}"]
        labels = {"gamma": f"|gamma| < {self.thresholds.get('gamma', 0):g}",
                  "activation": f"act <= {self.thresholds.get('activation', 0):g}",
                  "dormant": f"ReDo <= {self.thresholds.get('dormancy_tau', 0):g}"}
        for criterion in ("gamma", "activation", "dormant"):
            t = self.total(criterion)
            if t is None:
                continue
            percents = [l.percent(getattr(l, f"inactive_{criterion}")) for l in self.layers]
            cells = "".join(f"{'-' if p is None else round(p):>{width}}" for p in percents)
            params = self.percent_params_pruned(criterion)
            lines.append(f"{labels[criterion]:15s}{cells}{100.0 * t[0] / t[1]:9.1f}"
                         + (f"{params:12.1f}" if params is not None else f"{'-':>12s}"))
        return "\n".join(lines)


def analyze(model: nn.Module, batches: Iterable | None = None, *, criterion: str = "both",
            gamma_threshold: float = defaults.GAMMA_THRESHOLD,
            activation_threshold: float = defaults.ACTIVATION_THRESHOLD,
            universality_threshold: float = defaults.UNIVERSALITY_THRESHOLD,
            universality: bool = True, units: tuple[str, ...] = CONV_UNITS,
            dormancy_tau: float | None = None, max_batches: int | None = None,
            traced: TracedModel | None = None) -> SparsityReport:
    """Measure a model's conv-feature sparsity.

    `batches` (the training corpus, re-iterable or a callable returning an iterator) is
    needed for the activation criterion and universality. Sparsity by |gamma| needs
    BatchNorm after the convolutions; a model without raises NoBatchNormError (activation
    still works for it). `units=ALL_UNITS` also measures MLP units (measure.features);
    `dormancy_tau` also counts ReDo-dormant units; `max_batches` measures activations on the
    first batches only (a cheaper estimate for monitoring: a unit silent there may fire
    elsewhere, so the full corpus decides what is dead). `traced`: a fresh trace of
    `model` with these `units` (saves tracing again; it serves this call only).
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    use_gamma = criterion in ("gamma", "both")
    use_activation = criterion in ("activation", "both")
    if use_activation and batches is None:
        raise ConfigError("sparsity by activation needs the training corpus (batches)")
    require_finite(model)  # a diverged model would report 0% sparsity, not an error
    if traced is None:
        traced = trace_features(model, units)
    features = traced.features
    if use_gamma:
        require_batchnorm(features)
    layers = [LayerReport(f.name, f.num_features, f.gamma is not None, f.coupled, kind=f.kind)
              for f in features]
    if max_batches is not None and batches is not None:
        batches = _first(batches, max_batches)
    dead_gamma = ({f.name: inactive_by_gamma(f.gamma, gamma_threshold).cpu()
                   for f in features if f.gamma is not None} if use_gamma else {})
    stats = None
    dead_act: dict[str, torch.Tensor] = {}
    if use_activation:  # non-finite activations raise NonFiniteError there
        stats = activation_statistics(model, batches, universality=universality,
                                      universality_threshold=universality_threshold,
                                      mean_abs=dormancy_tau is not None, units=units,
                                      traced=traced)
        dead_act = stats.inactive(activation_threshold)
    _fill_layers(layers, dead_gamma, dead_act, stats, dormancy_tau)
    modules = dict(model.named_modules())
    conv_params, _ = count_conv_params(features, traced.input_feature, modules=modules)
    kept = {}
    for name, dead in (("gamma", dead_gamma), ("activation", dead_act)):
        if dead:
            kept[name] = count_conv_params(features, traced.input_feature,
                                           {k: ~v for k, v in dead.items()}, modules)[1]
    return SparsityReport(layers, conv_params, kept, stats.samples if stats else None,
                          {"gamma": gamma_threshold, "activation": activation_threshold,
                           "universality": universality_threshold,
                           **({"dormancy_tau": dormancy_tau} if dormancy_tau is not None
                              else {})}, traced.unmeasured)


def _fill_layers(layers: list[LayerReport], dead_gamma: dict, dead_act: dict, stats,
                 dormancy_tau: float | None) -> None:
    """Each layer's counts by |gamma|, by activation, their agreement, ReDo dormancy and
    universality, from what was measured."""
    scores = stats.dormancy() if stats is not None and dormancy_tau is not None else {}
    for layer in layers:
        if layer.name in scores:
            layer.inactive_dormant = int((scores[layer.name] <= dormancy_tau).sum())
        g, a = dead_gamma.get(layer.name), dead_act.get(layer.name)
        layer.inactive_gamma = None if g is None else int(g.sum())
        layer.inactive_activation = None if a is None else int(a.sum())
        if g is not None and a is not None:
            layer.agree = int((g == a).sum())
        if stats is not None and stats.universality is not None:
            layer.universality = [round(float(u), 4) for u in stats.universality[layer.name]]


def _first(batches, count: int):
    """The first `count` batches of `batches` (re-iterable, or a callable), re-iterable."""
    def take():
        source = batches() if callable(batches) else batches
        for i, batch in enumerate(source):
            if i >= count:
                return
            yield batch
    return take
