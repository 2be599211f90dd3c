"""How much the counts depend on the thresholds: per layer, the units counted inactive by
|gamma| and by activation, and dormant by ReDo's score, at several thresholds each, from one
pass over the corpus.

The paper states its thresholds (|gamma| < 1e-3, max |activation| <= 1e-12) without showing
how the counts move with them. ReDo (Sokar et al., ICML 2023, "The Dormant Neuron
Phenomenon in Deep Reinforcement Learning") scores a unit by its mean |activation| over
samples and positions divided by its layer's mean of that, and calls it dormant when the
score is <= tau; only exactly dead units can be removed without changing the outputs, the
dormant-but-alive ones need fine-tuning (see `explicit`).
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.measure.activation import activation_statistics
from implicit_sparsity.measure.features import CONV_UNITS, require_finite, trace_features


def sensitivity(model: nn.Module, batches: Iterable | None = None, *,
                gamma_thresholds=defaults.SENSITIVITY_GAMMA,
                activation_thresholds=defaults.SENSITIVITY_ACTIVATION,
                taus=defaults.SENSITIVITY_TAU,
                units: tuple[str, ...] = CONV_UNITS) -> dict[str, dict]:
    """{layer: {"features": n, "gamma": {t: count}, "activation": {t: count},
    "dormant": {tau: count}}}; by activation and dormancy only when `batches` are given.
    `units=ALL_UNITS` also counts MLP units (measure.features)."""
    require_finite(model)
    features = trace_features(model, units).features
    table = {f.name: {"features": f.num_features, "gamma": {}, "activation": {}, "dormant": {}}
             for f in features}
    for f in features:
        if f.gamma is not None:
            magnitude = f.gamma.detach().abs().cpu()
            table[f.name]["gamma"] = {t: int((magnitude < t).sum()) for t in gamma_thresholds}
    if batches is not None:
        stats = activation_statistics(model, batches, universality=False, mean_abs=True,
                                      units=units)
        scores = stats.dormancy()
        for name, maxima in stats.max_activation.items():
            table[name]["activation"] = {t: int((maxima <= t).sum())
                                         for t in activation_thresholds}
            table[name]["dormant"] = {tau: int((scores[name] <= tau).sum()) for tau in taus}
    return table


def sensitivity_json(table: dict[str, dict]) -> dict:
    """The table with its thresholds as strings (JSON keys)."""
    return {name: {key: {f"{t:g}": count for t, count in value.items()}
                   if isinstance(value, dict) else value for key, value in row.items()}
            for name, row in table.items()}


def sensitivity_table(table: dict[str, dict]) -> str:
    """Rows: a criterion at a threshold; columns: layers and the total (% in brackets)."""
    names = list(table)
    width = max(7, max((len(n) for n in names), default=5) + 1)
    total = sum(row["features"] for row in table.values())
    lines = [f"{'':22s}" + "".join(f"{n:>{width}s}" for n in names) + f"{'total':>14s}",
             f"{'':22s}" + "".join(f"{'(' + str(table[n]['features']) + ')':>{width}s}"
                                   for n in names) + f"{'(' + str(total) + ')':>14s}"]
    labels = {"gamma": "|gamma| < {:g}", "activation": "act <= {:g}",
              "dormant": "ReDo tau <= {:g}"}
    for criterion, label in labels.items():
        thresholds = sorted({t for row in table.values() for t in row[criterion]})
        for t in thresholds:
            counts = [table[n][criterion].get(t) for n in names]
            known = [c for c in counts if c is not None]
            if not known:
                continue
            share = 100.0 * sum(known) / max(1, sum(table[n]["features"] for n, c
                                                    in zip(names, counts) if c is not None))
            cells = "".join(f"{'-' if c is None else c:>{width}}" for c in counts)
            lines.append(f"{label.format(t):22s}{cells}{sum(known):>7d} ({share:4.1f}%)")
    return "\n".join(lines)


__all__ = ["sensitivity", "sensitivity_json", "sensitivity_table"]
