"""Models found by name: each entry knows how to build itself for a data set."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.models.basicnet import BasicNet, basicnet_min_input_size, basicnet_widths
from implicit_sparsity.models.blocks import initialize
from implicit_sparsity.models.vgg import VGG, VGG_MIN_INPUT_SIZE
from implicit_sparsity.models.vit import VIT_PATCH, ViT, vit_dim

HEADS = ("cifar", "tinyimagenet", "imagenet")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    build: Callable[..., nn.Module]
    min_input_size: Callable[[str], int]
    #: the unit kinds its sparsity is measured on (measure.features): conv filters for the
    #: paper's CNNs, MLP units for a Transformer
    units: tuple[str, ...] = ("conv",)
    #: whether its runs may train packed (train.packed vmaps conv nets only)
    packable: bool = True


def parse_width(width: str | float | int) -> tuple[int | None, float]:
    """`"64-0.5x"` -> (64, 0.5): C1's filters and the multiplier of the rest (Table 6).

    A bare number (`0.25`, `"0.25x"`) scales every conv layer, C1 included.
    """
    text = str(width).strip()
    if text in defaults.BASICNET_WIDTH_VARIANTS:
        return defaults.BASICNET_WIDTH_VARIANTS[text]
    match = re.fullmatch(r"(?:(\d+)-)?(\d*\.?\d+)x?", text)
    if not match or float(match.group(2)) <= 0:
        raise ConfigError(f"width {width!r} is not a multiplier (0.25) or a BasicNet variant "
                          f"like 64-0.5x (known: {', '.join(defaults.BASICNET_WIDTH_VARIANTS)})")
    c1 = int(match.group(1)) if match.group(1) else None
    if c1 is not None and c1 < 1:
        raise ConfigError(f"width {width!r}: C1 needs at least one filter")
    multiplier = float(match.group(2))
    if multiplier > defaults.MAX_WIDTH_MULTIPLIER or (c1 or 0) > defaults.MAX_C1_FILTERS:
        raise ConfigError(f"width {width!r} is beyond the bound of {defaults.MAX_C1_FILTERS} "
                          f"C1 filters and a {defaults.MAX_WIDTH_MULTIPLIER:g}x multiplier "
                          "(implicit_sparsity.defaults.MAX_WIDTH_MULTIPLIER); the paper's "
                          "widest is 1x")
    return c1, multiplier


def _build_basicnet(*, in_channels, num_classes, head, input_size, width, negative_slope):
    c1, multiplier = parse_width(width)
    return BasicNet(in_channels, num_classes, head, basicnet_widths(c1, multiplier),
                    input_size=input_size, negative_slope=negative_slope)


def _vgg_builder(name):
    def build(*, in_channels, num_classes, head, input_size, width, negative_slope):
        c1, multiplier = parse_width(width)
        if c1 is not None:
            raise ConfigError(f"width {width!r}: {name} takes a plain multiplier such as 0.5")
        return VGG(name, in_channels, num_classes, head, multiplier, negative_slope)
    return build


def _build_vit(*, in_channels, num_classes, head, input_size, width, negative_slope):
    c1, multiplier = parse_width(width)
    if c1 is not None:
        raise ConfigError(f"width {width!r}: vit takes a plain multiplier such as 0.25")
    return ViT(in_channels, num_classes, input_size, dim=vit_dim(multiplier),
               negative_slope=negative_slope)


MODELS: dict[str, ModelEntry] = {
    "basicnet": ModelEntry("basicnet", "BasicNet: 7 conv (5x5 C1, 3x3 C2-C7) + BN + ReLU, "
                           "max-pool after C1, C3, C5", _build_basicnet, basicnet_min_input_size),
}
for _name, _depth in (("vgg11", 11), ("vgg16", 16), ("vgg19", 19)):
    MODELS[_name] = ModelEntry(_name, f"VGG-{_depth} with BatchNorm", _vgg_builder(_name),
                               lambda head: VGG_MIN_INPUT_SIZE)
MODELS["vit"] = ModelEntry("vit", "small ViT (beyond the paper): 4x4 patches, 6 pre-norm "
                           "blocks of torch's TransformerEncoderLayer, width 192, 3 heads, "
                           "ReLU MLPs (x4), no BatchNorm; units = MLP hidden units",
                           _build_vit, lambda head: VIT_PATCH, units=("linear",),
                           packable=False)


def get_model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, *, in_channels: int, num_classes: int, head: str = "cifar",
                input_size: int = 32, width: str | float = "1", negative_slope: float = 0.0,
                gamma_init: float = defaults.GAMMA_INIT,
                beta_init: float = defaults.BETA_INIT) -> nn.Module:
    """Build and initialize a model (Xavier with the ReLU gain, BN gamma=1, beta=beta_init).

    `input_size` is the side of the images the model will see (after any padding); it
    matters only for BasicNet's ImageNet head, whose fc input depends on it.
    """
    entry = get_model_entry(name)
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
    if input_size < entry.min_input_size(head):
        raise ConfigError(f"{name} with the {head} head needs inputs of at least "
                          f"{entry.min_input_size(head)} pixels, got {input_size}")
    model = entry.build(in_channels=in_channels, num_classes=num_classes, head=head,
                        input_size=input_size, width=width, negative_slope=negative_slope)
    initialize(model, negative_slope, gamma_init=gamma_init, beta_init=beta_init)
    return model
