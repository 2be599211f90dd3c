"""Find the conv -> BatchNorm (-> activation) features of any model by tracing it.

The model's forward is traced with `torch.fx`, so features are found from the data flow,
not from module order: a conv whose only user is a BatchNorm2d, optionally followed by an
activation (module or function). The value a feature passes on is the activation's output
when the BatchNorm feeds one directly; otherwise (e.g. the last BN of a residual branch,
which feeds an add) it is the BatchNorm's output itself.

For each feature we also follow its output forward through channel-preserving operations
(pooling, dropout, further activations) to the layers that read its channels. A feature
whose channels reach anything else (a residual add, a concatenation, a product) is
*coupled*: its channels cannot be removed on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from implicit_sparsity.errors import ImplicitSparsityError, NonFiniteError
from implicit_sparsity.models.blocks import ConvBNAct


class ModelTraceError(ImplicitSparsityError):
    """The model cannot be traced with torch.fx (data-dependent control flow, say)."""


class NoBatchNormError(ImplicitSparsityError):
    """Sparsity by scale needs BatchNorm after the convolutions; the model has none."""


ACTIVATION_MODULES = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
                      nn.PReLU)
ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu_, torch.relu_, F.leaky_relu, F.relu6,
                        F.elu, F.gelu, F.silu, F.hardswish}
ACTIVATION_METHODS = {"relu", "relu_"}
#: Operations after which channel i is still channel i (of the same feature).
CHANNEL_PRESERVING_MODULES = ACTIVATION_MODULES + (
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout,
    nn.Dropout2d, nn.Identity)
CHANNEL_PRESERVING_FUNCTIONS = ACTIVATION_FUNCTIONS | {
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout,
    F.dropout2d}
#: Where a feature's channels may end: layers that read them as input channels / features.
CONSUMER_MODULES = (nn.Conv2d, nn.Linear)
FLATTENERS = (nn.Flatten,)
FLATTEN_FUNCTIONS = {torch.flatten}


@dataclass
class Feature:
    """One conv feature layer of a traced model."""

    name: str
    conv_path: str
    conv: nn.Conv2d
    bn_path: str | None
    bn: nn.BatchNorm2d | None
    output_node: str                  # fx node whose value is the feature's output
    has_activation: bool
    consumers: list[str] = field(default_factory=list)  # module paths reading its channels
    coupled: bool = False             # its channels reach an add / cat / other op
    nonnegative_output: bool = False  # a ReLU follows: the output is never negative
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None  # applies the act

    @property
    def num_features(self) -> int:
        return self.conv.out_channels


@dataclass
class TracedModel:
    graph_module: torch.fx.GraphModule
    features: list[Feature]
    #: conv module path -> the feature whose channels are its input channels (if any)
    input_feature: dict[str, str]


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as error:  # fx raises many kinds; all mean the same to a user
        raise ModelTraceError(f"cannot trace {type(model).__name__} with torch.fx: "
                              f"{str(error).splitlines()[0]}") from None


def _module(gm: torch.fx.GraphModule, node: torch.fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_activation(gm, node) -> bool:
    module = _module(gm, node)
    if module is not None:
        return isinstance(module, ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def _activation_fn(gm, node) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation of a traced node as a function of one tensor (on a copy)."""
    module = _module(gm, node)
    rest, kwargs = node.args[1:], dict(node.kwargs)
    if module is not None:
        return lambda t: module(t.clone())
    if node.op == "call_function":
        return lambda t: node.target(t.clone(), *rest, **kwargs)
    return lambda t: getattr(t.clone(), node.target)(*rest, **kwargs)


def _is_plain_relu(gm, node) -> bool:
    module = _module(gm, node)
    if module is not None:
        return type(module) in (nn.ReLU, nn.ReLU6)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, F.relu_, torch.relu_, F.relu6)
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def _is_channel_preserving(gm, node) -> bool:
    module = _module(gm, node)
    if module is not None:
        return isinstance(module, CHANNEL_PRESERVING_MODULES) or (
            isinstance(module, nn.BatchNorm2d))
    if node.op == "call_function":
        return node.target in CHANNEL_PRESERVING_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS | {"contiguous"}


def _ends_in_consumers(gm, node, consumers: list[str], flattened: bool = False) -> bool:
    """Follow a value forward; collect the layers reading its channels. False if it reaches
    an operation that mixes it with other values (add, cat, ...)."""
    ok = True
    for user in node.users:
        module = _module(gm, user)
        if module is not None and isinstance(module, CONSUMER_MODULES):
            if user.args[0] is not node:
                ok = False
            elif isinstance(module, nn.Conv2d) and flattened:
                ok = False
            else:
                consumers.append(user.target)
        elif (module is not None and isinstance(module, FLATTENERS)) or (
                user.op == "call_function" and user.target in FLATTEN_FUNCTIONS) or (
                user.op == "call_method" and user.target in ("flatten", "view", "reshape")):
            ok &= _ends_in_consumers(gm, user, consumers, flattened=True)
        elif _is_channel_preserving(gm, user) and user.args and user.args[0] is node:
            ok &= _ends_in_consumers(gm, user, consumers, flattened)
        elif user.op == "output":
            continue
        else:
            ok = False
    return ok


def trace_features(model: nn.Module) -> TracedModel:
    """Trace `model` and return its conv features in forward order."""
    gm = trace(model)
    blocks = {id(m.conv): i for i, m in enumerate(
        m for m in model.modules() if isinstance(m, ConvBNAct))}
    features: list[Feature] = []
    for node in gm.graph.nodes:
        conv = _module(gm, node)
        if not isinstance(conv, nn.Conv2d):
            continue
        bn_node = next(iter(node.users)) if len(node.users) == 1 else None
        bn = _module(gm, bn_node) if bn_node is not None else None
        if not isinstance(bn, nn.BatchNorm2d) or bn_node.args[0] is not node:
            bn_node, bn = None, None
        out = bn_node if bn_node is not None else node
        act = next(iter(out.users)) if len(out.users) == 1 else None
        has_act = act is not None and _is_activation(gm, act) and act.args[0] is out
        output = act if has_act else out
        consumers: list[str] = []
        coupled = not _ends_in_consumers(gm, output, consumers)
        features.append(Feature(node.target, node.target, conv,
                                bn_node.target if bn_node is not None else None, bn,
                                output.name, has_act, consumers, coupled,
                                has_act and _is_plain_relu(gm, act),
                                _activation_fn(gm, act) if has_act else None))
    if features and all(id(f.conv) in blocks for f in features):
        order = sorted(features, key=lambda f: blocks[id(f.conv)])
        for i, f in enumerate(order):
            f.name = f"C{i + 1}"  # the paper's names for our networks
    input_feature = {c: f.name for f in features if not f.coupled for c in f.consumers}
    return TracedModel(gm, features, input_feature)


def require_batchnorm(features: list[Feature]) -> None:
    if not any(f.bn is not None for f in features):
        raise NoBatchNormError(
            "the model has no BatchNorm2d directly after a convolution, so sparsity by "
            "|gamma| is undefined for it; use --criterion activation")


def count_conv_params(features: list[Feature], input_feature: dict[str, str],
                      alive: dict[str, torch.Tensor] | None = None) -> tuple[int, int]:
    """(conv weights, conv weights kept) when the features' dead channels are removed.

    A removed filter frees its own weights and the matching input slice of the conv that
    reads it (the paper's "% Param Pruned"); coupled features keep all channels.
    """
    alive = alive or {}
    total = kept = 0
    for f in features:
        w = f.conv.weight
        per_pair = w.shape[2] * w.shape[3]
        out_alive = int(alive[f.name].sum()) if f.name in alive and not f.coupled else w.shape[0]
        source = input_feature.get(f.conv_path)
        in_alive = w.shape[1]
        if source is not None and source in alive and f.conv.groups == 1:
            in_alive = int(alive[source].sum())
        total += w.numel()
        kept += out_alive * in_alive * per_pair
    return total, kept


def require_finite(model: nn.Module) -> None:
    """Refuse a model holding NaN / inf (a diverged run): no measurement on it is meaningful."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"the model holds non-finite values ({name}): it diverged; "
                                 "nothing can be measured or pruned on it")
