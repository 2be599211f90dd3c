"""The paper's networks, found by name."""

from implicit_sparsity.models.blocks import (
                                             ConvBNAct,
                                             bn_layer_names,
                                             conv_param_count,
                                             feature_layers,
)
from implicit_sparsity.models.registry import (
                                             HEADS,
                                             MODELS,
                                             build_model,
                                             get_model_entry,
                                             parse_width,
)
from implicit_sparsity.models.reshape import adopt_shapes

__all__ = ["ConvBNAct", "adopt_shapes", "bn_layer_names", "conv_param_count",
           "feature_layers", "HEADS", "MODELS", "build_model", "get_model_entry", "parse_width"]
