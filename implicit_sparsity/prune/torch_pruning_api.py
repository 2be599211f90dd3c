"""The part of torch-pruning this toolkit relies on, in one list, with the version it was
checked against; `check` refuses, in one line, an installed version that lacks any of it
(before any work, rather than a traceback in the middle of a removal).

Used by `prune.surgery`: the dependency graph (`DependencyGraph().build_dependency`,
`get_pruning_group`), a group's items (`item.dep.target.module`, `item.dep.handler`,
`item.idxs`, `item.root_idxs`), `group.prune()` or, where a grouped conv reads the
channels, each item's dependency called on its indices (`item.dep(item.idxs)`, with the
grouped conv's input columns cut by the surgery itself), and the handlers below, by
identity: which handler an item has says whether it narrows a producer (conv, linear) or a
norm, or a conv's input.

Two internals are wrapped while the surgery runs, and skipped when absent (the surgery then
works as torch-pruning does, only slower or refusing a shuffle):
`torch_pruning.dependency.index_mapping.update_reshape_index_mapping` (a reshape it cannot
map is recorded instead of failing the model) and
`torch_pruning.dependency.graph.index_mapping.update_index_mapping` (recomputed once per
removal instead of at every group).
"""

from __future__ import annotations

from implicit_sparsity.errors import ImplicitSparsityError

#: The torch-pruning release these names were checked against (CI installs it).
CHECKED_VERSION = "1.6.1"
#: Module-level names used.
NAMES = ("DependencyGraph", "prune_conv_out_channels", "prune_conv_in_channels",
         "prune_depthwise_conv_out_channels",
         "prune_linear_out_channels", "prune_batchnorm_out_channels",
         "prune_layernorm_out_channels", "prune_groupnorm_out_channels",
         "prune_instancenorm_out_channels", "prune_prelu_out_channels")
#: Methods of the dependency graph used.
GRAPH_METHODS = ("build_dependency", "get_pruning_group")


def check(tp) -> None:
    missing = [n for n in NAMES if not hasattr(tp, n)]
    graph = getattr(tp, "DependencyGraph", None)
    missing += [f"DependencyGraph.{m}" for m in GRAPH_METHODS
                if graph is not None and not hasattr(graph, m)]
    if missing:
        raise ImplicitSparsityError(
            f"torch-pruning {getattr(tp, '__version__', '?')} lacks {', '.join(missing[:3])} "
            f"(checked against {CHECKED_VERSION}): pip install 'torch-pruning>="
            f"{CHECKED_VERSION}'")
