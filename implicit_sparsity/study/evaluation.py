"""Measure and prune one finished run: the figures the paper's tables report for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.measure.features import count_conv_params, has_gamma, trace_features
from implicit_sparsity.measure.report import SparsityReport, analyze
from implicit_sparsity.models import get_model_entry
from implicit_sparsity.prune import PruneResult, prune_model
from implicit_sparsity.train.restore import (
    TrainedRun,
    build_model_for,
    load_trained,
    load_training_data,
)


def count_harvested(report: SparsityReport, harvest: dict, full_width: nn.Module,
                    units: tuple[str, ...]) -> None:
    """Make the report of a run that harvested while training count at its original
    widths: the filters harvested are dead by every criterion, and the share of conv
    parameters pruned is that of the full-width network (`full_width`, freshly built)."""
    for layer in report.layers:
        if layer.name not in harvest["widths"]:
            continue
        removed = harvest["widths"][layer.name] - len(harvest["channels"][layer.name])
        layer.features += removed
        for name in ("inactive_gamma", "inactive_activation", "inactive_dormant", "agree"):
            if getattr(layer, name) is not None:
                setattr(layer, name, getattr(layer, name) + removed)
        if layer.universality is not None:  # a harvested filter fires on no sample
            layer.universality = list(layer.universality) + [0.0] * removed
    traced = trace_features(full_width, units)
    report.conv_params = count_conv_params(traced.features, traced.input_feature,
                                           modules=dict(full_width.named_modules()))[0]


@dataclass
class RunEvaluation:
    trained: TrainedRun
    report: SparsityReport    # sparsity by |gamma| and activation, universality, % params
    pruned: PruneResult       # dead filters removed, proof on the test set, cost
    criterion: str = "gamma"  # what decided the removal: |gamma|, or activation without BN

    def percent(self, criterion: str) -> float | None:
        """% of units inactive by `criterion` (gamma, activation, dormant); None if not
        measured (|gamma| in a model without BatchNorm)."""
        counted = self.report.total(criterion)
        return None if counted is None else 100.0 * counted[0] / counted[1]


def evaluate_trained_run(run_dir: str | Path, data_dir: str | None = None, *,
                         latency_batches: tuple[int, ...] = (),
                         min_run_time: float = 0.5) -> RunEvaluation:
    """Sparsity over the run's training corpus (and ReDo dormancy at the default tau), then
    its dead units removed with the test-set proof (the paper's "Pruned Test Err."). The
    units are the model's own (conv filters; MLP units for the ViT); a model without
    BatchNorm is measured and pruned by activation, the only criterion it has."""
    trained = load_trained(run_dir)
    data = load_training_data(trained, "cpu", data_dir)
    units = get_model_entry(trained.config.model).units
    with_gamma = has_gamma(trace_features(trained.model, units).features)
    corpus = lambda: data.train_eval_batches(500)  # noqa: E731
    report = analyze(trained.model, corpus, criterion="both" if with_gamma else "activation",
                     units=units, dormancy_tau=defaults.DORMANCY_TAU)
    if trained.harvest:
        count_harvested(report, trained.harvest, build_model_for(trained.config), units)
    example = next(iter(data.test_batches(64)))[0]
    criterion = "gamma" if with_gamma else "activation"
    pruned = prune_model(trained.model, example, criterion=criterion,
                         corpus=None if with_gamma else corpus,
                         check_data=list(data.test_batches(500)), units=units,
                         latency_batches=latency_batches, min_run_time=min_run_time,
                         force=True)  # a failed proof is recorded (changed predictions)
    return RunEvaluation(trained, report, pruned, criterion)
