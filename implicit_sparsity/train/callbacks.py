"""Callbacks for the trainers people use: PyTorch Lightning and Hugging Face `transformers`.

    trainer = lightning.Trainer(callbacks=[lightning_callback(SparsityMonitor("runs/mine"))])
    trainer = transformers.Trainer(..., callbacks=[huggingface_callback(monitor)])

At the end of every epoch each one (the same `EpochHooks` underneath)
- optionally harvests (`harvest_every=N`): the dead filters leave the model being trained
  and the optimizer's state follows (train.harvest; the same proof, or nothing changes);
- calls the monitor: per-layer sparsity by |gamma| (and by activation on the first
  `activation_batches` training batches, a bounded sample), the gamma / beta history;
- logs the totals to the trainer's loggers (Lightning: every `trainer.loggers`, TensorBoard
  among them; transformers: `state.log_history`, saved in `trainer_state.json`).
At the end of training, `prune_to=FOLDER` removes the dead filters of the trained model with
the proof on the check batch and writes the slim model there (train.slim_io), whole or not
at all; the folder is checked before training starts, so a bad one costs no training.

A batch may be images, `(images, labels)` or a dict with `pixel_values` (transformers'
image collators). A Hugging Face image classifier is measured through
`models.huggingface.HuggingFaceClassifier` (its logits, its shapes declared for tracing).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ImplicitSparsityError
from implicit_sparsity.io.outputs import check_output_folder, staged_folder
from implicit_sparsity.measure.monitor import SparsityMonitor
from implicit_sparsity.models.huggingface import HuggingFaceClassifier
from implicit_sparsity.prune.api import prune_model
from implicit_sparsity.train.harvest import CRITERIA, Harvester
from implicit_sparsity.train.slim_io import save_slim

#: Keys under which a dict batch holds its images, in the order they are tried.
IMAGE_KEYS = ("pixel_values", "images", "image", "x", "input", "inputs")


def images_of(batch) -> torch.Tensor:
    """The image tensor of a batch: the tensor itself, the first of a tuple / list, or the
    one under an IMAGE_KEYS key of a dict."""
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, (tuple, list)) and batch and torch.is_tensor(batch[0]):
        return batch[0]
    if isinstance(batch, dict):
        for key in IMAGE_KEYS:
            if torch.is_tensor(batch.get(key)):
                return batch[key]
    raise ImplicitSparsityError(f"cannot find the images in a training batch of type "
                                f"{type(batch).__name__} (a tensor, (images, labels), or a "
                                f"dict with one of {', '.join(IMAGE_KEYS)})")


class EpochHooks:
    """What both callbacks do, free of either framework (see the module's text)."""

    def __init__(self, monitor: SparsityMonitor | None = None, *,
                 activation_batches: int | None = None, harvest_every: int = 0,
                 harvest_criterion: str = "gamma", prune_to: str | Path | None = None,
                 prune_criterion: str = "gamma",
                 check_samples: int = defaults.HARVEST_CHECK_SAMPLES):
        if monitor is None and not harvest_every and prune_to is None:
            raise ImplicitSparsityError("nothing to do: give a monitor, harvest_every or "
                                        "prune_to")
        if not isinstance(harvest_every, int) or harvest_every < 0:
            raise ImplicitSparsityError(f"harvest_every must be an integer >= 0, got "
                                        f"{harvest_every!r}")
        for name, value in (("harvest_criterion", harvest_criterion),
                            ("prune_criterion", prune_criterion)):
            if value not in CRITERIA:
                raise ImplicitSparsityError(f"unknown {name} {value!r}; valid: "
                                            f"{', '.join(CRITERIA)}")
        if activation_batches is not None and activation_batches < 1:
            raise ImplicitSparsityError("activation_batches must be at least 1")
        self.monitor, self.activation_batches = monitor, activation_batches
        self.harvest_every, self.harvest_criterion = harvest_every, harvest_criterion
        self.prune_criterion, self.check_samples = prune_criterion, check_samples
        self.prune_to = None if prune_to is None else check_output_folder(
            prune_to, "prune_to", "slim", resumable=False)  # before any training
        self.harvester: Harvester | None = None
        self.pruned: dict | None = None
        self._sample: list[torch.Tensor] = []

    def _take_sample(self, batches) -> None:
        """The check batch (harvest, proof) and the activation sample, taken once from the
        first training batches: the same images every epoch."""
        if self._sample:
            return
        wanted = max(self.check_samples, 0)
        taken = []
        for i, batch in enumerate(batches):
            taken.append(images_of(batch).detach().cpu())
            enough = sum(len(x) for x in taken) >= wanted
            if enough and i + 1 >= (self.activation_batches or 0):
                break
        if not taken:
            raise ImplicitSparsityError("no training batches to check on")
        self._sample = taken
        if self.monitor is not None and self.activation_batches and self.monitor.data is None:
            self.monitor.data = taken[:self.activation_batches]
            self.monitor.max_batches = self.activation_batches

    def check_batch(self, device) -> torch.Tensor:
        return torch.cat(self._sample)[:self.check_samples].to(device)

    def epoch_end(self, epoch: int, model: nn.Module, optimizer, batches) -> dict[str, float]:
        """Harvest (when due), measure, and return the scalars to log."""
        device = next(model.parameters()).device
        if self.harvest_every or self.prune_to is not None or self.activation_batches:
            self._take_sample(batches)
        scalars: dict[str, float] = {}
        if self.harvest_every and epoch % self.harvest_every == 0:
            if self.harvester is None:
                self.harvester = Harvester(model, self.check_batch(device),
                                           criterion=self.harvest_criterion,
                                           corpus=self._sample if self.harvest_criterion
                                           == "activation" else None)
                if self.monitor is not None:
                    self.monitor.harvester = self.harvester
            record = self.harvester.harvest(model, optimizer, epoch)
            scalars["filters_harvested"] = float(record.total_removed)
            scalars["filters_alive"] = float(sum(record.alive.values()))
        if self.monitor is not None:
            record = self.monitor(epoch, model) or {}
            scalars.update({key: float(value) for key, value in record.items()
                            if key.endswith("_total") or key.startswith("params_pruned")})
        return scalars

    def train_end(self, model: nn.Module, batches, prepare=None) -> dict | None:
        """`prune_to`: the trained model's dead filters out, proven, written whole.
        `prepare(slim)`: what the framework's module needs before it is exported."""
        if self.prune_to is None:
            return None
        self._take_sample(batches)
        device = next(model.parameters()).device
        check = self.check_batch(device)
        result = prune_model(model, check[:2], criterion=self.prune_criterion,
                             corpus=self._sample if self.prune_criterion == "activation"
                             else None, check_data=[check])
        if prepare is not None:
            prepare(result.model)
        with staged_folder(self.prune_to) as stage:
            save_slim(result, stage, check.cpu() if device.type == "cpu" else check)
        self.pruned = {"folder": str(self.prune_to), "mac_reduction": result.mac_reduction,
                       "params": result.params, "proof": result.equivalence.to_dict()}
        return self.pruned


def lightning_callback(monitor: SparsityMonitor | None = None, **options):
    """A PyTorch Lightning callback (options: EpochHooks')."""
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise ImportError("lightning_callback needs PyTorch Lightning: "
                              "pip install lightning") from None
    hooks = EpochHooks(monitor, **options)

    class SparsityCallback(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            scalars = hooks.epoch_end(trainer.current_epoch + 1, pl_module, optimizer,
                                      trainer.train_dataloader)
            for logger in trainer.loggers:
                logger.log_metrics({f"sparsity/{k}": v for k, v in scalars.items()},
                                   step=trainer.global_step)

        def on_train_end(self, trainer, pl_module):
            hooks.train_end(pl_module, trainer.train_dataloader, prepare=_detached_lightning)

    callback = SparsityCallback()
    callback.hooks = hooks
    return callback


def _detached_lightning(slim: nn.Module) -> None:
    """The slim copy of a LightningModule is attached to no Trainer, and its `trainer`
    property raises when tracing reads it, unless the module is marked as being exported
    (Lightning's own `to_torchscript` sets the same flag)."""
    slim._jit_is_scripting = True


def huggingface_callback(monitor: SparsityMonitor | None = None, **options):
    """A `transformers.TrainerCallback` (options: EpochHooks'). An image classifier whose
    output is a ModelOutput / dict is measured on its `logits`."""
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError("huggingface_callback needs transformers: "
                          "pip install transformers") from None
    hooks = EpochHooks(monitor, **options)
    wrapped: dict[int, nn.Module] = {}

    def network(model: nn.Module, batches) -> nn.Module:
        """The model as measured: its logits from pixel values (one wrapper per model, so
        that a harvest's edits are the model's)."""
        if id(model) not in wrapped:
            shape = tuple(images_of(next(iter(batches))).shape)
            wrapped[id(model)] = HuggingFaceClassifier(model, (1, *shape[1:]))
        return wrapped[id(model)]

    class SparsityCallback(TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, optimizer=None,
                         train_dataloader=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
            epoch = int(round(state.epoch or 0))
            scalars = hooks.epoch_end(epoch, network(model, train_dataloader), inner,
                                      train_dataloader)
            state.log_history.append({**{f"sparsity/{k}": v for k, v in scalars.items()},
                                      "epoch": state.epoch, "step": state.global_step})

        def on_train_end(self, args, state, control, model=None, train_dataloader=None,
                         **kwargs):
            hooks.train_end(network(model, train_dataloader), train_dataloader)

    callback = SparsityCallback()
    callback.hooks = hooks
    return callback
