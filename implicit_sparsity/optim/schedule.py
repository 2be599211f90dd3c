"""The paper's step schedule: the base rate for E1 epochs, then /10 for E2, (/100 for E3)."""

from __future__ import annotations

from dataclasses import dataclass

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError


@dataclass(frozen=True)
class StepSchedule:
    stage_epochs: tuple[int, ...]
    decay: float = defaults.LR_DECAY_FACTOR

    def __post_init__(self):
        if not self.stage_epochs or any(int(e) < 0 for e in self.stage_epochs) \
                or sum(self.stage_epochs) < 1:
            raise ConfigError(f"epochs must be non-negative stage lengths with at least one "
                              f"epoch in all, got {list(self.stage_epochs)}")
        if self.decay <= 0:
            raise ConfigError(f"lr decay factor must be positive, got {self.decay}")

    @property
    def total_epochs(self) -> int:
        return sum(self.stage_epochs)

    def factor(self, epoch: int) -> float:
        """lr_t / lr_0 during `epoch` (0-based)."""
        boundary = 0
        for stage, length in enumerate(self.stage_epochs):
            boundary += length
            if epoch < boundary:
                return self.decay ** -stage
        return self.decay ** -(len(self.stage_epochs) - 1)


def same_iterations_epochs(stage_epochs, batch_size: int, reference_batch_size: int
                           ) -> tuple[int, ...]:
    """Stage lengths that keep the number of iterations of `reference_batch_size` (section 5):
    epochs scale with batch_size / reference, rounded, at least 1 for a non-empty stage."""
    if reference_batch_size < 1:
        raise ConfigError(f"same-iterations-as needs a batch size >= 1, got {reference_batch_size}")
    ratio = batch_size / reference_batch_size
    return tuple(max(1, round(e * ratio)) if e > 0 else 0 for e in stage_epochs)


def apply_schedule(optimizer, base_lr: float, factor: float) -> None:
    """Set each group's rate to base_lr * its own scale (BN gamma / beta) * lr_t / lr_0."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0) * factor
