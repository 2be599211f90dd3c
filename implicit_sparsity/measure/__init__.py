"""Measurements of emergent sparsity."""

from implicit_sparsity.measure.scale import LayerSparsity, gamma_sparsity, inactive_by_gamma, total

__all__ = ["LayerSparsity", "gamma_sparsity", "inactive_by_gamma", "total"]
