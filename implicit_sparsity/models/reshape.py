"""Give a freshly built network the shapes of a saved (slim) state dict, so that a pruned or
fine-tuned slim model loads back into the class it was built from."""

from __future__ import annotations

import torch
from torch import nn


def adopt_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize `model`'s layers to the tensors of a slim state dict, in place: layers take the
    saved shapes, biases added by folding appear, folded BatchNorms become identities."""
    for path, module in list(model.named_modules()):
        prefix = f"{path}." if path else ""
        own = {k[len(prefix):]: v for k, v in state.items()
               if k.startswith(prefix) and "." not in k[len(prefix):]}
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and "weight" not in own:
            parent_path, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, child, nn.Identity())  # folded into its conv
            continue
        for name, tensor in own.items():
            if name in module._parameters or name == "bias":
                setattr(module, name, nn.Parameter(torch.empty_like(tensor)))
            elif name in module._buffers:
                module._buffers[name] = torch.empty_like(tensor)
        if isinstance(module, nn.Conv2d):
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = own["weight"].shape[0]
    return model
