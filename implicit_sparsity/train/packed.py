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

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from implicit_sparsity.errors import ConfigError
from implicit_sparsity.explicit.methods import add_l1_gradient, slimming_gammas
from implicit_sparsity.optim import (Regularizer, apply_schedule, build_optimizer,
                                     param_groups, regularized_step)
from implicit_sparsity.train.capture import ForwardBackward, should_capture
from implicit_sparsity.train.device import device_speed_settings
from implicit_sparsity.train.config import TrainConfig


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
            raise ConfigError("packed runs train in fp32 with the default memory layout")
        self.template = models[0]
        self.base = copy.deepcopy(models[0]).to("meta")
        self.params, self.buffers = stack_module_state(models)
        self.views = [{name: nn.Parameter(t.detach()[k]) for name, t in self.params.items()}
                      for k in range(len(models))]
        gammas = {id(p) for p in slimming_gammas(models[0])}
        self.gamma_names = [n for n, p in models[0].named_parameters() if id(p) in gammas]
        # one optimizer over the stacked tensors when every run has the same optimizer and
        # rates (seeds, regularizers and lambdas may differ): elementwise updates make that the
        # K runs' updates, at the cost of one step instead of K
        self.shared = share_optimizer and len(models) > 1 and \
            len({optimizer_identity(c) for c in self.configs}) == 1
        self.optimizers, self.regularizers = [], []
        for k, (model, config) in enumerate(zip(models, self.configs)):
            name_of = {id(p): name for name, p in model.named_parameters()}
            if k == 0 or not self.shared:
                tensors = self.params if self.shared else self.views[k]
                groups = param_groups(model, config.lr, config.gamma_lr_scale,
                                      config.beta_lr_scale)
                for group in groups:  # the single run's groups, over the stacked or run's views
                    group["params"] = [tensors[name_of[id(p)]] for p in group["params"]]
                self.optimizers.append(build_optimizer(config.optimizer, groups,
                                                       config.optimizer_args))
            from implicit_sparsity.train.loop import regularized_params

            regularized = [self.views[k][name_of[id(p)]]
                           for p in regularized_params(model, config.regularize_bn)]
            self.regularizers.append(Regularizer(config.regularizer, config.lam, regularized))
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
            add_l1_gradient([self.views[k][n] for n in self.gamma_names],
                            self.configs[k].l1_gamma)  # Network Slimming only
        if not self.shared:
            for optimizer, regularizer, factor in zip(self.optimizers, self.regularizers,
                                                      factors):
                regularized_step(optimizer, regularizer, factor)
            return losses
        # regularized_step, with the one optimizer step between the runs' regularizers
        for regularizer in self.regularizers:
            regularizer.before_step()
        self.optimizers[0].step()
        for regularizer, factor in zip(self.regularizers, factors):
            regularizer.after_step(factor)
        return losses

    def set_schedule(self, factor: float) -> None:
        """Every run's rates at lr_t / lr_0 = factor (apply_schedule, run by run)."""
        for optimizer, config in zip(self.optimizers, self.configs):
            apply_schedule(optimizer, config.lr, factor)

    def _stacked_shapes(self) -> list[torch.Size]:
        return [p.shape for group in self.optimizers[0].param_groups for p in group["params"]]

    def optimizer_state_dict(self, k: int) -> dict:
        """Run k's optimizer state in the layout of a single run's optimizer."""
        if not self.shared:
            return self.optimizers[k].state_dict()
        full = self.optimizers[0].state_dict()
        shapes = self._stacked_shapes()
        state = {i: {key: value[k].clone() if torch.is_tensor(value) and value.shape == shapes[i]
                     else copy.deepcopy(value) for key, value in entry.items()}
                 for i, entry in full["state"].items()}
        return {"state": state, "param_groups": copy.deepcopy(full["param_groups"])}

    def load_optimizer_state_dicts(self, states: list[dict]) -> None:
        """Resume from each run's optimizer state (single-run layout, as checkpoints hold)."""
        if not self.shared:
            for optimizer, state in zip(self.optimizers, states):
                optimizer.load_state_dict(state)
            return
        shapes = self._stacked_shapes()
        stacked = {}
        for i, entry in states[0]["state"].items():
            stacked[i] = {
                key: torch.stack([s["state"][i][key] for s in states])
                if torch.is_tensor(value) and (len(states), *value.shape) == tuple(shapes[int(i)])
                else value for key, value in entry.items()}
        self.optimizers[0].load_state_dict({"state": stacked,
                                            "param_groups": states[0]["param_groups"]})

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
PACK_FIELDS = ("model", "width", "dataset", "data_dir", "train_subset", "test_subset",
               "subset_seed", "batch_size", "epochs", "lr_decay", "negative_slope", "flip",
               "crop_padding", "device", "eval_batch_size", "init_from", "precision",
               "channels_last", "allow_tf32", "step_capture", "cudnn_benchmark",
               "flush_denormal")


def optimizer_identity(config: TrainConfig) -> tuple:
    """Runs with equal identities update their parameters by the same rule and rates."""
    return (config.optimizer, config.lr, repr(sorted(config.optimizer_args.items())),
            config.gamma_lr_scale, config.beta_lr_scale)


def packable(config: TrainConfig) -> bool:
    """vmap's batch rules do not take BatchNorm under bf16 autocast, and stacked weights have
    no NHWC layout: such runs train one by one."""
    return config.precision == "fp32" and not config.channels_last


def pack_key(config: TrainConfig) -> tuple:
    """Runs with equal keys can train packed together."""
    resolved = config.resolved()
    return tuple(str(getattr(resolved, name)) for name in PACK_FIELDS)


def train_packed(configs: list[TrainConfig], outs: list, verbose: bool = True) -> list:
    """Train K compatible runs as one packed model; each writes the run folder a single run
    would write (config, metrics, gamma / beta history, checkpoints) and resumes like one.
    Runs without dropout end where their single runs end, up to float rounding."""
    import json
    import time
    from pathlib import Path

    from tqdm import tqdm

    from implicit_sparsity.data import Augmentation
    from implicit_sparsity.optim import StepSchedule
    from implicit_sparsity.train import run_dir as rd
    from implicit_sparsity.train.loop import (RunResult, build_for_config, check_run_dir,
                                              epoch_metrics, epoch_seed, resolve_device,
                                              write_epoch)
    from implicit_sparsity.train.restore import build_model_for

    configs = [c.resolved() for c in configs]
    outs = [Path(o) for o in outs]
    if len({pack_key(c) for c in configs}) != 1:
        raise ConfigError("these runs cannot be packed: they differ in "
                          + ", ".join(f for i, f in enumerate(PACK_FIELDS)
                                      if len({pack_key(c)[i] for c in configs}) > 1))
    device = resolve_device(configs[0].device)
    device_speed_settings(configs[0], device)
    resume = [check_run_dir(out, config) for out, config in zip(outs, configs)]
    states = [rd.load_checkpoint(out / rd.CHECKPOINT, map_location=device) if again else None
              for out, again in zip(outs, resume)]
    start = {s["epoch"] if s else 0 for s in states}
    if len(start) != 1:
        raise ConfigError("packed runs must resume from the same epoch")
    start_epoch = start.pop()
    data, _ = build_for_config(configs[0], device)
    models = []
    for config, state in zip(configs, states):
        torch.manual_seed(config.seed)  # the same initialization as a single run
        model = build_model_for(config)
        if config.init_from:
            from implicit_sparsity.train.loop import load_initial_weights

            load_initial_weights(model, config.init_from)
        if state:
            model.load_state_dict(state["model"])
        models.append(model.to(device))
    capture, step_status = should_capture(configs[0].step_capture, device, models[0])
    packed = PackedModels(models, configs, capture=capture, capture_reason=step_status,
                          insist=configs[0].step_capture == "cuda-graph")
    for k, (out, config, state) in enumerate(zip(outs, configs, states)):
        if state:
            rd.truncate_metrics(out, start_epoch)
        else:
            out.mkdir(parents=True, exist_ok=True)
            config.save_yaml(out / rd.CONFIG)
            rd.save_bn_snapshot(models[k], out, 0)
    if start_epoch:
        packed.load_optimizer_state_dicts([state["optimizer"] for state in states])
    schedule = StepSchedule(tuple(configs[0].epochs), configs[0].lr_decay)
    aug = Augmentation(flip=configs[0].flip, crop_padding=configs[0].crop_padding)
    say = tqdm.write if verbose else (lambda *_: None)
    say(f"training {len(configs)} packed runs of {configs[0].model} (width "
        f"{configs[0].width}) on {configs[0].dataset} -> " + ", ".join(map(str, outs)))
    started = time.perf_counter()
    for epoch in tqdm(range(start_epoch + 1, schedule.total_epochs + 1), desc="epochs",
                      initial=start_epoch, total=schedule.total_epochs, disable=None):
        factor = schedule.factor(epoch - 1)
        packed.set_schedule(factor)
        torch.manual_seed(epoch_seed(configs[0].seed, epoch))
        streams = [data.train_batches(c.batch_size, epoch_seed(c.seed, epoch), aug)
                   for c in configs]
        loss_sum = torch.zeros(len(configs), device=device)
        wrong = torch.zeros(len(configs), device=device, dtype=torch.long)
        seen, epoch_start = 0, time.perf_counter()
        for batch in zip(*streams):
            x = torch.stack([b[0] for b in batch])
            y = torch.stack([b[1] for b in batch])
            losses = packed.step(x, y, [factor] * len(configs))
            loss_sum += losses * y.shape[1]
            seen += y.shape[1]
            wrong += packed.last_wrong(y)
        loss_sums, wrongs = loss_sum.tolist(), wrong.tolist()  # waits for the device
        train_seconds = time.perf_counter() - epoch_start
        if packed.forward_backward.status != step_status:  # decided during this epoch
            step_status = packed.forward_backward.status
            say(f"training step: {step_status}")
        for k, (out, config) in enumerate(zip(outs, configs)):
            models[k].load_state_dict(packed.state_dict(k))
            metrics = epoch_metrics(models[k], config, data, epoch, factor,
                                    loss_sums[k], wrongs[k], seen, train_seconds)
            metrics["packed_with"] = len(configs)
            metrics["training_step"] = packed.forward_backward.status
            write_epoch(out, models[k], packed.optimizer_state_dict(k), config, data, epoch,
                        metrics)
    results = []
    for k, (out, config) in enumerate(zip(outs, configs)):
        all_metrics = rd.read_metrics(out)
        summary = {"final": all_metrics[-1] if all_metrics else {},
                   "epochs": schedule.total_epochs, "processes": 1, "packed_with": len(configs),
                   "wall_seconds_this_session": time.perf_counter() - started}
        rd.atomic_write_text(out / rd.SUMMARY, json.dumps(summary, indent=2))
        results.append(RunResult(out, config, models[k], all_metrics))
    return results
