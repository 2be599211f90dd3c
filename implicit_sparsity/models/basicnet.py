"""BasicNet (section 2.1, Fig. 1): seven conv features C1..C7 and a data-set specific fc head."""

from __future__ import annotations

import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.models.blocks import ConvBNAct, fc_stack, scaled

#: fc layers after the conv features, per head kind (section 5, "Network Architectures").
BASICNET_HEADS = {
    "cifar": (256,),            # GAP -> [256][classes]; also ObjectNet3D, Fashion-MNIST
    "tinyimagenet": (512, 256),  # GAP -> [512][256][200]
    "imagenet": (4096, 2048),    # avg-pool(5, stride 4) -> [4096][2048][1000]
}
#: The ImageNet head pools with this kernel and stride before its fc layers.
IMAGENET_POOL = (5, 4)


def basicnet_widths(c1: int | None, multiplier: float) -> tuple[int, ...]:
    """Filters per layer: C1 given (or scaled), C2..C7 scaled by the multiplier (Table 6)."""
    base = defaults.BASICNET_WIDTHS
    first = c1 if c1 is not None else scaled(base[0], multiplier)
    return (first,) + tuple(scaled(w, multiplier) for w in base[1:])


class BasicNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, head: str = "cifar",
                 widths: tuple[int, ...] = defaults.BASICNET_WIDTHS,
                 input_size: int = 32, negative_slope: float = 0.0,
                 pool_after: tuple[int, ...] = defaults.BASICNET_POOL_AFTER):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, (width, kernel) in enumerate(zip(widths, defaults.BASICNET_KERNELS), 1):
            layers.append(ConvBNAct(channels, width, kernel, negative_slope))
            if index in pool_after:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        if head == "imagenet":
            kernel, stride = IMAGENET_POOL
            side = input_size // 2 ** len(pool_after)
            pooled = (side - kernel) // stride + 1
            self.pool = nn.Sequential(nn.AvgPool2d(kernel, stride), nn.Flatten())
            fc_in = channels * pooled * pooled
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            fc_in = channels
        self.classifier = fc_stack(fc_in, BASICNET_HEADS[head], num_classes, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def basicnet_min_input_size(head: str) -> int:
    """Smallest input side that survives the pools (and the ImageNet head's 5x5 pool)."""
    shrink = 2 ** len(defaults.BASICNET_POOL_AFTER)
    return shrink * (IMAGENET_POOL[0] if head == "imagenet" else 1)
