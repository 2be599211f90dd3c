"""The forward + backward part of a training step: eager, replayed from a CUDA graph, or
compiled with torch.compile.

At batch 40 a small CNN leaves a GPU idle while Python launches its ~100 kernels one by one;
a CUDA graph launches them all at once. Only forward and backward are captured: the optimizer
and the regularizer stay eager, so the update rule is the one the tests check against the
paper's definitions, and learning-rate changes need no new capture. A graph replays the
kernels eager mode would launch, on the same memory, so it computes the same numbers; that
is not taken on trust: the first graphed step is compared with the eager step on the same
batch and the graph is kept only if they agree within `CHECK_RTOL` (otherwise the run goes
on eagerly and says why). A batch of another shape (the last, partial batch of an epoch) runs
eagerly into the graph's gradient tensors.

`torch.compile` (step_capture: compile) generates fused kernels for the forward and the
backward pass on any device. It reorders floating-point sums, so its first step is checked
against the eager step to `COMPILE_RTOL` (the same check otherwise); batches of another shape
run eagerly (no second compilation for the last, partial batch).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch
from torch import nn

from implicit_sparsity.errors import ConfigError, RunStateError, first_line

#: Eager steps before the capture: lazy initialisation and cuDNN's autotuning happen there.
WARMUP_STEPS = 3
#: The graphed step must match the eager step to this relative tolerance (per tensor, relative
#: to its largest magnitude): room for cuDNN's non-deterministic reductions, nothing more.
CHECK_RTOL = 1e-5
#: A compiled step must match eager to this: fp32 sums over a batch's ~1e4-1e5 terms,
#: reassociated, differ by about sqrt(n) * 6e-8 ~ 1e-5 typically (measured 1.3e-5 on
#: BasicNet's gradients, batch 40, CPU); a wrong kernel differs by far more.
COMPILE_RTOL = 1e-4
#: torch.compile's backend: inductor generates the kernels (a C++ compiler on CPUs).
COMPILE_BACKEND = "inductor"

#: (x, y) -> (objective, *records): the forward pass; `objective` is back-propagated and the
#: records (logits, per-run losses) are returned detached for the epoch's metrics.
Compute = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


def has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def should_capture(mode: str, device: torch.device, model: nn.Module, world: int = 1
                   ) -> tuple[bool, str]:
    """Whether to capture the step with a CUDA graph, and why not when not.

    `auto` captures where it applies: a CUDA device, one process, no dropout (random masks
    drawn inside a graph would not be the eager run's masks). `cuda-graph` insists and fails
    with one line where it does not apply."""
    if mode == "off":
        return False, "eager (step_capture off)"
    if mode == "compile":
        if has_dropout(model):  # compiled dropout draws other masks: no check possible
            raise ConfigError("step_capture compile does not apply to a model with dropout")
        return False, "torch.compile (pending its check)"
    blockers = [reason for reason, blocks in (
        ("no CUDA device", device.type != "cuda"),
        ("a distributed run", world > 1),
        ("dropout in the model", has_dropout(model))) if blocks]
    if not blockers:
        return True, "CUDA graph (pending its check)"
    if mode == "cuda-graph":
        raise ConfigError(f"step_capture cuda-graph does not apply here: {', '.join(blockers)}")
    return False, f"eager ({', '.join(blockers)})"


class CudaGraphBackend:
    """Warm-up on a side stream and capture with `torch.cuda.graph`, as PyTorch's CUDA-graph
    notes prescribe."""

    def __init__(self):
        self.stream = torch.cuda.Stream()

    @contextmanager
    def warmup(self):
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, step: Callable[[], None], params: Sequence[torch.Tensor]
                ) -> Callable[[], None]:
        """A graph of `step`, which writes the gradients of `params` (a graph's backward
        writes them afresh on each replay; nothing to zero)."""
        graph = torch.cuda.CUDAGraph()
        with self.warmup(), torch.cuda.graph(graph, stream=self.stream):
            step()
        return graph.replay


class ForwardBackward:
    """Zero the gradients, run `compute`, back-propagate; eagerly or from a CUDA graph.

    `params` receive gradients; `buffers` are what the forward pass updates in place
    (BatchNorm's running statistics), restored around the capture check so that no batch
    counts twice. A graph that cannot be captured or does not match eager mode leaves the
    run eager, or stops it with `insist` (step_capture: cuda-graph)."""

    def __init__(self, compute: Compute, params: Sequence[torch.Tensor],
                 buffers: Sequence[torch.Tensor], capture: bool = False, backend=None,
                 warmup_steps: int = WARMUP_STEPS, reason: str = "eager",
                 insist: bool = False, compile: bool = False):
        self.compute = compute
        self.params = list(params)
        self.buffers = list(buffers)
        self.capture = capture
        self.backend = backend  # made at the first warm-up step when None
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.replay: Callable[[], None] | None = None
        self.static: tuple[torch.Tensor, ...] = ()
        self.status = reason
        self.insist = insist
        self.first_shape = None
        self.compile = compile  # torch.compile the compute, checked at the first step
        self.compiled: Compute | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The detached (objective, *records) of this batch; gradients in `p.grad`."""
        self.steps += 1
        if self.replay is not None:
            if x.shape == self.static[0].shape and y.shape == self.static[1].shape:
                self.static[0].copy_(x)
                self.static[1].copy_(y)
                self.replay()
                return self.static[2:]
            return self._eager_into_grads(x, y)
        if self.compiled is not None:
            if x.shape == self.first_shape:
                return self._eager(x, y, self.compiled)
            return self._eager(x, y)
        if self.compile:
            self.first_shape = x.shape
            return self._compile_and_check(x, y)
        if not self.capture:
            return self._eager(x, y)
        if self.backend is None:
            self.backend = CudaGraphBackend()
        if self.first_shape is None:
            self.first_shape = x.shape
        if self.steps <= self.warmup_steps or x.shape != self.first_shape:
            with self.backend.warmup():  # a graph is made for the full batches only
                return self._eager(x, y)
        return self._capture_and_check(x, y)

    def _eager(self, x, y, compute: Compute | None = None) -> tuple[torch.Tensor, ...]:
        for p in self.params:
            p.grad = None
        outputs = (compute or self.compute)(x, y)
        outputs[0].backward()
        return tuple(t.detach() for t in outputs)

    def _reference(self, x, y) -> tuple[tuple, list, list]:
        """The eager step on this batch, kept for a check: (outputs, gradients, buffers after
        it); the buffers are then restored, so that the batch does not count twice."""
        before = [b.clone() for b in self.buffers]
        eager = self._eager(x, y)
        eager_grads = [None if p.grad is None else p.grad.clone() for p in self.params]
        eager_buffers = [b.clone() for b in self.buffers]
        for b, saved in zip(self.buffers, before):
            b.copy_(saved)
        return eager, eager_grads, eager_buffers

    def _difference(self, outputs, reference) -> float:
        """The worst relative difference of outputs, gradients and buffers from eager's."""
        eager, eager_grads, eager_buffers = reference
        return max(relative_difference(a, b) for a, b in zip(
            [*outputs, *(p.grad for p in self.params), *self.buffers],
            [*eager, *eager_grads, *eager_buffers]))

    def _fall_back(self, reference, problem: str, mode: str) -> tuple[torch.Tensor, ...]:
        """Stop (the mode was insisted on), or keep what eager computed and go on eagerly."""
        if self.insist:
            raise RunStateError(f"step_capture {mode}: {problem}")
        eager, eager_grads, eager_buffers = reference
        for p, grad in zip(self.params, eager_grads):
            p.grad = grad
        for b, value in zip(self.buffers, eager_buffers):
            b.copy_(value)
        self.status = f"eager ({problem})"
        return eager

    def _compile_and_check(self, x, y) -> tuple[torch.Tensor, ...]:
        """Compile the compute, run this batch both ways, keep the compiled one if it
        matches."""
        self.compile = False  # decided now, once
        reference = self._reference(x, y)
        compiled = torch.compile(self.compute, dynamic=False, backend=COMPILE_BACKEND)
        try:
            outputs = self._eager(x, y, compiled)
        except Exception as error:  # no compiler, an unsupported operation, ...
            problem = f"torch.compile failed: {first_line(error, 200)}"
        else:
            worst = self._difference(outputs, reference)
            if worst <= COMPILE_RTOL:
                self.compiled = compiled
                self.status = f"torch.compile (matches eager to {worst:.1e})"
                return outputs
            problem = f"the compiled step differed from eager by {worst:.1e}"
        return self._fall_back(reference, problem, "compile")

    def _eager_into_grads(self, x, y) -> tuple[torch.Tensor, ...]:
        """Eager, accumulating into zeroed graph gradients (their memory is the graph's)."""
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()
        outputs = self.compute(x, y)
        outputs[0].backward()
        return tuple(t.detach() for t in outputs)

    def _capture_and_check(self, x, y) -> tuple[torch.Tensor, ...]:
        reference = self._reference(x, y)
        for p in self.params:
            p.grad = None
        self.static = (x.clone(), y.clone(), *(torch.empty_like(t) for t in reference[0]))

        def step():
            outputs = self.compute(self.static[0], self.static[1])
            outputs[0].backward()
            for static, value in zip(self.static[2:], outputs):
                static.copy_(value.detach())

        try:
            self.replay = self.backend.capture(step, self.params)
            self.replay()  # this batch's step, from the graph
        except RuntimeError as error:  # an operation a graph cannot hold
            problem = f"the CUDA graph could not be captured: {first_line(error)}"
        else:
            worst = self._difference(self.static[2:], reference)
            if worst <= CHECK_RTOL:
                self.status = f"CUDA graph (matches eager to {worst:.1e})"
                return self.static[2:]
            problem = f"the CUDA graph differed from eager by {worst:.1e}"
        eager = self._fall_back(reference, problem, "cuda-graph")
        self.replay, self.static, self.capture = None, (), False
        return eager


def relative_difference(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """max |a - b| / max |b|, 0 for two missing tensors, inf when only one is missing."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    if a.dtype == torch.bool or not a.is_floating_point():
        return 0.0 if torch.equal(a, b) else float("inf")
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    if diff == 0:
        return 0.0
    return diff / scale if scale > 0 else float("inf")
