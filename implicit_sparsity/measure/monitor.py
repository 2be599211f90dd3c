"""A monitor to call from any training loop once per epoch.

    monitor = SparsityMonitor("runs/mine", data=lambda: ((x, y) for x, y in train_loader))
    for epoch in range(1, epochs + 1):
        ...train...
        monitor(epoch, model)

It appends a line per call to `LOG_DIR/sparsity.jsonl` (per-layer % inactive by |gamma|,
and by activation when `data` is given), saves every BatchNorm layer's gamma and beta to
`LOG_DIR/bn_history/` (readable by `load_bn_history`, plotted by `plot_bn_history`), and
writes TensorBoard scalars and gamma / beta histograms when TensorBoard is installed. It
has the signature of the training loop's epoch callbacks, so `train(callbacks=(monitor,))`
works too; train.callbacks wraps it for PyTorch Lightning and Hugging Face's Trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.io.files import append_line
from implicit_sparsity.io.run_dir import save_bn_snapshot
from implicit_sparsity.measure.features import (
    CONV_UNITS,
    NoBatchNormError,
    has_gamma,
    trace_features,
)
from implicit_sparsity.measure.report import analyze
from implicit_sparsity.models import bn_layer_names


class SparsityMonitor:
    def __init__(self, log_dir: str | Path, *, data=None, every: int = 1,
                 gamma_threshold: float = defaults.GAMMA_THRESHOLD,
                 activation_threshold: float = defaults.ACTIVATION_THRESHOLD,
                 dormancy_tau: float = defaults.DORMANCY_TAU,
                 units: tuple[str, ...] = CONV_UNITS, max_batches: int | None = None,
                 tensorboard: bool | None = None, harvester=None):
        """`data`: the training corpus for sparsity by activation and ReDo dormancy (a
        re-iterable of batches or a callable returning an iterator); None measures |gamma|
        only. `units=ALL_UNITS`: MLP units too. `max_batches`: measure activations on the
        first batches only, for a cheaper call (an estimate; see measure.report.analyze).
        `tensorboard`: None uses it when installed, True requires it, False never uses it.
        `harvester`: the `train.harvest.Harvester` of a loop that removes dead filters while
        it trains; gamma / beta are then saved at the original widths (removed ones NaN)."""
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.data, self.every = data, every
        self.gamma_threshold, self.activation_threshold = gamma_threshold, activation_threshold
        self.dormancy_tau, self.units, self.max_batches = dormancy_tau, units, max_batches
        self.harvester = harvester
        self.writer = None
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.log_dir / "tensorboard"))
            except ImportError:
                if tensorboard:
                    raise
        self.records: list[dict] = []

    def __call__(self, epoch: int, model: nn.Module, metrics: dict | None = None) -> dict | None:
        if epoch % self.every:
            return None
        traced = trace_features(model, self.units)  # once per call (~20 ms for BasicNet)
        gamma = has_gamma(traced.features)
        if not gamma and self.data is None:
            raise NoBatchNormError("the model has no BatchNorm scale to monitor: give the "
                                   "monitor data for sparsity by activation")
        report = analyze(model, self.data,
                         criterion=("both" if gamma else "activation")
                         if self.data is not None else "gamma",
                         gamma_threshold=self.gamma_threshold,
                         activation_threshold=self.activation_threshold, universality=False,
                         units=self.units, max_batches=self.max_batches,
                         dormancy_tau=self.dormancy_tau if self.data is not None else None,
                         traced=traced)
        record = {"epoch": epoch}
        if self.max_batches is not None and self.data is not None:
            record["activation_batches"] = self.max_batches  # an estimate on these only
        for criterion in ("gamma", "activation", "dormant"):
            total = report.total(criterion)
            if total is None:
                continue
            record[f"sparsity_{criterion}"] = {
                l.name: l.percent(getattr(l, f"inactive_{criterion}")) for l in report.layers
                if getattr(l, f"inactive_{criterion}") is not None}
            record[f"sparsity_{criterion}_total"] = 100.0 * total[0] / total[1]
            if criterion != "dormant":
                record[f"params_pruned_{criterion}"] = report.percent_params_pruned(criterion)
        append_line(self.log_dir / "sparsity.jsonl", json.dumps(record))
        save_bn_snapshot(bn_layer_names(model), self.log_dir, epoch,
                         self.harvester.snapshot_channels() if self.harvester else None)
        if self.writer is not None:
            self._tensorboard(epoch, model, record)
        self.records.append(record)
        return record

    def _tensorboard(self, epoch: int, model: nn.Module, record: dict) -> None:
        for key, value in record.items():
            if key.endswith("_total"):
                self.writer.add_scalar(f"sparsity/{key}", value, epoch)
        for name, bn in bn_layer_names(model).items():
            self.writer.add_histogram(f"gamma/{name}", bn.weight.detach().cpu(), epoch)
            self.writer.add_histogram(f"beta/{name}", bn.bias.detach().cpu(), epoch)
        self.writer.flush()
