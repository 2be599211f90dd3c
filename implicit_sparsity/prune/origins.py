"""Where each element of a pruned parameter came from, so that what is kept per element
beside the weights (an optimizer's moments, momentum buffers) follows the surgery exactly.

While `recorded_origins(model)` is active, every parameter the surgery narrows (torch-pruning's
`_prune_parameter_and_grad`, the surgery's own cut of a grouped conv's columns) notes, in its
module, the flat index into the parameter as it was before, for each element it keeps. The
note lives in the module's `__dict__`, so the surgery's own undo (which restores a module's
`__dict__`) restores it too. `take_origins` collects the notes by parameter name and removes
them; a parameter without a note was not narrowed.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

#: The attribute of a module holding its notes: {parameter name: flat source index}.
ORIGINS = "_implicit_sparsity_origins"
_recording: list[bool] = []  # non-empty while a `recorded_origins` block runs


def note_selection(module: nn.Module, name: str, local: torch.Tensor) -> None:
    """Parameter `name` of `module` now holds, at each element, the element of flat index
    `local` (same shape as the new tensor) of what it held before."""
    if not _recording:
        return
    notes = module.__dict__.setdefault(ORIGINS, {})
    local = local.detach().cpu().long()
    previous = notes.get(name)
    notes[name] = local if previous is None else previous.flatten()[local]


def selected_along(shape: torch.Size, dim: int, keep) -> torch.Tensor:
    """The flat source indices of `index_select(tensor of shape, dim, keep)`."""
    index = torch.arange(int(torch.Size(shape).numel())).reshape(shape)
    return index.index_select(dim, torch.as_tensor(list(keep), dtype=torch.long))


def _owner(model: nn.Module, tensor: torch.Tensor) -> tuple[nn.Module, str] | None:
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is tensor:
                return module, name
    return None


@contextlib.contextmanager
def recorded_origins(model: nn.Module):
    """Note the origin of every parameter of `model` that torch-pruning narrows in the block
    (and of the surgery's own cuts, which note themselves)."""
    try:
        from torch_pruning.pruner.function import BasePruningFunc
        original = BasePruningFunc._prune_parameter_and_grad
    except (ImportError, AttributeError):  # another layout: nothing noted, callers refuse
        original = None

    def noting(self, weight, keep_idxs, pruning_dim):
        owner = _owner(model, weight)
        pruned = original(self, weight, keep_idxs, pruning_dim)
        if owner is not None:
            note_selection(*owner, selected_along(weight.shape, pruning_dim, keep_idxs))
        return pruned

    _recording.append(True)
    if original is not None:
        BasePruningFunc._prune_parameter_and_grad = noting
    try:
        yield
    finally:
        _recording.pop()
        if original is not None:
            BasePruningFunc._prune_parameter_and_grad = original


def take_origins(model: nn.Module) -> dict[str, torch.Tensor]:
    """{parameter name: flat source index} of every parameter narrowed, notes removed."""
    found = {}
    for path, module in model.named_modules():
        notes = module.__dict__.pop(ORIGINS, None) or {}
        for name, index in notes.items():
            found[f"{path}.{name}" if path else name] = index
    return found
