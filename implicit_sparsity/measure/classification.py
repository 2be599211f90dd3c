"""Classification errors, defined once: top-1 and the paper's top-5."""

from __future__ import annotations

import torch

from implicit_sparsity.defaults import TOP_K


def count_wrong(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """How many samples have their label outside the k highest logits (on the device).
    With k at least the number of classes nothing is wrong."""
    k = min(k, logits.shape[1])
    if k == 1:
        return (logits.argmax(1) != labels).sum()
    top = logits.topk(k, dim=1).indices
    return (top != labels[:, None]).all(1).sum()


__all__ = ["TOP_K", "count_wrong"]
