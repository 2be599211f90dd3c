"""One training run, readable top to bottom: config -> data, model, optimizer -> epochs.

Everything random in epoch `e` (data order, augmentation, dropout) is derived from
`(seed, e)`, and a checkpoint is written atomically after each epoch, so a killed run
resumes from its last checkpoint and ends exactly where an uninterrupted run ends.
Metrics are accumulated on the device and read once per epoch (no per-step host sync).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from implicit_sparsity import defaults
from implicit_sparsity.data import Augmentation, get_dataset_entry, load_dataset
from implicit_sparsity.errors import (
    ConfigError,
    DivergedError,
    ImplicitSparsityError,
    RunStateError,
    first_line,
)
from implicit_sparsity.io import FolderLock
from implicit_sparsity.io import run_dir as rd
from implicit_sparsity.measure.classification import TOP_K, count_wrong
from implicit_sparsity.measure.scale import gamma_sparsity, total
from implicit_sparsity.models import adopt_shapes, bn_layer_names, get_model_entry
from implicit_sparsity.optim import (
    L1GammaPenalty,
    Regularizer,
    StepSchedule,
    apply_schedule,
    build_optimizer,
    decoupled_rates,
    own_decoupled_decay,
    param_groups,
    regularized_step,
    is_schedule_free,
    recompute_bn_statistics,
    set_mode,
)
from implicit_sparsity.optim.optimizers import is_batchnorm_param
from implicit_sparsity.optim.regularization import slimming_gammas
from implicit_sparsity.train import distributed
from implicit_sparsity.train.capture import ForwardBackward, should_capture
from implicit_sparsity.train.config import TrainConfig
from implicit_sparsity.prune.api import eval_mode
from implicit_sparsity.prune.cost import macs
from implicit_sparsity.train.device import device_speed_settings
from implicit_sparsity.train.harvest import Harvester, adopt_harvested, check_batch_of
from implicit_sparsity.train.recycle import Recycler
from implicit_sparsity.train.restore import build_model_for, load_trained
from implicit_sparsity.train.run_folder import check_run_dir, check_run_dir_config, prepare_run_dir

#: Called after each finished epoch with (epoch, model, metrics); may raise to stop.
EpochCallback = Callable[[int, nn.Module, dict], None]


@dataclass
class RunResult:
    run_dir: Path
    config: TrainConfig
    model: nn.Module
    metrics: list[dict]


def ensure_trained(config: TrainConfig, out: str | Path, verbose: bool = True) -> RunResult:
    """Train into `out`, or reuse the finished run there (same config), or resume it."""
    out = Path(out)
    if rd.is_finished(out):

        check_run_dir_config(out, config.resolved())
        trained = load_trained(out)
        return RunResult(out, trained.config, trained.model, rd.read_metrics(out))
    return train(config, out, verbose=verbose)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunStateError(f"device {name} asked for, but PyTorch sees no CUDA device")
    return device


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one epoch (1-based), fixed by the run's seed."""
    return seed * 1_000_003 + epoch


def build_for_config(config: TrainConfig, device: torch.device):
    """The data set (on the device) and the freshly initialized model of a resolved config."""
    entry = get_dataset_entry(config.dataset)
    min_size = get_model_entry(config.model).min_input_size(entry.head)
    data = load_dataset(config.dataset, config.data_dir, device=device,
                        classes=config.class_subset,
                        train_subset=config.train_subset, test_subset=config.test_subset,
                        subset_seed=config.subset_seed, min_size=min_size,
                        num_workers=config.num_workers)
    if config.batch_size > data.num_train:
        raise ConfigError(f"batch size {config.batch_size} is larger than the {data.num_train} "
                          f"training images of {config.dataset}; choose a smaller --batch-size")
    torch.manual_seed(config.seed)
    model = build_model_for(config)
    if config.init_from:
        load_initial_weights(model, config.init_from)
    return data, model.to(device)


def load_initial_weights(model: nn.Module, path: str) -> None:
    """Start from saved weights: a slim model (its smaller shapes are adopted) or a run's
    checkpoint. How fine-tuning after explicit pruning reuses the training loop."""
    try:
        saved = rd.load_checkpoint(Path(path))
    except Exception as error:  # not a file of ours, truncated, or unreadable
        first = first_line(error)
        raise RunStateError(f"init_from {path}: not a checkpoint or slim model that loads "
                            f"({first[:120]})") from None
    state = (saved.get("state_dict") or saved.get("model")) if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise RunStateError(f"init_from {path} holds no model weights")
    try:
        adopt_shapes(model, state)
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, AttributeError) as error:
        first = first_line(error)
        raise RunStateError(f"init_from {path}: its weights do not fit this model "
                            f"({first[:160]})") from None


def regularized_params(model: nn.Module, include_bn: bool) -> list[nn.Parameter]:
    if include_bn:
        return list(model.parameters())
    bn = {id(p) for m in model.modules() if is_batchnorm_param(m) for p in m.parameters()}
    return [p for p in model.parameters() if id(p) not in bn]


@torch.no_grad()
def evaluate(model: nn.Module, batches) -> tuple[float, float, float]:
    """(mean cross-entropy, % top-1 error, % top-5 error) over batches, model in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = wrong = wrong_top_k = None
    count = 0
    for x, y in batches:
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction="sum")
        loss_sum = loss if loss_sum is None else loss_sum + loss
        miss, miss_top_k = count_wrong(logits, y), count_wrong(logits, y, TOP_K)
        wrong = miss if wrong is None else wrong + miss
        wrong_top_k = miss_top_k if wrong_top_k is None else wrong_top_k + miss_top_k
        count += len(y)
    model.train(was_training)
    if not count:
        return float("nan"), float("nan"), float("nan")
    return (loss_sum.item() / count, 100.0 * wrong.item() / count,
            100.0 * wrong_top_k.item() / count)


def epoch_metrics(model: nn.Module, config: TrainConfig, data, epoch: int, factor: float,
                  loss_sum: float, wrong: int, seen: int, train_seconds: float) -> dict:
    """An epoch's line of metrics.jsonl: training figures, test loss / error, sparsity."""
    test_loss, test_error, test_error_top_k = evaluate(model,
                                                      data.test_batches(config.eval_batch_size))
    layers = gamma_sparsity(model, config.gamma_threshold)  # none in a model without BN
    return {
        "epoch": epoch, "lr": config.lr * factor,
        "train_loss": loss_sum / seen, "train_error": 100.0 * wrong / seen,
        "test_loss": test_loss, "test_error": test_error, "test_error_top5": test_error_top_k,
        "sparsity_gamma": {l.name: l.percent for l in layers},
        "sparsity_gamma_total": total(layers).percent if layers else None,
        "inactive_gamma": {l.name: l.inactive for l in layers},
        "features": {l.name: l.features for l in layers},
        "train_samples": seen, "train_seconds": train_seconds,
        "images_per_second": seen / train_seconds,
    }


def gamma_text(metrics: dict) -> str:
    """", sparsity by |gamma| x%" for an epoch's metrics; nothing for a model without BN."""
    value = metrics.get("sparsity_gamma_total")
    return "" if value is None else f", sparsity by |gamma| {value:.1f}%"


def write_epoch(out: Path, model: nn.Module, optimizer_state: dict, config: TrainConfig, data,
                epoch: int, metrics: dict, history: list[dict],
                harvest: dict | None = None,
                channels: dict[str, tuple[int, list[int]]] | None = None) -> None:
    """An epoch's files: gamma / beta snapshot, the checkpoint (atomic, holding every epoch's
    metrics: the run's single source of truth), then the metrics line. A kill between the
    two leaves a checkpoint that rewrites metrics.jsonl on resume. `harvest`: the state of
    a run that harvests while training (its architecture), `channels` its layers' original
    indices (gamma / beta recorded at the original width, harvested channels as NaN)."""
    history.append(metrics)
    rd.save_bn_snapshot(bn_layer_names(model), out, epoch, channels)
    rd.atomic_torch_save({"format": 1, "epoch": epoch, "model": model.state_dict(),
                          "optimizer": optimizer_state, "config": config.to_dict(),
                          "data_stats": {"mean": data.mean, "std": data.std},
                          "metrics": history, **({"harvest": harvest} if harvest else {})},
                         out / rd.CHECKPOINT)
    rd.append_metrics(out, metrics)


class NonFiniteWatch:
    """Counts, on the device, the steps before the first non-finite loss of an epoch (no
    per-step host synchronisation); read once at the epoch's end."""

    def __init__(self, runs: int, device):
        shape = (runs,) if runs > 1 else ()
        self.bad = torch.zeros(shape, dtype=torch.bool, device=device)
        self.good_steps = torch.zeros(shape, dtype=torch.long, device=device)

    def update(self, loss: torch.Tensor) -> None:
        self.bad |= ~torch.isfinite(loss.detach())
        self.good_steps += ~self.bad

    def first_bad_step(self) -> torch.Tensor:
        """Per run, the 1-based step of the first non-finite loss, or 0 (on the device)."""
        return torch.where(self.bad, self.good_steps + 1, 0)


def diverged_error(out: Path, epoch: int, step: int | None, steps: int) -> DivergedError:
    """Mark run `out` diverged and say so in one line."""
    rd.mark_diverged(out, {"epoch": epoch, "step": step, "steps_per_epoch": steps,
                           "reason": "non-finite training loss"})
    where = f"step {step} of {steps}" if step else "a step of another process"
    return DivergedError(f"run {out} diverged: non-finite loss at epoch {epoch}, {where}; "
                         f"marked in {rd.DIVERGED} (not resumed), last good checkpoint kept")


def make_harvester(config: TrainConfig, model, data, world: int, state: dict | None, say):
    """The harvester of a run that asks for one (train.harvest), or None; where it cannot
    apply (the tracer refuses the model, no BatchNorm to read |gamma| from) it says so in one
    line and the run trains unharvested."""
    if not config.harvest_every:
        return None
    if world > 1:
        raise ConfigError("harvest_every: a harvest would have to be decided on one process "
                          "and carried out on all; train with one process (or harvest after "
                          "training with prune)")
    check = check_batch_of(data.train_eval_batches(defaults.HARVEST_CHECK_SAMPLES))
    try:
        harvester = Harvester(
            model, check, criterion=config.harvest_criterion,
            gamma_threshold=config.gamma_threshold,
            corpus=(lambda: data.train_eval_batches(config.eval_batch_size))
            if config.harvest_criterion == "activation" else None)
    except ImplicitSparsityError as error:
        say(f"harvest_every: {first_line(error, 160)}; training unharvested")
        return None
    if state is not None:
        harvester.load_state_dict(state)
    return harvester


def model_size(model: nn.Module, example: torch.Tensor) -> dict:
    """Parameters and MACs per sample of the model as it is now."""
    with eval_mode(model):
        counted = macs(model, example[:1].to(next(model.parameters()).device))["total"]
    return {"model_params": sum(p.numel() for p in model.parameters()), "model_macs": counted}


def harvest_metrics(metrics: dict, harvester: Harvester, model: nn.Module) -> None:
    """Add to an epoch's metrics what a harvesting run records of the model it trained."""
    removed = harvester.removed
    metrics["filters_alive"] = {name: len(kept) for name, kept in harvester.channels.items()}
    metrics.update(model_size(model, harvester.check_batch))
    inactive = {name: count + removed.get(name, 0)
                for name, count in metrics["inactive_gamma"].items()}
    features = {name: harvester.widths.get(name, count)
                for name, count in metrics["features"].items()}
    metrics["inactive_gamma"], metrics["features"] = inactive, features
    metrics["sparsity_gamma"] = {name: 100.0 * inactive[name] / features[name]
                                 for name in inactive}
    if inactive:
        metrics["sparsity_gamma_total"] = (100.0 * sum(inactive.values())
                                           / sum(features.values()))


def harvest_summary(metrics: list[dict]) -> dict:
    """A harvesting run's summary: what went, the final model's size against the full
    width, and the training time saved, measured: the median training time of the epochs
    trained at full width against each later epoch's (less the harvests' own time)."""
    if not any("filters_alive" in m for m in metrics):
        return {}
    harvests = [m["harvest"] for m in metrics if "harvest" in m]
    first = metrics[0]
    widest = max(sum(m["filters_alive"].values()) for m in metrics)
    at_full = [m for m in metrics if sum(m["filters_alive"].values()) == widest]
    narrower = [m for m in metrics if sum(m["filters_alive"].values()) < widest]
    full_seconds = statistics.median(m["train_seconds"] for m in at_full)
    harvest_seconds = sum(r["seconds"] for r in harvests)
    last = next((r for r in reversed(harvests) if "model_params" in r), None)
    return {"harvest": {
        "harvests": len(harvests), "refused": sum(1 for r in harvests if r["refused"]),
        "filters_removed": sum(r["total_removed"] for r in harvests),
        "params": {"full_width": first["model_params"],
                   "final": last["model_params"] if last else first["model_params"]},
        "macs": {"full_width": first["model_macs"],
                 "final": last["model_macs"] if last else first["model_macs"]},
        "full_width_epoch_seconds": full_seconds,
        "epochs_at_full_width": len(at_full),
        "harvest_seconds": harvest_seconds,
        "train_seconds_saved": (sum(full_seconds - m["train_seconds"] for m in narrower)
                                - harvest_seconds)}}


def make_recycler(config: TrainConfig, model, optimizer, world: int):
    """The ReDo recycler of a run that asks for one (train.recycle), or None."""
    if not config.recycle_every:
        return None
    if world > 1:
        raise ConfigError("recycle_every: recycling is per process and would make the "
                          "processes' models differ; train with one process")

    return Recycler(model, optimizer, every=config.recycle_every, tau=config.recycle_tau,
                    negative_slope=config.negative_slope, beta_init=config.beta_init,
                    seed=config.seed, units=get_model_entry(config.model).units)


def train(config: TrainConfig, out: str | Path, *, callbacks: tuple[EpochCallback, ...] = (),
          verbose: bool = True) -> RunResult:
    """Train one run into folder `out`, resuming it if it holds a checkpoint."""
    config = config.resolved()  # every check before any work
    out = Path(out)
    cluster, device_name = distributed.join(config.device)
    try:
        lock = (FolderLock(out, "run folder", tidy=True) if cluster.main
                else contextlib.nullcontext())
        with lock:
            return _train(config, out, cluster, resolve_device(device_name), callbacks,
                          verbose)
    finally:
        distributed.leave(cluster)


def _train(config: TrainConfig, out: Path, cluster: distributed.Cluster, device: torch.device,
           callbacks: tuple[EpochCallback, ...], verbose: bool) -> RunResult:
    run = SingleRun(config, out, cluster, device, verbose)
    schedule = StepSchedule(tuple(config.epochs), config.lr_decay)
    started = time.perf_counter()
    bar = epoch_bar(schedule, run.start_epoch, cluster.main)
    for epoch in bar:
        metrics = run.train_epoch(epoch, schedule.factor(epoch - 1))
        bar.set_postfix(test_err=f"{metrics['test_error']:.1f}",
                        **({} if metrics["sparsity_gamma_total"] is None else {
                            "sparsity": f"{metrics['sparsity_gamma_total']:.0f}%"}))
        if bar.disable:  # no bar on a non-terminal: one line per epoch instead
            run.say(f"epoch {epoch}/{schedule.total_epochs}: train loss "
                    f"{metrics['train_loss']:.3f}, test error {metrics['test_error']:.2f}%"
                    f"{gamma_text(metrics)}")
        if cluster.main:
            for callback in callbacks:
                callback(epoch, run.model, metrics)
    all_metrics = run.history if cluster.main else rd.read_metrics(out)
    if cluster.main:
        write_summary(out, all_metrics, schedule.total_epochs, started, processes=cluster.world,
                      **harvest_summary(all_metrics))
    distributed.barrier(cluster)
    return RunResult(out, config, run.model, all_metrics)


def epoch_bar(schedule: StepSchedule, start_epoch: int, show: bool = True) -> tqdm:
    """The epochs still to train (1-based), as a progress bar (on the main process)."""
    return tqdm(range(start_epoch + 1, schedule.total_epochs + 1), desc="epochs",
                initial=start_epoch, total=schedule.total_epochs,
                disable=None if show else True)


def write_summary(out: Path, metrics: list[dict], total_epochs: int, started: float,
                  **extra) -> None:
    """summary.json, written last: its presence means the run is finished."""
    summary = {"final": metrics[-1] if metrics else {}, "epochs": total_epochs, **extra,
               "wall_seconds_this_session": time.perf_counter() - started,
               "torch_threads": torch.get_num_threads()}  # what its timings ran on
    rd.atomic_write_text(out / rd.SUMMARY, json.dumps(summary, indent=2))


class EpochTotals:
    """One epoch's training loss, errors and samples of K runs, summed on the device (no
    per-step host synchronisation), and the steps before the first non-finite loss."""

    def __init__(self, runs: int, device):
        shape = (runs,) if runs > 1 else ()
        self.loss_sum = torch.zeros(shape, device=device)
        self.wrong = torch.zeros(shape, device=device, dtype=torch.long)
        self.seen = torch.zeros((), device=device, dtype=torch.long)
        self.watch = NonFiniteWatch(runs, device)

    def add(self, loss: torch.Tensor, wrong: torch.Tensor, samples: int) -> None:
        self.watch.update(loss)
        self.loss_sum += loss * samples
        self.wrong += wrong
        self.seen += samples


class SingleRun:
    """One run's model, optimizer, data and folder, trained epoch by epoch (data-parallel
    across the processes of `cluster`)."""

    def __init__(self, config: TrainConfig, out: Path, cluster: distributed.Cluster,
                 device: torch.device, verbose: bool):
        self.config, self.out, self.cluster, self.device = config, out, cluster, device
        distributed.check_batch(config.batch_size, cluster)
        device_speed_settings(config, device)
        state = check_run_dir(out, config, device)
        self.data, self.model = build_for_config(config, device)  # a missing data set: here
        if state is not None and state.get("harvest"):  # the architecture harvested so far
            adopt_harvested(self.model, state["model"], state["harvest"])
            self.model.to(device)
        capture, self.step_status = should_capture(config.step_capture, device, self.model,
                                                   cluster.world)
        distributed.barrier(cluster)  # every process has checked the folder before rank 0 writes
        groups = param_groups(self.model, config.lr, config.gamma_lr_scale, config.beta_lr_scale)
        self.optimizer = build_optimizer(
            config.optimizer, groups, config.optimizer_args,
            own_decay=own_decoupled_decay(config.optimizer, config.regularizer, config.lam))
        self._build_regularizers()
        self.aug = Augmentation(flip=config.flip, crop_padding=config.crop_padding)
        self.start_epoch = 0
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.start_epoch = state["epoch"]
        self.history = prepare_run_dir(out, config, self.model, state) if cluster.main else []
        self.recycler = make_recycler(config, self.model, self.optimizer, cluster.world)
        self.say = tqdm.write if verbose and cluster.main else (lambda *_: None)
        self.harvester = make_harvester(config, self.model, self.data, cluster.world,
                                        state.get("harvest") if state else None, self.say)
        self._build_step(capture)
        self.steps = self.data.steps_per_epoch(config.batch_size, cluster.world)
        self.say(self._describe(state is not None))

    def _build_regularizers(self) -> None:
        """The regularizers hold the model's parameters: built again after a harvest."""
        config = self.config
        self.regularizers = (
            L1GammaPenalty(config.l1_gamma, slimming_gammas(self.model)),  # Slimming only
            Regularizer("none" if own_decoupled_decay(config.optimizer, config.regularizer,
                                                      config.lam) else config.regularizer,
                        config.lam, regularized_params(self.model, config.regularize_bn),
                        lr=decoupled_rates(self.optimizer, config.lr)))

    def _build_step(self, capture: bool) -> None:
        """What a training step calls (DDP's wrapper when distributed) and its captured form;
        built again after a harvest, for the new shapes."""
        config, device = self.config, self.device
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net = self.model
        if self.cluster.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward_backward = ForwardBackward(
            self._compute, list(self.model.parameters()), list(self.model.buffers()),
            capture=capture, reason=self.step_status,
            insist=config.step_capture in ("cuda-graph", "compile"),
            compile=config.step_capture == "compile")

    def _compute(self, x, y):
        # bf16 only inside the step; evaluation and every measurement stay in fp32
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.config.precision == "bf16", cache_enabled=False):
            logits = self.net(x)
        return F.cross_entropy(logits.float(), y), logits

    def _describe(self, resume: bool) -> str:
        c, cluster, device = self.config, self.cluster, self.device
        return (f"{'resuming' if resume else 'training'} {c.model} (width {c.width}) on "
                f"{c.dataset} [{self.data.num_train} train / {self.data.num_test} test] with "
                f"{c.optimizer} lr {c.lr:g}, {c.regularizer} {c.lam:g}, "
                f"batch {c.batch_size}, epochs {c.epochs} -> {self.out}"
                + (f" (from epoch {self.start_epoch})" if resume else "")
                + (f", {cluster.world} processes" if cluster.world > 1 else "")
                + (f", {'TF32' if c.allow_tf32 else 'strict fp32'}" if device.type == "cuda"
                   else "")
                + (", bf16 autocast in training steps" if c.precision == "bf16" else "")
                + (f", training step: {self.step_status}" if device.type == "cuda" else ""))

    def train_epoch(self, epoch: int, factor: float) -> dict:
        """Train, check, measure and write one epoch; its metrics."""
        config, cluster = self.config, self.cluster
        apply_schedule(self.optimizer, config.lr, factor)
        torch.manual_seed(epoch_seed(config.seed, epoch))  # dropout, if any
        self.model.train()
        recycled_before = self.recycler.log.total if self.recycler is not None else 0
        if self.recycler is not None:
            self.recycler.steps = (epoch - 1) * self.steps  # also right when resuming
        started = time.perf_counter()
        set_mode(self.optimizer, training=True)  # schedule-free: at its gradient point
        totals = self._steps(epoch, factor)
        set_mode(self.optimizer, training=False)  # measured, checked and saved at its average
        self._stop_if_diverged(epoch, totals)
        if is_schedule_free(self.optimizer):
            self._bn_statistics_at_average()
        metrics = epoch_metrics(self.model, config, self.data, epoch, factor,
                                totals.loss_sum.item(), totals.wrong.item(),
                                int(totals.seen.item()), time.perf_counter() - started)
        metrics["training_step"] = self.forward_backward.status
        if self.recycler is not None:
            metrics["recycled"] = self.recycler.log.total - recycled_before
        if self.harvester is not None:
            self._harvest(epoch, metrics)
        if self.forward_backward.status != self.step_status:  # decided during this epoch
            self.step_status = self.forward_backward.status
            self.say(f"training step: {self.step_status}")
        if cluster.main:
            write_epoch(self.out, self.model, self.optimizer.state_dict(), config, self.data,
                        epoch, metrics, self.history,
                        self.harvester.state_dict(self.model) if self.harvester else None,
                        self.harvester.snapshot_channels() if self.harvester else None)
        distributed.barrier(cluster)
        return metrics

    def _bn_statistics_at_average(self) -> None:
        """Schedule-free: the BatchNorm statistics of the average the run is evaluated and
        saved at, over the first defaults.SCHEDULE_FREE_BN_BATCHES training batches (no
        augmentation, no randomness drawn: training goes on exactly as without)."""
        batches = itertools.islice(self.data.train_eval_batches(self.config.batch_size),
                                   defaults.SCHEDULE_FREE_BN_BATCHES)
        if self.config.channels_last:
            batches = ((x.contiguous(memory_format=torch.channels_last), y) for x, y in batches)
        recompute_bn_statistics(self.model, batches)

    def _harvest(self, epoch: int, metrics: dict) -> None:
        """The epoch's record of the model it trained (filters per layer, parameters, MACs;
        sparsity counted at the original width, harvested filters as dead), then, every
        `harvest_every` epochs, the harvest, and the step rebuilt for the new shapes."""
        harvester = self.harvester
        harvest_metrics(metrics, harvester, self.model)
        if epoch % self.config.harvest_every:
            return
        record = harvester.harvest(self.model, self.optimizer, epoch)
        metrics["harvest"] = record.to_dict()
        if record.refused:
            self.say(f"epoch {epoch}: harvest refused ({record.refused}); training goes on "
                     "with the filters as they are")
        if record.total_removed:
            self._build_regularizers()
            capture, self.step_status = should_capture(self.config.step_capture, self.device,
                                                       self.model, self.cluster.world)
            self._build_step(capture)
            metrics["harvest"].update(model_size(self.model, harvester.check_batch))

    def _steps(self, epoch: int, factor: float) -> EpochTotals:
        config = self.config
        totals = EpochTotals(1, self.device)
        batches = self.data.train_batches(config.batch_size, epoch_seed(config.seed, epoch),
                                          self.aug, self.cluster.rank, self.cluster.world)
        for x, y in tqdm(batches, total=self.steps, desc=f"epoch {epoch}", leave=False,
                         disable=None if self.cluster.main else True):
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss, logits = self.forward_backward(x, y)
            regularized_step(self.optimizer, self.regularizers, factor)
            if self.recycler is not None:
                self.recycler.step(x)
            totals.add(loss, (logits.argmax(1) != y).sum(), len(y))
        return totals

    def _stop_if_diverged(self, epoch: int, totals: EpochTotals) -> None:
        """A non-finite loss on any process stops the run before this epoch's files: the
        last checkpoint stays good."""
        first_bad = totals.watch.first_bad_step()
        diverging = (first_bad > 0).long()
        for total_ in (totals.loss_sum, totals.wrong, totals.seen, diverging):
            distributed.all_sum(total_, self.cluster)  # over all processes
        if diverging.item():
            distributed.barrier(self.cluster)
            if self.cluster.main:
                raise diverged_error(self.out, epoch, int(first_bad.item()) or None, self.steps)
            raise DivergedError(f"run {self.out} diverged at epoch {epoch}")
