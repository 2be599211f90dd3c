"""The paper's networks: structure, parameter counts, heads, initialization."""

import math

import pytest
import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.data import DATASETS
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.models import (MODELS, build_model, conv_param_count, feature_layers,
                                      get_model_entry, parse_width)


def filters(model):
    return [block.conv.out_channels for _, block in feature_layers(model)]


def test_basicnet_has_the_papers_conv_parameter_count():
    with torch.device("meta"):
        model = build_model("basicnet", in_channels=3, num_classes=10)
    assert conv_param_count(model) == defaults.BASICNET_CONV_PARAMS == 4_649_664
    assert filters(model) == [64, 128, 128, 256, 256, 512, 512]
    convs = [block.conv for _, block in feature_layers(model)]
    assert convs[0].kernel_size == (5, 5) and all(c.kernel_size == (3, 3) for c in convs[1:])
    assert all(c.bias is None for c in convs)


def test_basicnet_pools_after_c1_c3_c5():
    model = build_model("basicnet", in_channels=3, num_classes=10, width=0.125)
    sizes = []
    hooks = [block.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
             for _, block in feature_layers(model)]
    model.eval()(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sizes == [32, 16, 16, 8, 8, 4, 4]


@pytest.mark.parametrize("width, expected", [
    ("64-1x", [64, 128, 128, 256, 256, 512, 512]),
    ("64-0.5x", [64, 64, 64, 128, 128, 256, 256]),
    ("32-0.25x", [32, 32, 32, 64, 64, 128, 128]),
    ("0.125", [8, 16, 16, 32, 32, 64, 64]),
    (0.5, [32, 64, 64, 128, 128, 256, 256]),
    ("16-2x", [16, 256, 256, 512, 512, 1024, 1024]),
])
def test_basicnet_width_variants(width, expected):
    with torch.device("meta"):
        model = build_model("basicnet", in_channels=3, num_classes=10, width=width)
    assert filters(model) == expected
    assert model.classifier[0].out_features == 256  # the fc head stays unchanged (Table 6)


@pytest.mark.parametrize("name, convs, params", [
    ("vgg11", 8, 9_217_728), ("vgg16", 13, 14_710_464), ("vgg19", 16, 20_018_880)])
def test_vgg_conv_layers(name, convs, params):
    with torch.device("meta"):
        model = build_model(name, in_channels=3, num_classes=10)
    assert len(feature_layers(model)) == convs and conv_param_count(model) == params


def test_heads_follow_section_5():
    def linear_widths(model):
        return [m.out_features for m in model.classifier if isinstance(m, nn.Linear)]
    with torch.device("meta"):
        assert linear_widths(build_model("basicnet", in_channels=3, num_classes=100)) == [256, 100]
        assert linear_widths(build_model("basicnet", in_channels=3, num_classes=200,
                                         head="tinyimagenet", input_size=64)) == [512, 256, 200]
        imagenet = build_model("basicnet", in_channels=3, num_classes=1000, head="imagenet",
                               input_size=224)
        assert linear_widths(imagenet) == [4096, 2048, 1000]
        # 224 -> 28 after three pools -> avg-pool(5, stride 4) -> 6x6x512
        assert imagenet.classifier[0].in_features == 6 * 6 * 512
        assert linear_widths(build_model("vgg16", in_channels=3, num_classes=10)) == [512, 10]
        assert linear_widths(build_model("vgg19", in_channels=3, num_classes=10)) == [10]
        assert linear_widths(build_model("vgg11", in_channels=3, num_classes=1000,
                                         head="imagenet", input_size=224)) == [4096, 4096, 1000]
    fc = build_model("basicnet", in_channels=3, num_classes=10, width=0.125).classifier
    assert isinstance(fc[1], nn.BatchNorm1d) and isinstance(fc[2], nn.ReLU)


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_runs_on_every_dataset(name, dataset):
    entry = DATASETS[dataset]
    size = max(entry.image_size, get_model_entry(name).min_input_size(entry.head))
    model = build_model(name, in_channels=entry.in_channels, num_classes=entry.num_classes,
                        head=entry.head, input_size=size, width=0.0625).eval()
    with torch.no_grad():
        out = model(torch.randn(2, entry.in_channels, size, size))
    assert out.shape == (2, entry.num_classes)


def test_too_small_input_is_refused_with_the_size_needed():
    with pytest.raises(ConfigError, match="at least 32 pixels, got 28"):
        build_model("vgg16", in_channels=1, num_classes=10, input_size=28)


def test_initialization():
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=3, num_classes=10, beta_init=-0.1)
    conv = feature_layers(model)[6][1].conv  # 512 x 512 x 3 x 3
    fan_in, fan_out = 512 * 9, 512 * 9
    bound = math.sqrt(2.0) * math.sqrt(6.0 / (fan_in + fan_out))  # Xavier, ReLU gain
    assert conv.weight.abs().max() <= bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    for _, block in feature_layers(model):
        assert torch.all(block.bn.weight == 1) and torch.all(block.bn.bias == -0.1)
    leaky = build_model("basicnet", in_channels=3, num_classes=10, width=0.125,
                        negative_slope=0.01)
    act = feature_layers(leaky)[0][1].act
    assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.01


def test_width_parsing():
    assert parse_width("64-0.5x") == (64, 0.5) and parse_width("0.25x") == (None, 0.25)
    for bad in ("wide", "0", "-1", "64-"):
        with pytest.raises(ConfigError):
            parse_width(bad)
    with pytest.raises(ConfigError, match="plain multiplier"):
        build_model("vgg16", in_channels=3, num_classes=10, width="64-0.5x")
    with pytest.raises(ConfigError, match="valid models"):
        build_model("resnet18", in_channels=3, num_classes=10)


def test_vgg19_on_cifar_is_network_slimmings_layout():
    """Four max-pools, then the 2x2 map averaged into [classes] (Liu et al. 2017), not a
    fifth max-pool; the other VGGs keep five."""
    torch.manual_seed(0)
    model = build_model("vgg19", in_channels=3, num_classes=10, width=0.125).double().eval()
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    last = model.features(x)
    assert last.shape[-2:] == (2, 2)
    expected = model.classifier(last.mean(dim=(2, 3)))
    assert torch.allclose(model(x), expected, rtol=0, atol=1e-12)
    vgg16 = build_model("vgg16", in_channels=3, num_classes=10, width=0.125)
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg16.features) == 5
