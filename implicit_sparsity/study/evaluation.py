"""Measure and prune one finished run: the figures the paper's tables report for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from implicit_sparsity.measure.report import SparsityReport, analyze
from implicit_sparsity.prune import PruneResult, prune_model
from implicit_sparsity.train.restore import TrainedRun, load_trained, load_training_data


@dataclass
class RunEvaluation:
    trained: TrainedRun
    report: SparsityReport    # sparsity by |gamma| and activation, universality, % params
    pruned: PruneResult       # dead filters removed, proof on the test set, cost

    def percent(self, criterion: str) -> float:
        inactive, features = self.report.total(criterion)
        return 100.0 * inactive / features


def evaluate_trained_run(run_dir: str | Path, data_dir: str | None = None, *,
                         latency_batches: tuple[int, ...] = (),
                         min_run_time: float = 0.5) -> RunEvaluation:
    """Sparsity over the run's training corpus, then its dead filters removed with the
    test-set proof (the paper's "Pruned Test Err.")."""
    trained = load_trained(run_dir)
    data = load_training_data(trained, "cpu", data_dir)
    report = analyze(trained.model, lambda: data.train_eval_batches(500))
    example = next(iter(data.test_batches(64)))[0]
    pruned = prune_model(trained.model, example, check_data=list(data.test_batches(500)),
                         latency_batches=latency_batches, min_run_time=min_run_time,
                         force=True)  # a failed proof is recorded (changed predictions)
    return RunEvaluation(trained, report, pruned)
