"""Measurements of emergent sparsity: by |gamma|, by activation, universality, on any CNN."""

from implicit_sparsity.measure.activation import ActivationStats, activation_statistics
from implicit_sparsity.measure.features import (
                                                Feature,
                                                ModelTraceError,
                                                NoBatchNormError,
                                                trace_features,
)
from implicit_sparsity.measure.monitor import SparsityMonitor
from implicit_sparsity.measure.report import LayerReport, SparsityReport, analyze
from implicit_sparsity.measure.scale import LayerSparsity, gamma_sparsity, inactive_by_gamma, total

__all__ = ["ActivationStats", "activation_statistics", "Feature", "ModelTraceError",
           "NoBatchNormError", "trace_features", "LayerReport", "SparsityReport", "analyze",
           "LayerSparsity", "gamma_sparsity", "inactive_by_gamma", "total", "SparsityMonitor"]

