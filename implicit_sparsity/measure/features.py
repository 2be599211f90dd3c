"""Find the conv -> BatchNorm (-> activation) features of any model by tracing it.

The model's forward is traced with `torch.fx`, so features are found from the data flow,
not from module order: a conv whose only user is a BatchNorm2d, optionally followed by an
activation (module or function), with identity slots (`nn.Identity`, dropout) allowed in
between. The value a feature passes on is the activation's output when the BatchNorm feeds
one; otherwise (e.g. the last BN of a residual branch, which feeds an add) it is the
BatchNorm's output itself.

BatchNorm layers are leaves of the trace whatever their class, so BN-with-activation
modules (timm's `BatchNormAct2d` and the like: a BatchNorm2d subclass whose forward does
more) are recognized by behaviour: their output already is the activation's. A BatchNorm
without affine parameters has no gamma: such a feature is measured by activation only.

For each feature we also follow its output forward through channel-preserving operations
(pooling, dropout, further activations, global pooling in its usual forms) to the layers
that read its channels. A feature whose channels reach anything else (a residual add, a
concatenation, a product) is *coupled*: its channels cannot be removed on their own. One
that reaches the model's output (a conv classifier) is never pruned.

A conv followed by a GroupNorm or LayerNorm (then an activation) is measured after the norm
and its activation, as a BN feature is, and it has no |gamma| criterion. Its channels are
normalized together, group by group: a GroupNorm's whole groups of dead channels can be
removed exactly (the other groups' statistics do not see them), a channel alone cannot,
nor any channel under a LayerNorm (exact or not at all).

Units beyond conv filters (`units=ALL_UNITS`): a Linear followed by an activation, with an
optional BatchNorm1d between (MLP hidden units, the hidden units of a Transformer's MLP
block: Linear -> GELU / ReLU -> Linear, torch's nn.TransformerEncoderLayer included).
Their channels are the last dimension ([B, C] or [B, tokens, C]); they may end only in
Linear layers (a reshape, a conv or an add after them makes them coupled). A Linear without
an activation (a classifier, attention projections)
is no unit layer. The paper counts conv filters only, so `CONV_UNITS` is the default.
"""

from __future__ import annotations

import copy
import inspect
import operator
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx
from torch.fx.experimental.meta_tracer import MetaTracer
import torch.nn.functional as F
from torch import nn

from implicit_sparsity.errors import (ImplicitSparsityError, ModelTraceError, NonFiniteError,
                                     first_line)
from implicit_sparsity.models.blocks import ConvBNAct

#: Which layers make units: the paper's conv filters, or also MLP units (Linear -> act).
CONV_UNITS = ("conv",)
ALL_UNITS = ("conv", "linear")
MLP_UNITS = ("linear",)  # MLP units only (a Transformer's, without its patch embedding)
UNIT_CHOICES = {"conv": CONV_UNITS, "all": ALL_UNITS, "mlp": MLP_UNITS}


class NoBatchNormError(ImplicitSparsityError):
    """Sparsity by scale needs BatchNorm after the convolutions; the model has none."""


#: Elementwise activations (any f, f(0) = 0 or not: constants are computed, never assumed).
ACTIVATION_MODULES = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
                      nn.PReLU, nn.Hardtanh, nn.Sigmoid, nn.Softplus, nn.Tanh, nn.Mish,
                      nn.CELU, nn.SELU, nn.Hardsigmoid, nn.Softsign, nn.LogSigmoid)
ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu_, torch.relu_, F.leaky_relu, F.relu6,
                        F.elu, F.gelu, F.silu, F.hardswish, F.hardtanh, torch.sigmoid,
                        F.sigmoid, F.softplus, torch.tanh, F.tanh, F.mish, F.celu, F.selu,
                        F.hardsigmoid, torch.clamp, torch.clip}
ACTIVATION_METHODS = {"relu", "relu_", "clamp", "clamp_", "clip", "sigmoid", "tanh",
                      "clamp_min", "clamp_min_"}
#: Slots that pass values on unchanged in eval mode.
IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)
#: Operations after which channel i is still channel i (of the same feature).
CHANNEL_PRESERVING_MODULES = ACTIVATION_MODULES + IDENTITY_MODULES + (
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
CHANNEL_PRESERVING_FUNCTIONS = ACTIVATION_FUNCTIONS | {
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout,
    F.dropout2d}
#: Global pooling written as a reduction over the spatial dimensions.
SPATIAL_REDUCTIONS = {"mean", "amax", "sum"}
SPATIAL_REDUCTION_FUNCTIONS = {torch.mean, torch.amax, torch.sum}
#: Where a feature's channels may end: layers that read them as input channels / features.
CONSUMER_MODULES = (nn.Conv2d, nn.Linear)
FLATTENERS = (nn.Flatten,)
FLATTEN_FUNCTIONS = {torch.flatten}


@dataclass
class Feature:
    """One feature (unit) layer of a traced model: conv filters, or MLP units, whose
    producing layer `conv` is then an nn.Linear (`kind` "linear")."""

    name: str
    conv_path: str
    conv: nn.Conv2d | nn.Linear
    bn_path: str | None
    bn: nn.BatchNorm2d | nn.BatchNorm1d | None
    output_node: str                  # fx node whose value is the feature's output
    has_activation: bool
    consumers: list[str] = field(default_factory=list)  # module paths reading its channels
    coupled: bool = False             # its channels reach an add / cat / other op
    nonnegative_output: bool = False  # a ReLU follows: the output is never negative
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None  # applies the act
    reaches_output: bool = False      # its channels are (part of) the model's output
    border_sensitive: bool = False    # a padded average pool or a BN changes a constant
    bn_has_activation: bool = False   # a BN-with-activation module (timm BatchNormAct2d)
    kind: str = "conv"                # "conv" (channels dim 1) or "linear" (channels last)
    #: a GroupNorm / LayerNorm between conv and activation (its type name): measured after
    #: it; its channels are normalized together, so a channel can go exactly only with its
    #: whole group (`removable`)
    shared_norm: str | None = None
    norm_path: str | None = None
    norm_groups: int = 0  # groups the shared norm normalizes apart: GroupNorm's, 1 for LN
    #: its channels are multiplied by an input-dependent gate (squeeze-and-excitation) on
    #: their way to the readers; the gate's modules (a constant channel is not constant
    #: after it: only a zero one passes unchanged)
    gate_modules: list[str] = field(default_factory=list)
    #: depthwise chains: the feature whose channels are this depthwise conv's only input
    #: (`chain_from`), or the depthwise feature that is this feature's only reader
    #: (`chain_to`); a zero input channel makes the depthwise channel a constant
    chain_from: str | None = None
    chain_to: str | None = None
    #: its channels are moved to the last axis (a permute / transpose): a transformer's patch
    #: embedding, ConvNeXt's tokens; coupled to whatever works on the tokens
    tokens: bool = False

    @property
    def gated(self) -> bool:
        return bool(self.gate_modules)

    @property
    def num_features(self) -> int:
        return self.conv.out_channels if self.kind == "conv" else self.conv.out_features

    @property
    def channels_last(self) -> bool:
        return self.kind == "linear"

    def removable(self, dead: torch.Tensor) -> torch.Tensor:
        """Of the dead channels (a mask over the original channels), those that can go
        exactly: all of them, but under a shared norm only whole groups of dead channels
        (removing some of a group's channels changes its statistics) and none under a
        LayerNorm or one-group GroupNorm (unless every channel is dead)."""
        if not self.shared_norm:
            return dead
        groups = max(1, self.norm_groups)
        whole = dead.reshape(groups, len(dead) // groups).all(dim=1)
        return whole.repeat_interleave(len(dead) // groups)

    @property
    def gamma(self) -> torch.Tensor | None:
        """The BatchNorm scale of the feature, or None (no BN, or BN without affine)."""
        if self.bn is None or not self.bn.affine:
            return None
        return self.bn.weight


@dataclass
class TracedModel:
    graph_module: torch.fx.GraphModule
    features: list[Feature]
    #: conv module path -> the feature whose channels are its input channels (if any)
    input_feature: dict[str, str]
    #: convolutions that are no feature's conv and cannot be: functional calls on
    #: parameters (`F.conv2d(x, self.w)`), Conv1d / Conv3d / transposed convs ("where: what")
    unmeasured: list[str] = field(default_factory=list)

    def describe_unmeasured(self) -> str | None:
        """One line naming the convolutions this toolkit cannot measure, or None."""
        if not self.unmeasured:
            return None
        shown = ", ".join(self.unmeasured[:4]) + (", ..." if len(self.unmeasured) > 4 else "")
        return (f"{len(self.unmeasured)} convolution(s) not measured (only nn.Conv2d modules "
                f"are conv features): {shown}")


class _Tracer(torch.fx.Tracer):
    """fx's tracer, with every normalization layer and every Conv2d a leaf whatever package
    defines it, so that a BatchNorm2d / GroupNorm subclass (norm + activation) or a Conv2d
    subclass (timm's weight-standardized StdConv2d, Conv2dSame) stays one module in the
    graph, found and measured as such (traced into, it would be anonymous functions)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                          nn.Conv2d)):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        # torch's Transformer encoder modules are fx leaves (torch.nn) with data-dependent
        # fast paths: trace the path they take while training, through their submodules
        if type(m) is nn.TransformerEncoderLayer:
            return _encoder_layer_path(m, *args, **kwargs)
        if type(m) is nn.TransformerEncoder:
            return _encoder_path(m, *args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def _encoder_layer_path(layer: nn.TransformerEncoderLayer, src, src_mask=None,
                        src_key_padding_mask=None, is_causal=False):
    """nn.TransformerEncoderLayer's forward without its fused inference path (the same
    function: the fused kernel computes this). The MLP block is traced batch first, so
    that its hidden units' values are [B, T, C] whatever the layer's layout (a Linear acts
    on the last dimension only, so the transposes change no number)."""
    def feed_forward(x):
        if layer.self_attn.batch_first:
            return layer._ff_block(x)
        return layer._ff_block(x.transpose(0, 1)).transpose(0, 1)

    x = src
    if layer.norm_first:
        x = x + layer._sa_block(layer.norm1(x), src_mask, src_key_padding_mask, is_causal)
        return x + feed_forward(layer.norm2(x))
    x = layer.norm1(x + layer._sa_block(x, src_mask, src_key_padding_mask, is_causal))
    return layer.norm2(x + feed_forward(x))


def _encoder_path(encoder: nn.TransformerEncoder, src, mask=None, src_key_padding_mask=None,
                  is_causal=None):
    """nn.TransformerEncoder's forward without its nested-tensor fast path."""
    output = src
    for layer in encoder.layers:
        output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                       is_causal=bool(is_causal))
    return encoder.norm(output) if encoder.norm is not None else output


#: A model may declare the shape of one input batch under this attribute (e.g. the
#: Hugging Face wrapper of models.huggingface): when plain fx tracing fails on control flow,
#: it is traced again with the input's shape made concrete (meta tensors), so branches on
#: shapes take the path that shape takes.
EXAMPLE_INPUT_SHAPE = "example_input_shape"


class _ShapeTracer(MetaTracer, _Tracer):
    """_Tracer whose proxies carry meta tensors: `x.shape[1] != 3` is a plain bool."""


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as error:  # fx raises many kinds; all mean the same to a user
        first = first_line(error)
        shape = getattr(model, EXAMPLE_INPUT_SHAPE, None)
        if shape is not None:
            try:
                return _trace_with_shape(model, tuple(shape))
            except Exception as second:  # noqa: BLE001 - reported with the first
                first = f"{first}; with the input shape {tuple(shape)}: {first_line(second)}"
        hint = "" if shape is not None else (
            f" (control flow on shapes traces when the model declares "
            f"`{EXAMPLE_INPUT_SHAPE}`, one input batch's shape)")
        raise ModelTraceError(f"cannot trace {type(model).__name__} with torch.fx: "
                              f"{first}{hint}") from None


def _trace_with_shape(model: nn.Module, shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """Trace a meta copy of `model` (weights on the meta device, so the copy's modules
    compute shapes only), then bind the graph to `model` itself: same module paths."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the meta tracer warns for each module it cannot
        meta = copy.deepcopy(model).to("meta")
        tracer = _ShapeTracer()
        name = next(iter(inspect.signature(meta.forward).parameters))
        graph = tracer.trace(meta, meta_args={name: torch.empty(shape, device="meta")})
    for node in graph.nodes:
        node.meta.pop("tensor_meta", None)
    return torch.fx.GraphModule(model, graph, type(model).__name__)


def _is_batchnorm_with_activation(module: nn.Module) -> bool:
    """A BatchNorm2d subclass whose forward is not BatchNorm's own (it does more)."""
    own = {nn.BatchNorm2d.forward, nn.modules.batchnorm._BatchNorm.forward}
    return getattr(type(module), "forward", None) not in own


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
    """ReLU-like: output never negative (so |x| = x when recording)."""
    module = _module(gm, node)
    if module is not None:
        if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
            return module.min_val >= 0
        return type(module) is nn.ReLU
    target = node.target
    if node.op == "call_function" and target in (F.relu, torch.relu, F.relu_, torch.relu_,
                                                  F.relu6):
        return True
    if target in (torch.clamp, torch.clip, "clamp", "clamp_", "clip", "clamp_min",
                  "clamp_min_"):
        low = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
        return isinstance(low, (int, float)) and low >= 0
    return node.op == "call_method" and target in ("relu", "relu_")


def _skip_identities(gm, node):
    """Follow a value through identity slots (nn.Identity, dropout in eval) while it has a
    single user; returns the last node of the chain."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if isinstance(_module(gm, user), IDENTITY_MODULES) and user.args[0] is node:
            node = user
        else:
            break
    return node


def _is_spatial_reduction(node) -> tuple[bool, bool]:
    """(is a global pooling written as mean / amax / sum over dims 2 and 3, keepdim)."""
    if not ((node.op == "call_method" and node.target in SPATIAL_REDUCTIONS) or (
            node.op == "call_function" and node.target in SPATIAL_REDUCTION_FUNCTIONS)):
        return False, False
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)) or sorted(d % 4 for d in dims) != [2, 3]:
        return False, False
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    return True, bool(keepdim)


def _pads_with_zeros(gm, node) -> bool:
    """An average pool that counts zero padding: a constant is not constant at its border."""
    module = _module(gm, node)
    if isinstance(module, nn.AvgPool2d):
        padding = module.padding if isinstance(module.padding, tuple) else (module.padding,)
        return any(p for p in padding) and module.count_include_pad
    if node.op == "call_function" and node.target is F.avg_pool2d:
        padding = node.kwargs.get("padding", node.args[3] if len(node.args) > 3 else 0)
        padding = padding if isinstance(padding, (tuple, list)) else (padding,)
        include = node.kwargs.get("count_include_pad",
                                  node.args[5] if len(node.args) > 5 else True)
        return any(p for p in padding) and include
    return False


def _is_channel_preserving(gm, node) -> bool:
    module = _module(gm, node)
    if module is not None:
        return isinstance(module, CHANNEL_PRESERVING_MODULES) or (
            isinstance(module, nn.BatchNorm2d))
    if node.op == "call_function":
        return node.target in CHANNEL_PRESERVING_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS | {"contiguous"}


@dataclass
class _Reach:
    """Where a feature's channels go: the layers reading them (`consumers`), whether they
    are mixed with other values (an add, a cat, ...: `coupled`), reach the model's output,
    or pass something that changes a constant at the borders (a zero-padded average pool,
    a BatchNorm)."""

    consumers: list[str] = field(default_factory=list)
    coupled: bool = False
    output: bool = False
    border: bool = False
    gate_modules: list[str] = field(default_factory=list)
    tokens: bool = False

    def follow(self, gm, node, flattened: bool = False, channels_last: bool = False
               ) -> "_Reach":
        """Follow a value forward. `channels_last` (MLP units): only elementwise slots and
        Linear readers keep its channels apart."""
        for user in node.users:
            if channels_last:
                self._follow_units(gm, node, user)
            else:
                self._follow_channels(gm, node, user, flattened)
        return self

    def _follow_units(self, gm, node, user) -> None:
        module = _module(gm, user)
        if isinstance(module, nn.Linear) and user.args[0] is node:
            self.consumers.append(user.target)
        elif user.op == "output":
            self.output = True
        elif (isinstance(module, ACTIVATION_MODULES + IDENTITY_MODULES) or (
                user.op == "call_function" and user.target in ACTIVATION_FUNCTIONS)) \
                and user.args and user.args[0] is node:
            self.follow(gm, user, channels_last=True)
        else:
            self.coupled = True

    def _follow_channels(self, gm, node, user, flattened: bool) -> None:
        module = _module(gm, user)
        reduction, keepdim = _is_spatial_reduction(user)
        gate = None if flattened else _gate_of(gm, node, user)
        if gate is not None:  # x * gate(x): channel c stays channel c, scaled
            self.gate_modules += [m for m in gate if m not in self.gate_modules]
            self.follow(gm, user, flattened)
        elif module is not None and isinstance(module, CONSUMER_MODULES):
            if user.args[0] is not node or (isinstance(module, nn.Conv2d) and flattened):
                self.coupled = True
            else:
                self.consumers.append(user.target)
        elif (module is not None and isinstance(module, FLATTENERS)) or (
                user.op == "call_function" and user.target in FLATTEN_FUNCTIONS) or (
                user.op == "call_method" and user.target in ("flatten", "view", "reshape")):
            self.follow(gm, user, flattened=True)
        elif reduction and user.args and user.args[0] is node:
            self.follow(gm, user, flattened or not keepdim)
        elif _is_channel_preserving(gm, user) and user.args and user.args[0] is node:
            if _pads_with_zeros(gm, user) or isinstance(module, nn.BatchNorm2d):
                self.border = True  # a constant does not pass through unchanged
            self.follow(gm, user, flattened)
        elif user.op == "output":
            self.output = True
        else:
            self.tokens = self.tokens or _is_permutation(user)
            self.coupled = True


PERMUTATIONS = {torch.permute, torch.transpose, torch.swapaxes, torch.movedim}


def _is_permutation(node) -> bool:
    """A permute / transpose of the value: its channels leave dimension 1."""
    return (node.op == "call_method" and node.target in (
        "permute", "transpose", "swapaxes", "movedim")) or (
        node.op == "call_function" and node.target in PERMUTATIONS)


MULTIPLICATIONS = {operator.mul, torch.mul, "mul"}
GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
#: How far back from a product to look for the squeeze of a gate (SE blocks are 4-8 nodes).
GATE_SEARCH_NODES = 40


def _gate_of(gm, node, user) -> list[str] | None:
    """The module paths of the gate when `user` is `node * gate(node)` with the gate computed
    from `node` through a global pooling (squeeze-and-excitation), else None."""
    if not ((user.op == "call_function" and user.target in MULTIPLICATIONS) or (
            user.op == "call_method" and user.target == "mul")) or len(user.args) != 2:
        return None
    operands = list(user.args)
    if node not in operands or operands[0] is operands[1]:
        return None
    other = operands[1] if operands[0] is node else operands[0]
    if not isinstance(other, torch.fx.Node):
        return None
    seen, todo, pooled, modules = set(), [other], False, []
    while todo:
        current = todo.pop()
        if current is node or current.name in seen:
            continue
        seen.add(current.name)
        if len(seen) > GATE_SEARCH_NODES or current.op in ("placeholder", "get_attr"):
            return None
        module = _module(gm, current)
        if module is not None:
            modules.append(current.target)
        reduction, _ = _is_spatial_reduction(current)
        if reduction or isinstance(module, GLOBAL_POOLS) or (
                current.op == "call_function" and current.target in (
                    F.adaptive_avg_pool2d, F.adaptive_max_pool2d)):
            if current.args and current.args[0] is node:
                pooled = True
                continue
        todo.extend(current.all_input_nodes)
    return modules if pooled else None


def _link_depthwise_chains(features: list[Feature], input_feature: dict[str, str]) -> None:
    """Mark each depthwise conv feature whose only input is another feature's channels, read
    by nothing else: that feature's zero channel c makes the depthwise channel c a constant
    (its BN and activation of the conv's bias), and a dead depthwise channel c leaves the
    input channel c with no reader; either way the two channels go together."""
    by_name = {f.name: f for f in features}
    for f in features:
        conv = f.conv
        if f.kind != "conv" or not (1 < conv.groups == conv.in_channels == conv.out_channels):
            continue
        source = by_name.get(input_feature.get(f.conv_path, ""))
        if f.shared_norm or source is None or source.consumers != [f.conv_path] \
                or source.reaches_output or source.border_sensitive or source.gated \
                or source.kind != "conv":
            continue
        source.chain_to, f.chain_from = f.name, source.name


def trace_features(model: nn.Module, units: tuple[str, ...] = CONV_UNITS) -> TracedModel:
    """Trace `model` and return its feature layers in forward order: conv filters, and
    with `units=ALL_UNITS` also MLP units (Linear -> [BatchNorm1d] -> activation)."""
    unknown = set(units) - set(ALL_UNITS)
    if unknown:
        raise ImplicitSparsityError(f"unknown unit kind(s) {sorted(unknown)}; valid: conv, "
                                    "linear")
    gm = trace(model)
    blocks = {id(m.conv): i for i, m in enumerate(
        m for m in model.modules() if isinstance(m, ConvBNAct))}
    features: list[Feature] = []
    for node in gm.graph.nodes:
        conv = _module(gm, node)
        linear = isinstance(conv, nn.Linear) and "linear" in units
        if not (isinstance(conv, nn.Conv2d) and "conv" in units) and not linear:
            continue
        norm_type = nn.BatchNorm1d if linear else nn.BatchNorm2d
        first = _skip_identities(gm, node)
        bn_node = next(iter(first.users)) if len(first.users) == 1 else None
        bn = _module(gm, bn_node) if bn_node is not None else None
        if not isinstance(bn, norm_type) or bn_node.args[0] is not first:
            bn_node, bn = None, None
        bn_act = bn is not None and _is_batchnorm_with_activation(bn)
        shared, norm_groups = None, 0
        if bn is None and not linear and len(first.users) == 1:
            user = next(iter(first.users))
            norm = _module(gm, user)
            if isinstance(norm, (nn.GroupNorm, nn.LayerNorm)) and user.args[0] is first:
                shared = user  # conv -> GroupNorm -> activation: the unit is after the norm
                norm_groups = norm.num_groups if isinstance(norm, nn.GroupNorm) else 1
        out = _skip_identities(gm, bn_node if bn_node is not None else shared or first)
        act = next(iter(out.users)) if len(out.users) == 1 and not bn_act else None
        has_act = act is not None and _is_activation(gm, act) and act.args[0] is out
        if linear and not (has_act or bn_act):
            continue  # a classifier or a projection: no hidden units
        output = _skip_identities(gm, act) if has_act else out
        reach = _Reach().follow(gm, output, channels_last=linear)
        features.append(Feature(
            name=node.target, conv_path=node.target, conv=conv,
            bn_path=bn_node.target if bn_node is not None else None, bn=bn,
            output_node=output.name, has_activation=has_act or bn_act,
            consumers=reach.consumers,
            # under a LayerNorm or a one-group GroupNorm no channel can go on its own
            coupled=reach.coupled or (shared is not None and norm_groups < 2),
            nonnegative_output=has_act and _is_plain_relu(gm, act),
            activation=_activation_fn(gm, act) if has_act else None,
            reaches_output=reach.output, border_sensitive=reach.border,
            bn_has_activation=bn_act, kind="linear" if linear else "conv",
            shared_norm=None if shared is None else type(_module(gm, shared)).__name__,
            norm_path=None if shared is None else shared.target, norm_groups=norm_groups,
            gate_modules=reach.gate_modules, tokens=reach.tokens))
    convs = [f for f in features if f.kind == "conv"]
    if convs and all(id(f.conv) in blocks for f in convs):
        order = sorted(convs, key=lambda f: blocks[id(f.conv)])
        for i, f in enumerate(order):
            f.name = f"C{i + 1}"  # the paper's names for our networks
    input_feature = {c: f.name for f in features if not f.coupled for c in f.consumers}
    _link_depthwise_chains(features, input_feature)
    return TracedModel(gm, features, input_feature, _unmeasured_convs(gm))


#: Convolutions as functions: a model calling them on its own parameters has filters that
#: no module owns, so none can be measured or removed.
CONV_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                  F.conv_transpose3d, torch.conv1d, torch.conv2d, torch.conv3d)
OTHER_CONV_MODULES = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                      nn.ConvTranspose3d)


def _unmeasured_convs(gm: torch.fx.GraphModule) -> list[str]:
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in CONV_FUNCTIONS:
            found.append(f"{node.name}: {node.target.__name__}")
        module = _module(gm, node)
        if isinstance(module, OTHER_CONV_MODULES):
            found.append(f"{node.target}: {type(module).__name__}")
    return found


def has_gamma(features: list[Feature]) -> bool:
    """Whether any feature has a BatchNorm scale, i.e. sparsity by |gamma| is defined."""
    return any(f.gamma is not None for f in features)


def require_batchnorm(features: list[Feature]) -> None:
    if not has_gamma(features):
        raise NoBatchNormError(
            "the model has no BatchNorm2d directly after a convolution (with a scale: affine), "
            "so sparsity by |gamma| is undefined for it; use --criterion activation")


def count_conv_params(features: list[Feature], input_feature: dict[str, str],
                      alive: dict[str, torch.Tensor] | None = None,
                      modules: dict[str, nn.Module] | None = None) -> tuple[int, int]:
    """(conv weights, conv weights kept) when the features' dead channels are removed.

    A removed filter frees its own weights and the matching input slice of the conv that
    reads it (the paper's "% Param Pruned"); coupled features keep all channels, features
    under a GroupNorm keep all but whole dead groups (`Feature.removable`). A model
    with no conv feature (a Transformer measured on its MLP units) counts its MLP weights
    instead: a removed unit frees its row of the Linear that makes it and its column of
    the Linear that reads it (`modules`: the model's named modules, for those readers).
    """
    if not any(f.kind == "conv" for f in features):
        return _count_mlp_params(features, input_feature, alive or {}, modules or {})
    alive = alive or {}
    by_name = {f.name: f for f in features}

    def kept_channels(f: Feature) -> int:
        return int((~f.removable(~alive[f.name])).sum())

    total = kept = 0
    for f in features:
        if f.kind != "conv":
            continue  # conv weights only (the paper's "% Param")
        w = f.conv.weight
        per_pair = w.shape[2] * w.shape[3]
        out_alive = kept_channels(f) if f.name in alive and not f.coupled else w.shape[0]
        source = input_feature.get(f.conv_path)
        in_alive = w.shape[1]
        if source is not None and source in alive and f.conv.groups == 1:
            in_alive = kept_channels(by_name[source])
        total += w.numel()
        kept += out_alive * in_alive * per_pair
    return total, kept


def _count_mlp_params(features: list[Feature], input_feature: dict[str, str],
                      alive: dict[str, torch.Tensor], modules: dict[str, nn.Module]
                      ) -> tuple[int, int]:
    """(MLP weights, MLP weights kept): unit layers' Linears and the Linears reading them."""
    total = kept = 0
    makers = {f.conv_path for f in features}
    by_name = {f.name: f for f in features}

    def kept_of(f: Feature) -> int:
        if f.name in alive and not f.coupled:
            return int(alive[f.name].sum())
        return f.num_features

    for f in features:
        units, units_kept = f.num_features, kept_of(f)
        inputs = f.conv.weight.shape[1]
        source = by_name.get(input_feature.get(f.conv_path, ""))
        if source is not None:  # it reads another unit layer: its dead inputs go too
            inputs = inputs // source.num_features * kept_of(source)
        total += f.conv.weight.numel()
        kept += units_kept * inputs
        for path in f.consumers:
            reader = modules.get(path)
            if isinstance(reader, nn.Linear) and path not in makers:
                total += reader.weight.numel()
                kept += reader.out_features * reader.in_features // units * units_kept
    return total, kept


def require_finite(model: nn.Module) -> None:
    """Refuse a model holding NaN / inf (a diverged run): no measurement on it is meaningful."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"the model holds non-finite values ({name}): it diverged; "
                                 "nothing can be measured or pruned on it")
