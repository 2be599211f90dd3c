"""A user's own model, for `analyze --model` and `prune --model`: built by a Python factory
named `package.module:function` or taken by name from torchvision's or timm's registry
(`torchvision:resnet50`) or a Hugging Face folder (`hf:FOLDER`, models.huggingface), called
with keyword arguments if given; its weights from a state dict, a checkpoint holding one
(Lightning's and DDP's key prefixes stripped), a `.safetensors` file or a Hugging Face
folder, never from pickled code."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from implicit_sparsity.errors import ConfigError, RunStateError, first_line
from implicit_sparsity.io.files import require_regular_file
from implicit_sparsity.models import huggingface
from implicit_sparsity.models.check import check_real_tensors


#: Model registries a factory may name as `REGISTRY:NAME`, beside `module:function`.
REGISTRIES = ("torchvision", "timm")
#: Keys under which checkpoints keep a state dict, in the order they are tried.
STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
#: Keys under which checkpoints keep an exponential moving average of the weights (timm's
#: `state_dict_ema`, others' `model_ema` / `ema`): named when found, never chosen silently.
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema", "ema_model")
#: Prefixes training frameworks put before a model's own keys (Lightning's `model.`, DDP's
#: `module.`), stripped where the keys then match the model.
PREFIXES = ("model.", "module.", "net.", "_orig_mod.")


def load_user_model(factory: str, weights: str | Path | None = None,
                    arguments: dict | None = None) -> nn.Module:
    """`factory` is `module:function` (importable from the current folder too) or a model by
    name, `torchvision:resnet50` / `timm:efficientnet_b0` (never with downloaded weights:
    give `weights`); the model comes back in eval mode. One clear line for every way this
    can go wrong."""
    module_name, sep, function_name = factory.partition(":")
    if not sep or not module_name or not function_name:
        raise ConfigError(f"--model takes package.module:function, torchvision:NAME / "
                          f"timm:NAME or hf:FOLDER, got {factory!r}")
    if module_name == huggingface.PREFIX:
        model = huggingface.load_huggingface_folder(function_name, arguments or {},
                                                    read_weights)
        load_weights_into(model.model, weights or function_name, factory)
        check_real_tensors(model, factory)
        return model.eval()
    if module_name in REGISTRIES:
        build = registry_builder(module_name, function_name, arguments or {})
    else:
        build = factory_function(factory, module_name, function_name)
    try:
        model = build(**(arguments or {}))
    except (Exception, SystemExit) as error:  # SystemExit(0) would end us with "success"
        raise ConfigError(f"--model {factory}: calling it failed "
                          f"({type(error).__name__}: {first_line(error)})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {factory} returned a {type(model).__name__}, not a "
                          "torch.nn.Module")
    if weights is not None:
        load_weights_into(model, weights, factory)
    check_real_tensors(model, factory)  # before anything moves it to a device
    return model.eval()


def factory_function(factory: str, module_name: str, function_name: str):
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
    return build


def registry_builder(registry: str, name: str, arguments: dict):
    """The builder of model `name` in torchvision's or timm's registry, never with
    pretrained weights (that would download them)."""
    if arguments.get("pretrained") or arguments.get("weights") is not None:
        raise ConfigError(f"--model {registry}:{name}: pretrained weights are never downloaded; "
                          "give your weights file with --weights")
    try:
        package = importlib.import_module(registry)
    except Exception as error:  # not installed, or a build that does not import here
        raise ConfigError(f"--model {registry}:{name} needs {registry} "
                          f"(pip install {registry}; {first_line(error, 80)})") from None
    if registry == "timm":
        if name not in package.list_models():
            raise ConfigError(f"timm has no model {name!r} (timm.list_models() lists them)")
        return lambda pretrained=False, **kw: package.create_model(name, pretrained=False,
                                                                    **kw)
    models = importlib.import_module("torchvision.models")
    if name not in models.list_models():
        raise ConfigError(f"torchvision has no model {name!r} "
                          "(torchvision.models.list_models() lists them)")
    return lambda weights=None, **kw: models.get_model(name, weights=None, **kw)


def read_weights(path: str | Path, flag: str = "--weights") -> dict:
    """A file's tensors: `.safetensors`, or a torch.save file loaded with weights_only (a
    pickle that holds code or objects is refused), or a Hugging Face folder's weight files.
    `flag`: how errors name the file."""
    if huggingface.is_huggingface_folder(path):
        return huggingface.folder_tensors(path, read_weights, flag)
    require_regular_file(path, flag)
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"{flag} {path}: reading .safetensors needs safetensors "
                              "(pip install safetensors)") from None
        try:
            return load_file(str(path))
        except Exception as error:  # the safetensors reader's errors
            raise RunStateError(f"{flag} {path}: not a safetensors file "
                                f"({first_line(error)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not torch.save, or a pickle with code
        why = ("it holds pickled code or objects, which are never loaded"
               if "weights_only" in str(error) or "Unsupported global" in str(error)
               else first_line(error))
        raise RunStateError(f"{flag} {path}: cannot load it ({why})") from None


def tensors_of(saved, path, flag: str = "--weights") -> dict:
    """The state dict a weights file holds, without a model to match it: the dict itself,
    or the first one under a checkpoint key (STATE_KEYS). Weights kept beside it as an
    exponential moving average (EMA_KEYS) are named in a warning: the plain ones are used."""
    if not isinstance(saved, dict):
        raise RunStateError(f"{flag} {path} holds a {type(saved).__name__}, not a state dict")
    if any(torch.is_tensor(v) for v in saved.values()):
        return saved
    key = next((k for k in STATE_KEYS if isinstance(saved.get(k), dict)), None)
    if key is None:
        keys = ", ".join(map(str, saved))[:80]
        raise RunStateError(f"{flag} {path}: no tensors, and none under "
                            f"{', '.join(STATE_KEYS)} (keys: {keys})")
    ema = [k for k in EMA_KEYS if isinstance(saved.get(k), dict)]
    if ema:
        warnings.warn(f"{path} also holds EMA weights under {ema[0]!r}; the weights under "
                      f"{key!r} are the ones used", stacklevel=2)
    return saved[key]


def state_dict_of(saved, model: nn.Module, path) -> dict:
    """The model's state dict inside what a file holds: the dict itself, one under a
    checkpoint key (STATE_KEYS), with a framework's key prefix (PREFIXES) stripped where the
    keys then match the model."""
    state = tensors_of(saved, path)
    wanted = set(model.state_dict())
    for prefix in PREFIXES:
        if not set(state) & wanted and all(str(k).startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) & wanted:
                state = stripped
    return state


def load_weights_into(model: nn.Module, path, factory: str) -> None:
    state = state_dict_of(read_weights(path), model, path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and torch.is_tensor(state[k])
              and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(keys[:2])}" + (f" (+{len(keys) - 2})" if len(keys) > 2
                                                      else "")
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("mis-shaped", shapes)) if keys]
        raise RunStateError(f"--weights {path} do not fit {factory}: " + "; ".join(parts))
    model.load_state_dict(state)
