"""The paper's networks, found by name."""

from implicit_sparsity.models.blocks import ConvBNAct, conv_param_count, feature_layers
from implicit_sparsity.models.registry import (HEADS, MODELS, build_model, get_model_entry,
                                               parse_width)

__all__ = ["ConvBNAct", "conv_param_count", "feature_layers", "HEADS", "MODELS",
           "build_model", "get_model_entry", "parse_width"]
