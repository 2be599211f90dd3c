"""Remove dead filters for real, prove that predictions did not change, measure the gain."""

from implicit_sparsity.prune.api import DEFAULT_TOLERANCE, PruneResult, dead_masks, prune_model
from implicit_sparsity.prune.proof import Equivalence, compare_outputs
from implicit_sparsity.prune.surgery import LayerDecision, fold_batchnorm, remove_dead_filters

__all__ = ["DEFAULT_TOLERANCE", "PruneResult", "dead_masks", "prune_model", "Equivalence",
           "compare_outputs", "LayerDecision", "fold_batchnorm", "remove_dead_filters"]
