"""The one check of a user's model and data before anything is measured or removed: each
problem is one line that names it, never a traceback from deep inside a pass, and never a
figure computed from outputs that mean nothing (NaN read as "0% sparse").

- The model: its tensors are real (not on the meta device), it takes the data, and it
  returns logits of rank 2 ([N, classes]) that are finite.
- The data: labels, where given, are class indices of rank 1 in [0, classes).
- There is something to measure: at least one unit of the kinds asked for.
"""

from __future__ import annotations

import torch
from torch import nn

from implicit_sparsity.errors import ConfigError, NonFiniteError, first_line


def check_real_tensors(model: nn.Module, name: str) -> None:
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise ConfigError(f"{name}: {len(meta)} tensor(s) are on the meta device (no values, "
                          f"e.g. {meta[0]}); give --weights, or build the model with real "
                          "tensors")


def check_outputs(model: nn.Module, inputs: torch.Tensor, name: str, data: str) -> int:
    """Run the model on a few inputs; returns its number of classes."""
    try:
        with torch.no_grad():
            outputs = model(inputs)
    except Exception as error:  # the user's forward: anything can come out of it
        raise ConfigError(f"{name} fails on the first images of {data} "
                          f"({type(error).__name__}: {first_line(error)}); check --image-size, "
                          "--channels, --mean / --std") from None
    if not torch.is_tensor(outputs):
        raise ConfigError(f"{name} returns a {type(outputs).__name__}, not a tensor of logits "
                          "[N, classes]; wrap it so that forward returns the logits")
    if outputs.ndim != 2 or outputs.shape[0] != inputs.shape[0]:
        raise ConfigError(f"{name} returns a tensor of shape {tuple(outputs.shape)} for "
                          f"{inputs.shape[0]} inputs; expected logits [N, classes]")
    if not bool(torch.isfinite(outputs).all()):
        raise NonFiniteError(f"{name} returns non-finite outputs (NaN / inf) on {data}: nothing "
                             "measured on it would mean anything; check its weights")
    return int(outputs.shape[1])


def check_labels(batches, classes: int, data: str) -> None:
    """Labels of rank 1, integers in [0, classes), where the data has labels."""
    for _, y in batches:
        if y is None:
            continue
        if y.ndim != 1:
            raise ConfigError(f"--data {data}: labels of shape {tuple(y.shape[1:])} per image "
                              "(one-hot?); give one class index per image")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ConfigError(f"--data {data}: labels must be class indices (integers), got "
                              f"{y.dtype}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise ConfigError(f"--data {data}: labels from {int(y.min())} to {int(y.max())}, "
                              f"but the model has {classes} outputs (0 to {classes - 1})")


def check_user_model(model: nn.Module, batches, name: str, data: str) -> None:
    """The model takes the data and gives finite logits that the labels fit."""
    check_real_tensors(model, name)
    classes = check_outputs(model, batches[0][0][:2], name, data)
    check_labels(batches, classes, data)


def check_something_to_measure(traced, units: tuple[str, ...], name: str) -> None:
    if not traced.features:
        kinds = " or ".join("conv filters (Conv2d -> norm -> activation)" if u == "conv" else
                            "MLP units (Linear -> activation)" for u in units)
        raise ConfigError(f"{name} has no {kinds} to measure; nothing can be analysed or "
                          "removed" + ("" if "linear" in units else " (--units all counts MLP "
                                       "units too)"))
