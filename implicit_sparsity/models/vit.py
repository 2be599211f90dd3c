"""A small Vision Transformer: the paper's question asked of MLP units instead of filters.

Patches (a strided conv) plus learned position embeddings go through torch's own
`nn.TransformerEncoder` (pre-norm blocks, LayerNorm, no BatchNorm anywhere), then a final
LayerNorm, the mean over tokens and a linear classifier. The MLP blocks use ReLU (Leaky ReLU
with a negative slope), the activation under which a unit can be exactly dead, as in the
ReLU ViTs whose MLP activations Li et al. (ICLR 2023) found ~94% zero. Its units are the MLP
hidden units (`measure.features.ALL_UNITS`): sparsity by activation, ReDo dormancy and exact
removal apply to them; sparsity by |gamma| does not (no BatchNorm).
"""

from __future__ import annotations

import torch
from torch import nn

from implicit_sparsity.models.blocks import scaled

#: The base model at width 1: ViT-Tiny's embedding width and heads (Touvron et al. 2021),
#: fewer blocks, 4x4 patches for 28-32 pixel images (49-64 tokens).
VIT_DIM, VIT_DEPTH, VIT_HEADS, VIT_MLP_RATIO, VIT_PATCH = 192, 6, 3, 4, 4
#: Position embeddings start as in ViT: a truncated normal of this std.
VIT_POSITION_STD = 0.02


def vit_dim(multiplier: float, heads: int = VIT_HEADS) -> int:
    """The embedding width at a multiplier, rounded up to a multiple of the heads."""
    dim = scaled(VIT_DIM, multiplier)
    return -(-dim // heads) * heads


class ViT(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, input_size: int,
                 dim: int = VIT_DIM, depth: int = VIT_DEPTH, heads: int = VIT_HEADS,
                 mlp_ratio: int = VIT_MLP_RATIO, patch: int = VIT_PATCH,
                 negative_slope: float = 0.0):
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        tokens = (input_size // patch) ** 2
        self.position = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.position, std=VIT_POSITION_STD)  # initialize() keeps it
        activation = nn.ReLU() if negative_slope == 0.0 else nn.LeakyReLU(negative_slope)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * mlp_ratio, dropout=0.0,
                                           activation=activation, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.encoder(tokens)).mean(1))
