"""The latency-tuned slim model: the slim model deployed the way this machine runs it fastest.

Removing every dead filter gives the fewest MACs, not always the lowest latency: conv
kernels prefer some widths (multiples of 8 or 16 for vectorized kernels) and some memory
layouts (channels-last runs oneDNN's NHWC kernels on CPUs), and a BatchNorm after a conv is
a pass over memory that folding it into the conv's weights removes. Every candidate is
exact: BatchNorm folded with its eval statistics, dead filters kept (they output zero or a
constant, as they did) to round widths up, a layout that changes no formula; each passes
the same proof as the exact-minimum model. The candidates and the original are timed in
interleaved rounds (`prune.cost`) and the fastest at the target batch is kept, so that a
rounding or a layout is used only where it measures faster here.

Rounding is chosen per layer too: a wider layer makes its own convolution and the ones
that read it bigger, and conv kernels reward a width in one place and punish it in
another (here a rounded output width can save 4%, a rounded input width costs as much).
`per_layer_rounding` tries each layer's rounding in turn and keeps it when the model's
convolutions, each timed on the input it sees, get faster by more than their timing noise.

`runtime="onnxruntime"` / `"openvino"` measures the candidates where they will run: the
original and each candidate (BN folded, each global rounding) are exported, checked in
that runtime (prune.runtimes) and timed there. Those runtimes choose their own memory
layout (ONNX Runtime's NCHWc blocks, OpenVINO's blocked formats), so only the contiguous
layout is tried, and the per-layer search, which times PyTorch's convolutions one by one,
is not run.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from implicit_sparsity.errors import ProofError
from implicit_sparsity.measure.features import CONV_UNITS, trace_features
from implicit_sparsity.prune.api import DEFAULT_TOLERANCE, PruneResult, eval_mode, prune_model
from implicit_sparsity.prune.cost import (
    LATENCY_ROUNDS,
    conv_seconds,
    interleaved_times,
    latency_row,
    macs,
)
from implicit_sparsity.prune import runtimes
from implicit_sparsity.prune.proof import compare_outputs

#: Widths tried: the exact minimum, and rounded up to these multiples.
ROUNDINGS = (1, 8, 16)
LAYOUTS = ("contiguous", "channels_last")
#: A layer's rounding is kept when it makes the model's convolutions faster by at least this
#: share: repeated timings of one convolution differ by about 1% here.
ROUNDING_GAIN = 0.02
#: Seconds each convolution runs when timed alone in the per-layer search.
CONV_RUN_TIME = 0.2
#: Samples of the example batch on which a search trial's removal steps are checked.
SEARCH_SAMPLES = 2


@dataclass
class Candidate:
    name: str
    model: nn.Module
    rounding: int | dict[str, int]  # one multiple for all layers, or one per layer
    layout: str
    folded: bool
    macs: int
    result: PruneResult  # how it was built (its layers, proof); its model in NCHW layout
    latency: list[dict] = field(default_factory=list)  # one latency row per batch size

    def at(self, batch: int) -> dict:
        return next(row for row in self.latency if row["batch"] == batch)


@dataclass
class TunedSlim:
    exact: PruneResult          # the exact-minimum slim model, as prune_model gives it
    candidates: list[Candidate]  # candidates[0]: that model; the others BN-folded (if BN)
    best: Candidate              # the fastest at `target_batch` (highest median speed-up)
    target_batch: int
    macs_before: int
    searches: dict[str, list[dict]] = field(default_factory=dict)  # per layout: the trials
    runtime: str = "torch"       # where the candidates were timed (prune.runtimes.RUNTIMES)

    @property
    def model(self) -> nn.Module:
        return self.best.model

    def ratio(self, candidate: Candidate, batch: int) -> float:
        """Measured speed-up over the exact minimum's MAC reduction (1.0: as fast as the
        MACs promise)."""
        return candidate.at(batch)["speedup"] / self.exact.mac_reduction

    def table(self) -> str:
        batches = [row["batch"] for row in self.candidates[0].latency]
        wide = max(len(c.name) for c in self.candidates) + 2
        lines = [f"{'slim model':{wide}s}{'MACs':>8s}"
                 + "".join(f"{f'batch {b} ms':>14s}{'speed-up':>10s}{'/ MACs':>8s}"
                           for b in batches)]
        for c in self.candidates:
            cells = ""
            for b in batches:
                row = c.at(b)
                cells += (f"{row['after_ms']:8.2f} ±{row['after_iqr_ms']:4.2f}"
                          f"{row['speedup']:9.2f}x{'~' if row['within_noise'] else ' '}"
                          f"{self.ratio(c, b):7.2f}")
            mark = "  <- latency-tuned" if c is self.best else ""
            lines.append(f"{c.name:{wide}s}{self.macs_before / max(1, c.macs):7.2f}x{cells}{mark}")
        first = self.candidates[0].at(batches[0])
        lines.append(f"(original / slim in {self.runtime}, {first['device']}, "
                     f"{first['threads']} threads, "
                     f"medians ± IQR over {first['rounds']} interleaved rounds; / MACs: "
                     f"speed-up over the exact minimum's MAC reduction "
                     f"{self.exact.mac_reduction:.2f}x; ~: within noise, the speed-up's IQR "
                     "includes 1)")
        return "\n".join(lines)


def in_layout(model: nn.Module, layout: str) -> nn.Module:
    """`model` itself (contiguous) or a channels-last copy."""
    if layout == "channels_last":
        return copy.deepcopy(model).to(memory_format=torch.channels_last)
    return model


def _conv_widths(model: nn.Module) -> tuple[int, ...]:
    return tuple(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def per_layer_rounding(build, layers: list[str], cost, roundings: tuple[int, ...] = ROUNDINGS,
                       desc: str | None = None) -> tuple[dict[str, int], list[dict]]:
    """Each layer's rounding, chosen in turn: `build(rounding per layer)` gives a slim model,
    `cost(model)` its seconds (in tune_slim: its convolutions, each timed on the input it
    sees, `conv_seconds`); a layer's rounding is kept when it lowers the cost by more than
    ROUNDING_GAIN. Returns the choice ({layer: multiple}, 1 = exact width) and every trial
    ({"rounding", "ms", "kept"}). `desc`: show a progress bar with this title."""
    choice = dict.fromkeys(layers, 1)
    current = build(choice)
    best = cost(current)
    trials = [{"rounding": dict(choice), "ms": 1e3 * best, "kept": True}]
    for name in tqdm(layers, desc=desc, disable=desc is None, leave=False):
        for multiple in roundings:
            if multiple <= 1:
                continue
            trial = {**choice, name: multiple}
            slim = build(trial)
            if _conv_widths(slim) == _conv_widths(current):
                continue  # this rounding leaves the widths as they are
            seconds = cost(slim)
            kept = seconds < best * (1 - ROUNDING_GAIN)
            trials.append({"rounding": trial, "ms": 1e3 * seconds, "kept": kept})
            if kept:
                choice, best, current = trial, seconds, slim
    return choice, trials


def describe_rounding(rounding: int | dict[str, int]) -> str:
    if isinstance(rounding, dict):
        rounded = [f"{name} x{m}" for name, m in rounding.items() if m > 1]
        return f"widths per layer ({', '.join(rounded) or 'none rounded'})"
    return "exact widths" if rounding == 1 else f"widths to x{rounding}"


def tune_slim(model: nn.Module, example_input: torch.Tensor, *, check_data,
              batch_sizes: tuple[int, ...] = (1, 64), target_batch: int = 64,
              threads: int | None = None, min_run_time: float = 0.5,
              rounds: int = LATENCY_ROUNDS, roundings: tuple[int, ...] = ROUNDINGS,
              layouts: tuple[str, ...] = LAYOUTS, tolerance: float = DEFAULT_TOLERANCE,
              per_layer: bool = True, progress: bool = False, runtime: str = "torch",
              **prune_kwargs) -> TunedSlim:
    """The exact-minimum slim model and its exact deployment candidates, timed against the
    original at `batch_sizes`; the fastest at `target_batch` is `best`. `per_layer`: also a
    candidate per layout whose rounding is chosen conv layer by conv layer
    (`per_layer_rounding`, at `target_batch`). `prune_kwargs` go to `prune_model`
    (criterion, corpus, units, thresholds). A candidate whose outputs differ beyond
    `tolerance` on `check_data` raises ProofError: exact or refused. `progress`: progress
    bars for the search and the timing. `model` is left as it was (modes included).
    `runtime`: where the candidates are timed (see the module's text)."""
    if target_batch not in batch_sizes:
        raise ValueError(f"target batch {target_batch} is not among {batch_sizes}")
    if runtime not in ("torch", "onnxruntime", "openvino"):
        raise ValueError(f"unknown runtime {runtime!r}")
    if runtime != "torch":
        layouts, per_layer = ("contiguous",), False
    with eval_mode(model):
        tuning = _Tuning(model, example_input, check_data, tolerance, prune_kwargs,
                         threads or torch.get_num_threads(), min_run_time, runtime)
        for rounding in roundings:
            result = tuning.folded(rounding, proven=True)
            for layout in layouts:
                tuning.add(result, rounding, layout)
        if per_layer:
            for layout in layouts:
                tuning.search_per_layer(layout, roundings, target_batch, progress)
        tuning.time_all(batch_sizes, rounds, progress)
    candidates = tuning.candidates
    # by the speed-up's median over rounds: each round's ratio sees one machine state
    best = max(candidates, key=lambda c: c.at(target_batch)["speedup"])
    return TunedSlim(tuning.exact, candidates, best, target_batch,
                     macs(model, example_input[:1])["total"], tuning.searches, runtime)


class _Tuning:
    """The candidates of `tune_slim`: the exact minimum, then each rounding and layout,
    every one proven on `check_data` before it is timed."""

    def __init__(self, model, example_input, check_data, tolerance, prune_kwargs, threads,
                 min_run_time, runtime: str = "torch"):
        self.model, self.example_input, self.check_data = model, example_input, check_data
        self.runtime = runtime
        self.tolerance, self.prune_kwargs = tolerance, prune_kwargs
        self.threads, self.min_run_time = threads, min_run_time
        self.exact = prune_model(model, example_input, check_data=check_data,
                                 latency_batches=(), tolerance=tolerance, **prune_kwargs)
        self.candidates = [Candidate("exact minimum", self.exact.model, 1, "contiguous", False,
                                     macs(self.exact.model, example_input[:1])["total"],
                                     self.exact)]
        self.searches: dict[str, list] = {}
        self._built: dict[tuple, nn.Module] = {}
        self._timed: dict = {}

    def folded(self, rounding, proven: bool) -> PruneResult:
        """BN folded, widths rounded. A search trial is only timed (the chosen rounding is
        rebuilt proven): its removal steps are checked on a few samples, not the batch."""
        x = self.example_input if proven else self.example_input[:SEARCH_SAMPLES]
        return prune_model(self.model, x, check_data=self.check_data if proven else None,
                           fold_bn=True, latency_batches=(), round_to=rounding,
                           tolerance=self.tolerance, **self.prune_kwargs)

    def add(self, result: PruneResult, rounding, layout: str) -> None:
        slim = in_layout(result.model, layout)
        if slim is not result.model:
            proof = compare_outputs(self.model, slim, self.check_data)
            if not proof.holds(self.tolerance):
                raise ProofError(f"the {layout} slim model changed the outputs: "
                                 f"{proof.describe()}")
        has_bn = result.folded_batchnorm > 0  # a model without BatchNorm has none to fold
        self.candidates.append(Candidate(f"{'BN folded, ' if has_bn else ''}"
                                         f"{describe_rounding(rounding)}, {layout}",
                                         slim, rounding, layout, has_bn,
                                         macs(slim, self.example_input[:1])["total"], result))

    def search_per_layer(self, layout: str, roundings, target_batch: int,
                         progress: bool) -> None:
        """A candidate whose rounding is chosen conv layer by conv layer (conv layers: their
        convolutions are what the search times; MLP units keep the global roundings)."""
        units = self.prune_kwargs.get("units", CONV_UNITS)
        convs = {f.name for f in trace_features(self.model, units).features
                 if f.kind == "conv"}
        layers = [d.name for d in self.exact.layers if d.removed and d.name in convs]
        shape = self.example_input.shape[1:]
        x = self.example_input[:1].expand(target_batch, *shape).contiguous()

        def build(rounding: dict[str, int]) -> nn.Module:
            key = tuple(sorted(rounding.items()))
            if key not in self._built:
                self._built[key] = self.folded(rounding, proven=False).model
            return self._built[key]

        def cost(slim: nn.Module) -> float:
            return conv_seconds(in_layout(slim, layout), x, self.threads,
                                min(CONV_RUN_TIME, self.min_run_time), cache=self._timed)

        choice, trials = per_layer_rounding(
            build, layers, cost, roundings,
            desc=f"per-layer rounding, {layout}" if progress else None)
        self.searches[layout] = trials
        if any(m > 1 for m in choice.values()):
            self.add(self.folded(choice, proven=True), choice, layout)

    def time_all(self, batch_sizes, rounds: int, progress: bool) -> None:
        """Every candidate against the original, interleaved, at each batch size."""
        with self.runners() as runners:
            for batch in tqdm(batch_sizes, desc=f"timing {len(self.candidates)} candidates",
                              disable=not progress, leave=False):
                x = self.example_input[:1].expand(batch, *self.example_input.shape[1:])
                times = interleaved_times(runners, x.contiguous(), self.threads,
                                          self.min_run_time, rounds)
                self._record(batch, times, str(x.device))

    def _record(self, batch: int, times: list[list[float]], device: str) -> None:
        for c, seconds in zip(self.candidates, times[1:]):
            c.latency.append(latency_row(times[0], seconds, batch, device, self.threads))

    @contextlib.contextmanager
    def runners(self):
        """The original and every candidate as the runtime runs them: the modules for
        PyTorch; else each exported to a temporary folder and checked there first."""
        models = [self.model] + [c.model for c in self.candidates]
        if self.runtime == "torch":
            yield models
            return
        checks = [x if torch.is_tensor(x) else x[0] for x in self.check_data]
        with tempfile.TemporaryDirectory(prefix="implicit-sparsity-tune-") as folder:
            runs = []
            for i, model in enumerate(models):
                onnx = Path(folder) / f"{i}.onnx"
                runtimes.write_export("onnx", model, self.example_input, onnx, checks,
                                      self.threads)
                if self.runtime == "openvino":
                    xml = onnx.with_suffix(".xml")
                    runtimes.write_export("openvino", model, self.example_input, xml, checks,
                                          self.threads, onnx_path=onnx)
                    runs.append(runtimes.openvino_runner(xml, self.threads))
                else:
                    runs.append(runtimes.onnxruntime_runner(onnx, self.threads))
            yield runs
