"""Sparsity by |gamma| from a weights file alone, without the model's code.

A BatchNorm layer is recognised in a state dict by its tensors: `P.weight`, `P.bias`,
`P.running_mean` and `P.running_var` of one length. For each, the channels with |gamma|
below the threshold, split by the sign of beta: beta <= 0 outputs zero after a ReLU (dead),
beta > 0 a constant. The conv that makes the channels is paired only where that is
certain from names and shapes: a sibling of the BatchNorm named to match (`...conv1`
beside `...bn1`, `features.0.0` beside `features.0.1`) whose 4-D weight has as many output
channels. Its share of weights freed by the dead
channels is reported; what reads the channels (the next conv, a residual add) is wiring,
unknown without the model: no activation criterion and no removal until a model is given.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

from implicit_sparsity import defaults

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


@dataclass
class WeightsOnlyLayer:
    name: str                 # the BatchNorm's key prefix in the file
    channels: int
    dead: int                 # |gamma| < threshold and beta <= 0: zero after a ReLU
    constant: int             # |gamma| < threshold and beta > 0: a constant output
    conv: str | None          # the producing conv's key prefix, when the pairing is certain
    conv_weights: int | None  # its weights
    conv_weights_freed: int | None  # of those, the rows of the channels dead by |gamma|

    @property
    def inactive(self) -> int:
        return self.dead + self.constant


@dataclass
class WeightsOnlyReport:
    layers: list[WeightsOnlyLayer]
    threshold: float
    tensors: int

    def to_dict(self) -> dict:
        inactive = sum(l.inactive for l in self.layers)
        channels = sum(l.channels for l in self.layers)
        return {"criterion": "gamma (weights only: wiring unknown)",
                "threshold": self.threshold, "tensors": self.tensors,
                "layers": [{**asdict(l), "inactive": l.inactive} for l in self.layers],
                "total": {"inactive": inactive, "channels": channels,
                          "percent": 100.0 * inactive / channels if channels else None}}

    def table(self) -> str:
        width = max([10] + [len(l.name) + 1 for l in self.layers])
        lines = [f"{'BatchNorm':{width}s}{'channels':>9s}{'dead':>7s}{'const.':>8s}"
                 f"{'% inactive':>12s}  producing conv (weights freed)"]
        for l in self.layers:
            conv = (f"{l.conv} ({l.conv_weights_freed:,} of {l.conv_weights:,})"
                    if l.conv else "not certain from names and shapes")
            lines.append(f"{l.name:{width}s}{l.channels:>9d}{l.dead:>7d}{l.constant:>8d}"
                         f"{100.0 * l.inactive / l.channels:>11.1f}%  {conv}")
        total = self.to_dict()["total"]
        lines.append(f"{'total':{width}s}{total['channels']:>9d}"
                     f"{sum(l.dead for l in self.layers):>7d}"
                     f"{sum(l.constant for l in self.layers):>8d}"
                     f"{total['percent'] or 0.0:>11.1f}%")
        lines.append("weights only: the wiring is unknown, so there is no sparsity by "
                     "activation and nothing is removed; give the model (--model) for those")
        return "\n".join(lines)


def _module_of(key: str) -> str:
    return key.rpartition(".")[0]


def weights_only_report(state: dict[str, torch.Tensor],
                        threshold: float = defaults.GAMMA_THRESHOLD) -> WeightsOnlyReport:
    """Per BatchNorm layer of a state dict: channels with |gamma| < threshold, dead or
    constant, and the producing conv's weights they free where the pairing is certain."""
    keys = [k for k, v in state.items() if torch.is_tensor(v)]
    prefixes = []
    for key in keys:
        if not key.endswith(".running_var") and key != "running_var":
            continue
        prefix = _module_of(key)
        tensors = [state.get(f"{prefix}.{s}" if prefix else s) for s in BN_SUFFIXES]
        if all(torch.is_tensor(t) and t.dim() == 1 for t in tensors) and \
                len({t.numel() for t in tensors}) == 1:
            prefixes.append(prefix)
    layers = []
    for prefix in prefixes:
        gamma = state[f"{prefix}.weight"].detach().float()
        beta = state[f"{prefix}.bias"].detach().float()
        inactive = gamma.abs() < threshold
        dead = inactive & (beta <= 0)
        conv = _producing_conv(state, prefix, gamma.numel())
        weights = freed = None
        if conv is not None:
            weight = state[f"{conv}.weight"]
            weights = weight.numel()
            freed = int(inactive.sum()) * (weights // weight.shape[0])
        layers.append(WeightsOnlyLayer(prefix, gamma.numel(), int(dead.sum()),
                                       int((inactive & ~dead).sum()), conv, weights, freed))
    return WeightsOnlyReport(layers, threshold, len(keys))


def _producing_conv(state, prefix: str, channels: int) -> str | None:
    """The conv whose output the BatchNorm `prefix` normalizes, when the names make it
    certain (whatever the file's key order: safetensors sorts its keys): in a Sequential,
    the sibling just before it (`features.0.1` after `features.0.0`); in a named block, the
    conv of the same number (`bn1` and `conv1`, `bn` and `conv`; transformers' pair
    `normalization` and `convolution`); and its 4-D weight has one row per channel."""
    parent, _, own = prefix.rpartition(".")
    base = f"{parent}." if parent else ""
    candidates = []
    if own.isdigit() and int(own) > 0:
        candidates.append(f"{base}{int(own) - 1}")
    match = re.fullmatch(r"(bn|norm|batchnorm)(_?)(\d*)", own)
    if match:
        candidates.append(f"{base}conv{match.group(2)}{match.group(3)}")
    if own == "normalization":
        candidates.append(f"{base}convolution")
    for conv in candidates:
        weight = state.get(f"{conv}.weight")
        if torch.is_tensor(weight) and weight.dim() == 4 and weight.shape[0] == channels:
            return conv
    return None
