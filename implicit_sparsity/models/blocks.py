"""Building blocks shared by the paper's networks: conv features, fc heads, initialization."""

from __future__ import annotations

import torch
from torch import nn

from implicit_sparsity import defaults


def make_activation(negative_slope: float = 0.0) -> nn.Module:
    """ReLU, or Leaky ReLU with the given negative slope (supplement Table 2)."""
    if negative_slope == 0.0:
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(negative_slope, inplace=True)


class ConvBNAct(nn.Module):
    """One convolution feature layer: conv (no bias, BatchNorm follows) -> BatchNorm -> ReLU.

    A "filter" or "feature" in the paper is one output channel of such a block.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 negative_slope: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def fc_stack(in_features: int, hidden: tuple[int, ...], num_classes: int,
             negative_slope: float = 0.0) -> nn.Sequential:
    """fc layers `[h1][h2]...[classes]` with BatchNorm + ReLU between them (section 5)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h),
                   make_activation(negative_slope)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def initialize(model: nn.Module, negative_slope: float = 0.0,
               gamma_init: float = defaults.GAMMA_INIT,
               beta_init: float = defaults.BETA_INIT) -> None:
    """Xavier init with the (leaky) ReLU gain; BatchNorm gamma and beta set to constants."""
    if negative_slope == 0.0:
        gain = nn.init.calculate_gain("relu")
    else:
        gain = nn.init.calculate_gain("leaky_relu", negative_slope)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.constant_(m.weight, gamma_init)
            nn.init.constant_(m.bias, beta_init)


def feature_layers(model: nn.Module) -> list[tuple[str, ConvBNAct]]:
    """The conv feature layers of one of our networks, named C1..Cn in forward order."""
    blocks = [m for m in model.modules() if isinstance(m, ConvBNAct)]
    return [(f"C{i + 1}", b) for i, b in enumerate(blocks)]


def conv_param_count(model: nn.Module) -> int:
    """Number of convolution weights (the paper's "% Param" denominator)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


def scaled(width: int, multiplier: float) -> int:
    """A layer width scaled by a multiplier, at least one filter."""
    return max(1, int(round(width * multiplier)))


def bn_layer_names(model: nn.Module) -> dict[str, nn.Module]:
    """Every affine BatchNorm layer: conv features as C1..Cn, the others by module path."""
    names = {id(block.bn): name for name, block in feature_layers(model)}
    return {names.get(id(m), path): m for path, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine}
