"""The one rule by which a difference between runs counts: means over seeds, compared
against the seeds' spread (the findings' verdicts, the explicit arms' fine-tuning flag).

A claim "A > B" holds when the difference of the means exceeds the seeds' spread (the root
of the summed variances) and `MIN_EFFECT` percentage points; it does not hold when the
difference is that large the other way; otherwise it is inconclusive. A claim of several
parts holds when every part holds, does not hold when any part does not, and is
inconclusive otherwise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

#: The smallest difference (percentage points) that counts as an effect.
MIN_EFFECT = 1.0
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass
class Stat:
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return cls(float("nan"), float("nan"), 0)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))

    def __str__(self) -> str:
        if not self.n:
            return "-"
        return f"{self.mean:.1f} ± {self.std:.1f}" if self.n > 1 else f"{self.mean:.1f}"


def compare(a: Stat, b: Stat) -> str:
    """Does A exceed B (see the module's rule)?"""
    if not a.n or not b.n:
        return INCONCLUSIVE
    difference = a.mean - b.mean
    margin = max(math.sqrt(a.std ** 2 + b.std ** 2), MIN_EFFECT)
    if difference > margin:
        return HOLDS
    if difference < -margin:
        return FAILS
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == FAILS for v in verdicts):
        return FAILS
    return INCONCLUSIVE
