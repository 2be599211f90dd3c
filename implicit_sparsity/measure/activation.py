"""Sparsity by activation and feature universality over a whole corpus (sections 2.1, 3).

For each feature, |activation| is max-pooled over the feature plane, per sample. Sparsity:
a feature is inactive when that value never exceeds 1e-12 on any sample (model in eval
mode). Universality: the pooled values are normalized by their max over the corpus, and a
feature's universality is the % of samples whose normalized value exceeds 1e-3.

Running maxima (and, for universality, counts in a second pass) are kept on the device in
float32 by small recorder modules spliced into the traced graph: one forward per batch, no
host synchronisation per batch, memory independent of the corpus size.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ModelTraceError, NonFiniteError, first_line
from implicit_sparsity.measure.features import CONV_UNITS, TracedModel, trace_features


class _Recorder(nn.Module):
    """Passes its input through; keeps per-channel statistics of its pooled |values|."""

    def __init__(self, channels: int, device, nonnegative: bool, mean_abs: bool = False,
                 channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last  # MLP units: [B, C] or [B, tokens, C]
        self.nonnegative = nonnegative  # after a ReLU, |x| = x: one reduction, no copy
        self.mean_abs = mean_abs        # also sum, per channel, each sample's mean |x|
        self.abs_sum = torch.zeros(channels, device=device, dtype=torch.float64)
        self.max = torch.zeros(channels, device=device)
        self.count = torch.zeros(channels, device=device, dtype=torch.long)
        self.samples = torch.zeros((), device=device, dtype=torch.long)
        self.counting = False
        self.threshold = defaults.UNIVERSALITY_THRESHOLD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().float()
        if self.channels_last:  # positions are the tokens (none for [B, C])
            flat = flat.unsqueeze(-1) if flat.dim() == 2 else flat.movedim(-1, 1)
        flat = flat.flatten(2)  # [B, C, positions]
        if self.nonnegative:
            pooled = flat.amax(dim=2)
        else:
            low, high = torch.aminmax(flat, dim=2)
            pooled = torch.maximum(high, -low)  # max |x| without materializing |x|
        if self.counting:
            # normalized value > threshold  <=>  pooled > threshold * max (max > 0)
            limit = self.threshold * self.max
            self.count += ((pooled > limit) & (self.max > 0)).sum(0)
        else:
            torch.maximum(self.max, pooled.amax(0), out=self.max)
            self.samples += pooled.shape[0]
            if self.mean_abs:
                means = flat.mean(2) if self.nonnegative else flat.abs().mean(2)
                self.abs_sum += means.sum(0, dtype=torch.float64)
        return x


@dataclass
class ActivationStats:
    """Per feature (by name): max pooled |activation| over the corpus and universality (%)."""

    max_activation: dict[str, torch.Tensor]
    universality: dict[str, torch.Tensor] | None
    samples: int
    #: per unit, mean |activation| over every sample and position (with `mean_abs=True`)
    mean_abs: dict[str, torch.Tensor] | None = None

    def dormancy(self) -> dict[str, torch.Tensor]:
        """ReDo's score per unit (Sokar et al. 2023): its mean |activation| divided by the
        mean of that over its layer's units (0 for a layer that is all zero)."""
        if self.mean_abs is None:
            raise ValueError("dormancy needs activation_statistics(..., mean_abs=True)")
        scores = {}
        for name, values in self.mean_abs.items():
            layer = values.mean()
            scores[name] = values / layer if layer > 0 else torch.zeros_like(values)
        return scores

    def inactive(self, threshold: float = defaults.ACTIVATION_THRESHOLD
                 ) -> dict[str, torch.Tensor]:
        """Features whose max pooled |activation| does not exceed the threshold."""
        return {name: m <= threshold for name, m in self.max_activation.items()}


def _instrument(traced: TracedModel, device, mean_abs: bool = False) -> dict[str, _Recorder]:
    gm = traced.graph_module
    nodes = {n.name: n for n in gm.graph.nodes}
    recorders: dict[str, _Recorder] = {}
    for i, feature in enumerate(traced.features):
        node = nodes[feature.output_node]
        recorder = _Recorder(feature.num_features, device, feature.nonnegative_output,
                             mean_abs, feature.channels_last)
        target = f"_sparsity_recorder_{i}"
        gm.add_submodule(target, recorder)
        with gm.graph.inserting_after(node):
            record = gm.graph.call_module(target, (node,))
        node.replace_all_uses_with(record,
                                   delete_user_cb=lambda user, new=record: user is not new)
        recorders[feature.name] = recorder
    gm.recompile()
    return recorders


def _explain_trace_failure(model: nn.Module, x: torch.Tensor, error: Exception) -> None:
    """When the traced copy fails on an input the model itself runs, the trace is at fault
    (Python that depends on state or data, which torch.fx froze at one branch): say so in
    one line. An error of the model's own is left as it is."""
    try:
        model.eval()(x)
    except Exception:
        return
    raise ModelTraceError(
        f"the torch.fx trace of {type(model).__name__} fails where the model runs "
        f"({type(error).__name__}: {first_line(error, 100)}): its forward takes a path the "
        "trace cannot follow, so no activation can be recorded; use --criterion gamma"
        ) from None


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """Within the block, every BatchNorm of `model` normalizes each batch with the batch's
    own statistics, as in a training step (the other modules keep their mode: dropout off
    in eval mode); the running statistics are put back afterwards."""
    saved = [(buffer, buffer.clone()) for buffer in model.buffers()]
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@torch.no_grad()
def activation_statistics(model: nn.Module, batches: Iterable, *, universality: bool = True,
                          universality_threshold: float = defaults.UNIVERSALITY_THRESHOLD,
                          mean_abs: bool = False, units: tuple[str, ...] = CONV_UNITS,
                          traced: TracedModel | None = None,
                          train_mode: bool = False) -> ActivationStats:
    """One pass over `batches` (inputs, or (inputs, labels) pairs) for the maxima, and a
    second one for universality when asked. `batches` must be re-iterable for the second
    pass (a list, or an object whose __iter__ starts over); a callable returning a fresh
    iterator also works. The model is evaluated in eval mode, in float32 (float64 for a
    float64 model). `traced`: a trace of `model` made for this call (`trace_features`, to
    save tracing again); recorders are spliced into its graph, so it serves once.
    `train_mode`: BatchNorm on each batch's own statistics (`batch_statistics`)."""
    if traced is None:
        traced = trace_features(model, units)  # recorders go into this trace's graph only
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    wide = first is not None and first.dtype == torch.float64  # a float64 model stays so
    dtype = torch.float64 if wide else torch.float32
    recorders = _instrument(traced, device, mean_abs)
    gm = traced.graph_module
    was_training = model.training
    gm.eval()  # BatchNorm on batch statistics in run_pass with train_mode
    def run_pass():
        source = batches() if callable(batches) else batches
        mode = batch_statistics(gm) if train_mode else contextlib.nullcontext()
        with torch.autocast(device.type, enabled=False), mode:
            for batch in source:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x.to(device, dtype=dtype, non_blocking=True)
                noise = io.StringIO()  # fx prints its generated code when it fails
                try:
                    with contextlib.redirect_stderr(noise):
                        gm(x)
                except Exception as error:
                    _explain_trace_failure(model, x, error)
                    sys.stderr.write(noise.getvalue())
                    raise
                sys.stderr.write(noise.getvalue())  # what the model itself printed

    try:
        run_pass()
        broken = [name for name, r in recorders.items() if not bool(torch.isfinite(r.max).all())]
        if broken:
            raise NonFiniteError(f"activations of {broken[0]} are not finite (NaN / inf) on the "
                                 "corpus: no sparsity can be measured on this model")
        uni = None
        if universality:
            for r in recorders.values():
                r.counting, r.threshold = True, universality_threshold
            run_pass()
            samples = next(iter(recorders.values())).samples.clamp(min=1) if recorders else 1
            uni = {name: (100.0 * r.count.float() / samples).cpu()
                   for name, r in recorders.items()}
        samples = int(next(iter(recorders.values())).samples) if recorders else 0
        means = ({name: (r.abs_sum / max(1, samples)).float().cpu()
                  for name, r in recorders.items()} if mean_abs else None)
        return ActivationStats({name: r.max.cpu() for name, r in recorders.items()}, uni,
                               samples, means)
    finally:
        model.train(was_training)
