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


@torch.no_grad()
def compare_outputs(before: nn.Module, after: nn.Module, batches) -> Equivalence:
    """Run both models (eval mode) over `batches` of inputs or (inputs, labels)."""
    before.eval()
    after.eval()
    samples = changed = wrong_before = wrong_after = top5_before = top5_after = nonfinite = 0
    max_diff = max_logit = 0.0
    labelled = False
    for batch in (batches() if callable(batches) else batches):
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        a, b = _widened(before(x)), _widened(after(x))  # float64 stays float64
        finite = torch.isfinite(a).flatten(1).all(1) & torch.isfinite(b).flatten(1).all(1)
        nonfinite += int((~finite).sum())
        if finite.any():
            max_diff = max(max_diff, (a[finite] - b[finite]).abs().max().item())
            max_logit = max(max_logit, a[finite].abs().max().item())
        changed += int((a.argmax(1) != b.argmax(1)).sum())
        if y is not None:
            labelled = True
            wrong_before += int(count_wrong(a, y))
            wrong_after += int(count_wrong(b, y))
            top5_before += int(count_wrong(a, y, TOP_K))
            top5_after += int(count_wrong(b, y, TOP_K))
        samples += len(x)
    def error(wrong):
        return 100.0 * wrong / samples if labelled and samples else None
    return Equivalence(samples, max_diff, max_logit, changed, error(wrong_before),
                       error(wrong_after), error(top5_before), error(top5_after), nonfinite)
