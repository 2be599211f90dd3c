"""A user's own model, for `analyze --model` and `prune --model`: built by a Python factory
named `package.module:function` (called with keyword arguments, if given), with weights
from a state dict saved by `torch.save(model.state_dict(), path)`."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
from torch import nn

from implicit_sparsity.errors import ConfigError, RunStateError, first_line
from implicit_sparsity.io.files import require_regular_file
from implicit_sparsity.models.check import check_real_tensors


def load_user_model(factory: str, weights: str | Path | None = None,
                    arguments: dict | None = None) -> nn.Module:
    """`factory` is `module:function` (importable from the current folder too); the model
    comes back in eval mode. One clear line for every way this can go wrong."""
    module_name, sep, function_name = factory.partition(":")
    if not sep or not module_name or not function_name:
        raise ConfigError(f"--model takes package.module:function, got {factory!r}")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a models.py beside the user's data
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as error:  # its import runs the user's code
        raise ConfigError(f"--model {factory}: cannot import {module_name} "
                          f"({type(error).__name__}: {first_line(error)})") from None
    build = getattr(module, function_name, None)
    if not callable(build):
        raise ConfigError(f"--model {factory}: {module_name} has no function {function_name}")
    try:
        model = build(**(arguments or {}))
    except (Exception, SystemExit) as error:  # SystemExit(0) would end us with "success"
        raise ConfigError(f"--model {factory}: calling it failed "
                          f"({type(error).__name__}: {first_line(error)})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {factory} returned a {type(model).__name__}, not a "
                          "torch.nn.Module")
    if weights is not None:
        require_regular_file(weights, "--weights")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as error:
            raise RunStateError(f"--weights {weights}: cannot load it "
                                f"({first_line(error)})") from None
        if isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
            state = state.get("state_dict") or state.get("model") or state
        try:
            model.load_state_dict(state)
        except Exception as error:
            raise RunStateError(f"--weights {weights} do not fit {factory}: "
                                f"{first_line(error)}") from None
    check_real_tensors(model, factory)  # before anything moves it to a device
    return model.eval()
