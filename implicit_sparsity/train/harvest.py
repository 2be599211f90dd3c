"""Harvest while training: remove the dead filters from the model being trained as they die,
so the rest of the run trains (and pays for) a smaller network.

At the end of every `harvest_every`-th epoch the filters dead by the criterion (|gamma| below
the threshold, or no activation over the training corpus) are removed in place with the
transactions of `prune.surgery`, and kept only where that is exact for training too:

- a channel goes only when its train-mode output (BatchNorm on the batch's own statistics)
  is exactly zero on the check batch: it then gets exactly zero gradient from the loss, and
  nothing downstream sees it. A constant channel (act(beta) > 0) is kept: folded into a
  bias it would train as a bias, not as that channel's beta (`fold=False`);
- the proof: eval-mode and train-mode outputs on the check batch before and after, within
  the tolerance, no prediction changed; otherwise the model is put back as it was (the same
  parameter objects) and the run goes on unharvested this time, saying why;
- what holds per-element state follows the surgery exactly (`prune.origins`): the
  optimizer's state (Adam's moments, SGD's momentum, ...) is gathered to the kept elements,
  never reset, and the optimizer keeps its identity, its groups and their learning rates.

The harvester's state (original indices of the channels still there, each harvest's
record, the convs' group counts) goes into the run's checkpoint: a resumed run rebuilds the
architecture from it and goes on as the uninterrupted run does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ImplicitSparsityError, first_line
from implicit_sparsity.measure.activation import activation_statistics, batch_statistics
from implicit_sparsity.measure.features import CONV_UNITS, require_batchnorm, trace_features
from implicit_sparsity.models import adopt_shapes
from implicit_sparsity.optim.optimizers import edits_refused
from implicit_sparsity.prune.api import DEFAULT_STEP_TOLERANCE, DEFAULT_TOLERANCE, dead_masks, \
    eval_mode
from implicit_sparsity.prune.origins import recorded_origins, take_origins
from implicit_sparsity.prune.proof import compare_logits
from implicit_sparsity.prune.surgery import remove_dead_filters
from implicit_sparsity.train.config import HARVEST_CRITERIA

CRITERIA = HARVEST_CRITERIA
#: Why a filter dead by the criterion stays: in a training step it still outputs something
#: (a constant act(beta) > 0, or a |gamma| too small for the criterion but not for the batch).
NOT_ZERO_IN_TRAINING = "dead by the criterion, but its train-mode output is not exactly zero"


class HarvestRefused(ImplicitSparsityError):
    """A harvest that could not be proven exact; the model is as it was."""


@dataclass
class HarvestRecord:
    """One harvest: what went (original indices per layer), what is left, why the rest of
    the dead stayed, how long it took; `refused` says why nothing went, when so."""

    epoch: int
    removed: dict[str, list[int]] = field(default_factory=dict)
    alive: dict[str, int] = field(default_factory=dict)
    dead: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    refused: str | None = None
    seconds: float = 0.0

    @property
    def total_removed(self) -> int:
        return sum(len(v) for v in self.removed.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "total_removed": self.total_removed}


def train_mode_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs with BatchNorm in training mode (dropout off), its running
    statistics left as they were."""
    with torch.no_grad(), eval_mode(model), batch_statistics(model):
        return model(x)


def eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model):
        return model(x)


class _ModelSnapshot:
    """Every module's attributes, shallow: the parameter and buffer objects themselves. The
    surgery replaces tensors rather than editing them (nothing is folded here), so putting
    the attributes back restores the model exactly, with the parameters the optimizer holds."""

    def __init__(self, model: nn.Module):
        self.saved = [(m, {k: (dict(v) if isinstance(v, dict) else v)
                           for k, v in m.__dict__.items()}) for m in model.modules()]

    def restore(self) -> None:
        for module, attributes in self.saved:
            module.__dict__.clear()
            module.__dict__.update({k: (dict(v) if isinstance(v, dict) else v)
                                    for k, v in attributes.items()})


def follow_surgery(optimizer: torch.optim.Optimizer, model: nn.Module,
                   names_before: dict[int, str], shapes_before: dict[str, torch.Size],
                   origins: dict[str, torch.Tensor]) -> None:
    """Point `optimizer` at the narrowed parameters of `model` (same groups, same rates) and
    gather each per-element state tensor (the shape of its parameter) to the kept elements.
    Checks everything before changing anything: HarvestRefused when a parameter changed shape
    without a record of where its elements came from."""
    now = dict(model.named_parameters())
    plan = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = names_before.get(id(param))
            if name is None:  # not the model's (a parameter of the loss, say): as it is
                plan.append((param, param, None))
                continue
            if name not in now:
                raise HarvestRefused(f"the model no longer has {name}, which the optimizer "
                                     "holds")
            new, origin = now[name], origins.get(name)
            if origin is None and new.shape != shapes_before[name]:
                raise HarvestRefused(f"{name} changed shape without a record of its elements")
            if origin is not None and origin.shape != new.shape:
                raise HarvestRefused(f"{name}: the record of its elements does not fit")
            for key, value in (optimizer.state.get(param) or {}).items():
                if origin is not None and torch.is_tensor(value) and value.dim() \
                        and value.shape != shapes_before[name]:
                    raise HarvestRefused(
                        f"{name}: the optimizer keeps {key!r} of shape {tuple(value.shape)} "
                        f"for a parameter of shape {tuple(shapes_before[name])} (a factored "
                        "moment, as Adafactor's), which cannot follow the surgery exactly")
            plan.append((param, new, origin))
    new_state = {}
    for param, new, origin in plan:
        state = optimizer.state.get(param)
        if not state:
            continue
        shape = shapes_before.get(names_before.get(id(param)), param.shape)
        new_state[new] = {key: _gathered(value, shape, new, origin)
                          for key, value in state.items()}
    replaced = iter(new for _, new, _ in plan)
    for group in optimizer.param_groups:
        group["params"] = [next(replaced) for _ in group["params"]]
    optimizer.state.clear()
    optimizer.state.update(new_state)


def _gathered(value, shape_before: torch.Size, new: torch.Tensor, origin):
    if origin is None or not torch.is_tensor(value) or value.shape != shape_before:
        return value  # a step count, or the state of a parameter that kept its shape
    return value.flatten()[origin.to(value.device)].reshape(new.shape).clone()


class Harvester:
    """Removes dead filters from a model while it trains (see the module's text). Call
    `harvest(model, optimizer, epoch)`; both are edited in place."""

    def __init__(self, model: nn.Module, check_batch: torch.Tensor, *,
                 criterion: str = "gamma",
                 gamma_threshold: float = defaults.GAMMA_THRESHOLD,
                 activation_threshold: float = defaults.ACTIVATION_THRESHOLD,
                 corpus=None, tolerance: float = DEFAULT_TOLERANCE,
                 units: tuple[str, ...] = CONV_UNITS,
                 analysis_seconds: float = defaults.ANALYSIS_SECONDS):
        if criterion not in CRITERIA:
            raise ImplicitSparsityError(f"unknown harvest criterion {criterion!r}; valid: "
                                        f"{', '.join(CRITERIA)}")
        if criterion == "activation" and corpus is None:
            raise ImplicitSparsityError("harvesting by activation needs the training corpus")
        self.check_batch = check_batch
        self.criterion, self.corpus = criterion, corpus
        self.gamma_threshold, self.activation_threshold = gamma_threshold, activation_threshold
        self.tolerance, self.units, self.analysis_seconds = tolerance, units, analysis_seconds
        features = trace_features(model, units).features  # a model it cannot trace: here
        if criterion == "gamma":
            require_batchnorm(features)
        self.widths = {f.name: f.num_features for f in features}
        #: per layer, the original index of each channel the model has now
        self.channels = {f.name: list(range(f.num_features)) for f in features}
        self.records: list[dict] = []

    # --- what a checkpoint holds ---------------------------------------------------------
    def state_dict(self, model: nn.Module) -> dict:
        return {"widths": dict(self.widths), "channels": {k: list(v) for k, v in
                                                          self.channels.items()},
                "records": list(self.records), "conv_groups": conv_groups(model)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["widths"]) != set(self.widths):
            raise ImplicitSparsityError("the checkpoint's harvest record names other layers")
        self.widths = dict(state["widths"])  # a resumed model is narrower already
        self.channels = {k: list(v) for k, v in state["channels"].items()}
        self.records = list(state["records"])

    def snapshot_channels(self) -> dict[str, tuple[int, list[int]]]:
        """Per layer, (original width, original index of each channel now): what a gamma /
        beta snapshot needs to record the layer at its original width (`save_bn_snapshot`)."""
        return {name: (self.widths[name], list(kept)) for name, kept in self.channels.items()}

    @property
    def removed(self) -> dict[str, int]:
        """Filters harvested so far, per layer."""
        return {name: self.widths[name] - len(kept) for name, kept in self.channels.items()}

    # --- one harvest -----------------------------------------------------------------------
    def harvest(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                epoch: int = 0) -> HarvestRecord:
        """Remove what is dead and provably exact to remove; returns the record (and keeps
        it). The model is back in the train / eval mode it was in."""
        started = time.perf_counter()
        record = HarvestRecord(epoch)
        modes = {module: module.training for module in model.modules()}
        try:
            self._harvest(model, optimizer, record)
        except ImplicitSparsityError as refusal:  # refused, or a measurement refused
            record.refused = first_line(refusal, 200)
        finally:
            for module, training in modes.items():
                module.training = training
        record.alive = {name: len(kept) for name, kept in self.channels.items()}
        record.seconds = time.perf_counter() - started
        self.records.append(record.to_dict())
        return record

    def removable(self, model: nn.Module) -> tuple[dict, dict, dict, int]:
        """What a harvest now would try to remove, without removing it: per layer, the
        channels dead by the criterion whose train-mode output is exactly zero on the check
        batch (current indices); their strength (|gamma| or activation); per layer, the
        channels that output exactly zero; and how many dead ones do not."""
        x = self._check_input(model)
        dead, strength = dead_masks(model, self.criterion, self.corpus, self.gamma_threshold,
                                    self.activation_threshold, self.units)
        zero = {name: m == 0 for name, m in activation_statistics(
            model, [x], universality=False, units=self.units, train_mode=True
        ).max_activation.items()}
        moving = int(sum(int((m & ~zero[n]).sum()) for n, m in dead.items() if n in zero))
        dead = {name: mask & zero[name] for name, mask in dead.items() if name in zero}
        return dead, strength, zero, moving

    def _check_input(self, model: nn.Module) -> torch.Tensor:
        first = next(model.parameters())
        return self.check_batch.to(first.device, first.dtype)

    def _harvest(self, model, optimizer, record: HarvestRecord) -> None:
        refused = edits_refused(optimizer)
        if refused:
            raise HarvestRefused(refused)
        x = self._check_input(model)
        traced = trace_features(model, self.units)
        dead, strength, zero, moving = self.removable(model)
        record.dead = int(sum(int(m.sum()) for m in dead.values())) + moving
        if moving:
            record.reasons[NOT_ZERO_IN_TRAINING] = moving
        if not any(bool(m.any()) for m in dead.values()):
            return
        reference = eval_logits(model, x), train_mode_logits(model, x)
        names_before = {id(p): n for n, p in model.named_parameters()}
        shapes_before = {n: p.shape for n, p in model.named_parameters()}
        snapshot = _ModelSnapshot(model)
        try:
            with recorded_origins(model):
                decisions = remove_dead_filters(  # each step checked on a slice: cheaper
                    model, traced, dead, x[:defaults.HARVEST_STEP_SAMPLES], strength,
                    zero_when_dead=False,
                    tolerance=min(self.tolerance, DEFAULT_STEP_TOLERANCE),
                    analysis_seconds=self.analysis_seconds, fold=False)
            origins = take_origins(model)
            removed = {d.name: d.removed for d in decisions if d.removed}
            for d in decisions:
                for reason, count in d.reasons.items():
                    record.reasons[reason] = record.reasons.get(reason, 0) + count
            if not removed:
                return
            self._prove(model, x, reference, removed, zero)
            if optimizer is not None:
                follow_surgery(optimizer, model, names_before, shapes_before, origins)
        except BaseException:  # refused, failed or interrupted: the model as it was
            snapshot.restore()
            take_origins(model)
            raise
        for p in model.parameters():
            p.grad = None  # gradients of the old shapes: the next step makes its own
        for name, gone in removed.items():
            gone = set(gone)
            original = self.channels[name]
            record.removed[name] = sorted(original[i] for i in gone)
            self.channels[name] = [o for i, o in enumerate(original) if i not in gone]

    def _prove(self, model, x, reference, removed: dict[str, list[int]],
               zero: dict[str, torch.Tensor]) -> None:
        for name, gone in removed.items():
            alive = [i for i in gone if not bool(zero[name][i])]
            if alive:
                raise HarvestRefused(f"{name}: {len(alive)} channel(s) removed with a partner "
                                     "have a non-zero train-mode output")
        for mode, before, after in (("eval", reference[0], eval_logits(model, x)),
                                    ("train", reference[1], train_mode_logits(model, x))):
            proof = compare_logits(before, after)
            if not proof.holds(self.tolerance):
                raise HarvestRefused(f"the {mode}-mode outputs changed: {proof.describe()} "
                                     f"(tolerance {self.tolerance:g})")


def conv_groups(model: nn.Module) -> dict[str, int]:
    """Each conv's group count (a harvest can lower it: depthwise convs, whole groups)."""
    return {path: m.groups for path, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def adopt_harvested(model: nn.Module, state: dict[str, torch.Tensor], harvest: dict) -> None:
    """Give a freshly built model the architecture a harvested run's checkpoint holds."""
    for path, groups in harvest.get("conv_groups", {}).items():
        module = model.get_submodule(path)
        module.groups = int(groups)
    adopt_shapes(model, state)


def check_batch_of(batches, samples: int = defaults.HARVEST_CHECK_SAMPLES) -> torch.Tensor:
    """The first `samples` images of an iterator of (images, labels) batches, as one batch."""
    taken, count = [], 0
    for x, _ in batches:
        taken.append(x[:samples - count])
        count += len(taken[-1])
        if count >= samples:
            break
    if not taken:
        raise ImplicitSparsityError("no training images to check a harvest on")
    return torch.cat(taken)
