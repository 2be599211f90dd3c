"""VGG-11/16/19 with BatchNorm (Simonyan & Zisserman), heads as in section 5 of the paper."""

from __future__ import annotations

import torch
from torch import nn

from implicit_sparsity.models.blocks import ConvBNAct, fc_stack, scaled

#: Conv widths per configuration; "M" is a 2x2 max-pool.
VGG_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}
#: VGG-19 on CIFAR follows Network Slimming (Liu et al. 2017, the paper's section 5): four
#: max-pools, the last block's 2x2 map averaged (GAP), then [classes]; not a fifth max-pool.
NETWORK_SLIMMING_VGG19 = VGG_CONFIGS["vgg19"][:-1]
#: Five 2x2 pools: inputs smaller than this are zero-padded up to it by the data pipeline.
VGG_MIN_INPUT_SIZE = 32


def vgg_fc_hidden(name: str, head: str) -> tuple[int, ...]:
    """fc layers between the pooled features and the classes (section 5)."""
    if head == "tinyimagenet":
        return (512, 256)
    if name == "vgg19":
        return ()  # GAP -> [classes], the structure of Liu et al. (Network Slimming)
    return (512,)


class VGG(nn.Module):
    def __init__(self, name: str, in_channels: int, num_classes: int, head: str = "cifar",
                 multiplier: float = 1.0, negative_slope: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        layout = NETWORK_SLIMMING_VGG19 if (name, head) == ("vgg19", "cifar") else VGG_CONFIGS[name]
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            width = scaled(item, multiplier)
            layers.append(ConvBNAct(channels, width, 3, negative_slope))
            channels = width
        self.features = nn.Sequential(*layers)
        if head == "imagenet":
            # The fc structure of the original VGG (the paper's reference [23]).
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(7), nn.Flatten())
            self.classifier = nn.Sequential(
                nn.Linear(channels * 49, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                nn.Linear(4096, num_classes))
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.classifier = fc_stack(channels, vgg_fc_hidden(name, head), num_classes,
                                       negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))
