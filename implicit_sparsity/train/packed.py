"""Several runs of one architecture trained as one stacked model (`sweep` packs compatible
runs this way by itself).

The K models' parameters and buffers are stacked with `torch.func.stack_module_state` and
evaluated with `vmap(functional_call)`, the buffers batched too, so every run keeps its own
BatchNorm running statistics (not `replace_all_batch_norm_modules_`, which would change
evaluation). Each run keeps its own optimizer and regularizer, built by the same code as a
single run over per-run views of the stacked parameters: a packed run computes what a
single run computes, with its own data, seed and hyper-parameters.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from implicit_sparsity.data import Augmentation
from implicit_sparsity.errors import ConfigError, DivergedError, PackingError
from implicit_sparsity.io import FolderLock
from implicit_sparsity.models import get_model_entry
from implicit_sparsity.optim import (
    L1GammaPenalty,
    Regularizer,
    StepSchedule,
    apply_schedule,
    build_optimizer,
    param_groups,
)
from implicit_sparsity.optim.regularization import slimming_gammas
from implicit_sparsity.train.capture import ForwardBackward, should_capture
from implicit_sparsity.train.config import PACK_FIELDS, TrainConfig
from implicit_sparsity.train.device import device_speed_settings
from implicit_sparsity.train.loop import (
    EpochTotals,
    RunResult,
    build_for_config,
    diverged_error,
    epoch_bar,
    epoch_metrics,
    epoch_seed,
    load_initial_weights,
    regularized_params,
    resolve_device,
    write_epoch,
    write_summary,
)
from implicit_sparsity.train.restore import build_model_for
from implicit_sparsity.train.run_folder import check_run_dir, prepare_run_dir


class PackedModels:
    def __init__(self, models: list[nn.Module], configs: list[TrainConfig],
                 capture: bool = False, capture_reason: str = "eager", insist: bool = False,
                 share_optimizer: bool = True):
        if len(models) != len(configs) or not models:
            raise ConfigError("one config per model, at least one")
        shapes = [[tuple(p.shape) for p in m.parameters()] for m in models]
        if any(s != shapes[0] for s in shapes):
            raise ConfigError("packed runs must share one architecture")
        self.configs = [c.resolved() for c in configs]
        if not all(map(packable, self.configs)):
            raise ConfigError("packed runs train conv nets in fp32 with the default memory "
                              "layout, without recycling")
        self.template = models[0]
        self.base = copy.deepcopy(models[0]).to("meta")
        self.params, self.buffers = stack_module_state(models)
        self.views = [{name: nn.Parameter(t.detach()[k]) for name, t in self.params.items()}
                      for k in range(len(models))]
        gammas = {id(p) for p in slimming_gammas(models[0])}
        self.gamma_names = [n for n, p in models[0].named_parameters() if id(p) in gammas]
        # runs side by side with the same optimizer and rates (seeds, regularizers and lambdas
        # may differ) share one optimizer over their slice of the stacked tensors: updates are
        # elementwise, so that is each run's own update, at one step per slice instead of per run
        identities = [optimizer_identity(c) for c in self.configs]
        self.segments = contiguous_segments(identities if share_optimizer
                                            else list(range(len(models))))
        name_of = {id(p): name for name, p in models[0].named_parameters()}
        self.slices, self.optimizers = [], []
        for start, stop in self.segments:
            config = self.configs[start]
            tensors = {name: nn.Parameter(t.detach()[start:stop])
                       for name, t in self.params.items()}
            groups = param_groups(models[0], config.lr, config.gamma_lr_scale,
                                  config.beta_lr_scale)
            for group in groups:  # the single run's groups, over the slice
                group["params"] = [tensors[name_of[id(p)]] for p in group["params"]]
            self.slices.append(tensors)
            self.optimizers.append(build_optimizer(config.optimizer, groups,
                                                   config.optimizer_args))
        # each run's regularizers, as a single run applies them: Network Slimming's L1 on
        # gamma (if any), then L2 / WD
        self.regularizers = [
            (L1GammaPenalty(config.l1_gamma, [self.views[k][n] for n in self.gamma_names]),
             Regularizer(config.regularizer, config.lam,
                         [self.views[k][name_of[id(p)]]
                          for p in regularized_params(models[0], config.regularize_bn)],
                         lr=config.lr))
            for k, config in enumerate(self.configs)]
        self.forward_backward = ForwardBackward(
            self._objective, list(self.params.values()), list(self.buffers.values()),
            capture=capture, reason=capture_reason, insist=insist)

    def __len__(self) -> int:
        return len(self.views)

    def _forward_one(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [K, B, ...] (run k's batch at x[k]) -> logits [K, B, classes]."""
        return vmap(self._forward_one, randomness="different")(self.params, self.buffers, x)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def _objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.forward(x)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                 reduction="none").view(len(self), -1).mean(1)
        return losses.sum(), losses, logits  # run k's loss depends on run k's parameters only

    def step(self, x: torch.Tensor, y: torch.Tensor, factors: list[float]) -> torch.Tensor:
        """One training step of every run: each run's mean cross-entropy on its own batch,
        its own regularizer and optimizer. Returns the K losses."""
        self.train(True)
        _, losses, self._last_logits = self.forward_backward(x, y)
        for k in range(len(self)):
            for name, view in self.views[k].items():
                view.grad = self.params[name].grad[k]
        for (start, stop), tensors in zip(self.segments, self.slices):
            for name, tensor in tensors.items():
                tensor.grad = self.params[name].grad[start:stop]
        # regularized_step for every run; the runs are independent, so the order across runs
        # does not matter: each run's regularizer acts before and after its optimizer's step
        for regularizers, factor in zip(self.regularizers, factors):
            for regularizer in regularizers:
                regularizer.before_step(factor)
        for optimizer in self.optimizers:
            optimizer.step()
        for regularizers, factor in zip(self.regularizers, factors):
            for regularizer in regularizers:
                regularizer.after_step(factor)
        return losses

    def set_schedule(self, factor: float) -> None:
        """Every run's rates at lr_t / lr_0 = factor (apply_schedule, run by run)."""
        for optimizer, (start, _) in zip(self.optimizers, self.segments):
            apply_schedule(optimizer, self.configs[start].lr, factor)

    def _segment(self, k: int) -> tuple[int, int, list[torch.Size]]:
        """Run k's optimizer, its place in that optimizer's slice, the slice shapes."""
        index = next(i for i, (start, stop) in enumerate(self.segments) if start <= k < stop)
        shapes = [p.shape for group in self.optimizers[index].param_groups
                  for p in group["params"]]
        return index, k - self.segments[index][0], shapes

    def optimizer_state_dict(self, k: int) -> dict:
        """Run k's optimizer state in the layout of a single run's optimizer."""
        index, offset, shapes = self._segment(k)
        full = self.optimizers[index].state_dict()
        state = {i: {key: value[offset].clone()
                     if torch.is_tensor(value) and value.shape == shapes[i]
                     else copy.deepcopy(value) for key, value in entry.items()}
                 for i, entry in full["state"].items()}
        return {"state": state, "param_groups": copy.deepcopy(full["param_groups"])}

    def load_optimizer_state_dicts(self, states: list[dict]) -> None:
        """Resume from each run's optimizer state (single-run layout, as checkpoints hold)."""
        for optimizer, (start, stop) in zip(self.optimizers, self.segments):
            shapes = [p.shape for group in optimizer.param_groups for p in group["params"]]
            mine = states[start:stop]
            stacked = {}
            for i, entry in mine[0]["state"].items():
                stacked[i] = {key: torch.stack([s["state"][i][key] for s in mine])
                              if torch.is_tensor(value)
                              and (len(mine), *value.shape) == tuple(shapes[int(i)])
                              else value for key, value in entry.items()}
            optimizer.load_state_dict({"state": stacked, "param_groups": mine[0]["param_groups"]})

    def last_wrong(self, y: torch.Tensor) -> torch.Tensor:
        """Per run, the training-mode errors of the last step (on the device)."""
        return (self._last_logits.argmax(-1) != y).sum(1)

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Run k's weights and buffers, in the layout of a single run's state dict."""
        state = {name: t[k].detach().clone() for name, t in self.params.items()}
        state.update({name: t[k].detach().clone() for name, t in self.buffers.items()})
        return {key: state[key] for key in self.template.state_dict()}


#: Config fields that packed runs must share: one architecture, one data stream shape, one
#: schedule. Seeds, optimizers, learning rates, regularizers, lambdas and Network Slimming's
#: l1_gamma may differ.
#: what packed runs must share: TrainConfig fields marked `pack` (train.config)


def contiguous_segments(keys: list) -> list[tuple[int, int]]:
    """[start, stop) of each run of equal neighbouring keys: [a, a, b, a] -> 0-2, 2-3, 3-4."""
    segments = []
    for k, key in enumerate(keys):
        if segments and keys[segments[-1][0]] == key:
            segments[-1] = (segments[-1][0], k + 1)
        else:
            segments.append((k, k + 1))
    return segments


def optimizer_identity(config: TrainConfig) -> tuple:
    """Runs with equal identities update their parameters by the same rule and rates."""
    return (config.optimizer, config.lr, repr(sorted(config.optimizer_args.items())),
            config.gamma_lr_scale, config.beta_lr_scale)


#: Optimizers whose update depends on a tensor's shape (see `packable`).
UNPACKABLE_OPTIMIZERS = ("adafactor", "muon", "adamw-schedulefree")


def packable(config: TrainConfig) -> bool:
    """vmap's batch rules do not take BatchNorm under bf16 autocast, and stacked weights have
    no NHWC layout; recycling edits one run's weights between steps; models outside the
    paper's CNNs are not packed; a harvest gives each run its own shapes; Adafactor factors
    a tensor's second moment over its last two dimensions, so a stacked [K, ...] tensor
    would get another rule (a BatchNorm vector would be factored), and Muon orthogonalizes a
    whole matrix (K stacked ones would be one); schedule-free AdamW is switched between
    iterates around the steps: such runs train one by one."""

    return (config.precision == "fp32" and not config.channels_last
            and config.optimizer not in UNPACKABLE_OPTIMIZERS
            and not config.recycle_every and not config.harvest_every
            and get_model_entry(config.model).packable
            and config.step_capture != "compile")


def pack_key(config: TrainConfig) -> tuple:
    """Runs with equal keys can train packed together."""
    resolved = config.resolved()
    return tuple(str(getattr(resolved, name)) for name in PACK_FIELDS)


def train_packed(configs: list[TrainConfig], outs: list, verbose: bool = True) -> list:
    """Train K compatible runs as one packed model; each writes the run folder a single run
    would write (config, metrics, gamma / beta history, checkpoints) and resumes like one.
    Runs without dropout end where their single runs end, up to float rounding. A run whose
    loss becomes non-finite is marked diverged and stops; the others go on, and a
    `DivergedError` naming the diverged runs is raised at the end."""
    configs = [c.resolved() for c in configs]
    outs = [Path(o) for o in outs]
    with contextlib.ExitStack() as locks:
        for out in outs:
            locks.enter_context(FolderLock(out, "run folder", tidy=True))
        return _train_packed(configs, outs, verbose)


def _resumable_together(configs: list[TrainConfig], outs: list[Path], device
                        ) -> tuple[list[dict | None], int]:
    """Each run's checkpoint (or None) and the epoch they all resume from; PackingError when
    they cannot train as one packed model."""
    harvesting = [i for i, c in enumerate(configs) if c.harvest_every]
    if harvesting:
        raise PackingError(f"run {harvesting[0] + 1} harvests while training (harvest_every): "
                           "its shapes would part from the others'; runs that harvest train "
                           "one by one")
    if len({pack_key(c) for c in configs}) != 1:
        raise PackingError("these runs cannot be packed: they differ in "
                           + ", ".join(f for i, f in enumerate(PACK_FIELDS)
                                       if len({pack_key(c)[i] for c in configs}) > 1))
    states = [check_run_dir(out, config, device) for out, config in zip(outs, configs)]
    start = {s["epoch"] if s else 0 for s in states}
    if len(start) != 1:
        raise PackingError("packed runs must resume from the same epoch")
    return states, start.pop()


def _member_model(config: TrainConfig, state: dict | None, device) -> nn.Module:
    """One run's model, initialized as its single run would be, or from its checkpoint."""
    torch.manual_seed(config.seed)  # the same initialization as a single run
    model = build_model_for(config)
    if config.init_from:
        load_initial_weights(model, config.init_from)
    if state:
        model.load_state_dict(state["model"])
    return model.to(device)


def _write_members(packed, models, configs, outs, histories, data, epoch: int, factor: float,
                   totals: EpochTotals, seconds: float) -> list[str]:
    """Each live run's epoch into its own folder, as its single run writes it; a run whose
    loss became non-finite is marked diverged and stops (its history becomes None). Returns
    the messages of the runs that stopped now."""
    loss_sums, wrongs = totals.loss_sum.tolist(), totals.wrong.tolist()  # waits
    seen = int(totals.seen.item())
    first_bad = totals.watch.first_bad_step().tolist()
    stopped = []
    for k, (out, config) in enumerate(zip(outs, configs)):
        if histories[k] is None:  # diverged earlier
            continue
        if first_bad[k]:
            stopped.append(str(diverged_error(out, epoch, first_bad[k],
                                              data.steps_per_epoch(config.batch_size))))
            histories[k] = None
            continue
        models[k].load_state_dict(packed.state_dict(k))
        metrics = epoch_metrics(models[k], config, data, epoch, factor, loss_sums[k], wrongs[k],
                                seen, seconds)
        metrics["packed_with"] = len(configs)
        metrics["training_step"] = packed.forward_backward.status
        write_epoch(out, models[k], packed.optimizer_state_dict(k), config, data, epoch,
                    metrics, histories[k])
    return stopped


def _train_packed(configs: list[TrainConfig], outs: list[Path], verbose: bool) -> list:
    device = resolve_device(configs[0].device)
    device_speed_settings(configs[0], device)
    states, start_epoch = _resumable_together(configs, outs, device)
    data, _ = build_for_config(configs[0], device)
    models = [_member_model(config, state, device) for config, state in zip(configs, states)]
    capture, step_status = should_capture(configs[0].step_capture, device, models[0])
    packed = PackedModels(models, configs, capture=capture, capture_reason=step_status,
                          insist=configs[0].step_capture == "cuda-graph")
    histories = [prepare_run_dir(out, config, model, state)
                 for out, config, model, state in zip(outs, configs, models, states)]
    diverged: list[str] = []  # the messages of runs that stopped
    if start_epoch:
        packed.load_optimizer_state_dicts([state["optimizer"] for state in states])
    schedule = StepSchedule(tuple(configs[0].epochs), configs[0].lr_decay)
    aug = Augmentation(flip=configs[0].flip, crop_padding=configs[0].crop_padding)
    say = tqdm.write if verbose else (lambda *_: None)
    say(f"training {len(configs)} packed runs of {configs[0].model} (width "
        f"{configs[0].width}) on {configs[0].dataset} -> " + ", ".join(map(str, outs)))
    started = time.perf_counter()
    for epoch in epoch_bar(schedule, start_epoch):
        factor = schedule.factor(epoch - 1)
        packed.set_schedule(factor)
        torch.manual_seed(epoch_seed(configs[0].seed, epoch))
        batches = data.packed_train_batches(configs[0].batch_size,
                                            [epoch_seed(c.seed, epoch) for c in configs], aug)
        totals, epoch_start = EpochTotals(len(configs), device), time.perf_counter()
        for x, y in batches:
            losses = packed.step(x, y, [factor] * len(configs))
            totals.add(losses, packed.last_wrong(y), y.shape[1])
        totals.seen.item()  # waits for the device: the epoch's time is all of its work
        seconds = time.perf_counter() - epoch_start
        if packed.forward_backward.status != step_status:  # decided during this epoch
            step_status = packed.forward_backward.status
            say(f"training step: {step_status}")
        diverged += _write_members(packed, models, configs, outs, histories, data, epoch,
                                   factor, totals, seconds)
        if all(h is None for h in histories):
            break
    results = []
    for k, (out, config) in enumerate(zip(outs, configs)):
        all_metrics = histories[k]
        if all_metrics is None:
            continue
        write_summary(out, all_metrics, schedule.total_epochs, started, processes=1,
                      packed_with=len(configs))
        results.append(RunResult(out, config, models[k], all_metrics))
    if diverged:
        raise DivergedError("; ".join(diverged))
    return results
