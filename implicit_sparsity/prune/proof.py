"""The proof that pruning changed nothing: outputs before and after on the same data."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from implicit_sparsity.measure.classification import TOP_K, count_wrong


@dataclass
class Equivalence:
    samples: int
    max_abs_diff: float           # max |logits before - logits after|
    max_abs_logit: float
    changed_predictions: int      # samples whose argmax changed
    error_before: float | None    # % test error, when labels are given
    error_after: float | None
    error_top5_before: float | None = None  # % top-5 test error, when labels are given
    error_top5_after: float | None = None
    nonfinite_outputs: int = 0    # samples with a NaN / inf output in either model

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / max(self.max_abs_logit, 1e-12)

    def holds(self, tolerance: float) -> bool:
        """Outputs within `tolerance` of max |logit|, no prediction changed, all finite (a NaN
        compares false with everything, so it must be counted, never compared)."""
        return (self.nonfinite_outputs == 0 and self.relative_diff <= tolerance
                and self.changed_predictions == 0)

    def describe(self) -> str:
        return (f"max |delta logits| {self.max_abs_diff:.2e} ({self.relative_diff:.2e} of max "
                f"|logit|), {self.changed_predictions} of {self.samples} predictions changed"
                + (f", {self.nonfinite_outputs} samples with non-finite outputs"
                   if self.nonfinite_outputs else ""))

    def to_dict(self) -> dict:
        return {**asdict(self), "relative_diff": self.relative_diff}


def _widened(logits: torch.Tensor) -> torch.Tensor:
    """float32 for half / bfloat16 / float32 outputs; float64 ones are compared in float64,
    where an exact removal differs by rounding only (1e-16, not float32's 1e-7)."""
    return logits if logits.dtype == torch.float64 else logits.float()


class _Tally:
    """Sums, batch by batch, what an `Equivalence` reports."""

    def __init__(self):
        self.samples = self.changed = self.nonfinite = 0
        self.wrong = [0, 0]
        self.top5 = [0, 0]
        self.max_diff = self.max_logit = 0.0
        self.labelled = False

    def add(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor | None) -> None:
        a, b = _widened(a), _widened(b)  # float64 stays float64
        finite = torch.isfinite(a).flatten(1).all(1) & torch.isfinite(b).flatten(1).all(1)
        self.nonfinite += int((~finite).sum())
        if finite.any():
            self.max_diff = max(self.max_diff, (a[finite] - b[finite]).abs().max().item())
            self.max_logit = max(self.max_logit, a[finite].abs().max().item())
        self.changed += int((a.argmax(1) != b.argmax(1)).sum())
        if y is not None:
            self.labelled = True
            for i, logits in enumerate((a, b)):
                self.wrong[i] += int(count_wrong(logits, y))
                self.top5[i] += int(count_wrong(logits, y, TOP_K))
        self.samples += len(a)

    def result(self) -> Equivalence:
        def error(wrong):
            return 100.0 * wrong / self.samples if self.labelled and self.samples else None
        return Equivalence(self.samples, self.max_diff, self.max_logit, self.changed,
                           error(self.wrong[0]), error(self.wrong[1]), error(self.top5[0]),
                           error(self.top5[1]), self.nonfinite)


def compare_logits(before: torch.Tensor, after: torch.Tensor,
                   labels: torch.Tensor | None = None) -> Equivalence:
    """The proof from outputs already computed (a model edited in place, its outputs taken
    before and after)."""
    tally = _Tally()
    tally.add(before, after, labels)
    return tally.result()


@torch.no_grad()
def compare_outputs(before: nn.Module, after: nn.Module, batches) -> Equivalence:
    """Run both models (eval mode) over `batches` of inputs or (inputs, labels)."""
    before.eval()
    after.eval()
    tally = _Tally()
    for batch in (batches() if callable(batches) else batches):
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        tally.add(before(x), after(x), y)
    return tally.result()
