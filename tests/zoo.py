"""Small replicas of the structures users' CNNs are made of, each the pattern that made an
earlier version measure or prune wrongly: depthwise and grouped convolutions, squeeze-and-
excitation, channel shuffle, concatenation with a pre-activation BatchNorm, LayerNorm over
channels, a conv classifier, BN-with-activation modules, identity slots, activations with
f(0) != 0, a Linear broadcast-added, a zero-padded average pool, BN without affine
parameters, and the plain ResNet / VGG layouts. Every model takes 3 x 16 x 16 inputs and
returns 10 scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnets import ResNet18Style


def cbr(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    """conv -> BN -> activation, padded to keep the size."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class Head(nn.Module):
    """Global average pooling written as a mean, then a Linear: as many models do."""

    def __init__(self, cin, classes=10):
        super().__init__()
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.reduce = nn.Conv2d(c, max(1, c // r), 1)
        self.expand = nn.Conv2d(max(1, c // r), c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    """MobileNet-V2 / EfficientNet: expand 1x1, depthwise 3x3, (SE), project 1x1, add."""

    def __init__(self, c, expand=3, se=True):
        super().__init__()
        hidden = c * expand
        self.expand = cbr(c, hidden, 1, act=nn.ReLU6)
        self.depthwise = cbr(hidden, hidden, 3, groups=hidden, act=nn.ReLU6)
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class MobileNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.blocks = nn.Sequential(InvertedResidual(8), InvertedResidual(8, se=False))
        self.last = cbr(8, 16, 1)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.last(self.blocks(self.stem(x))))


class GroupedBlock(nn.Module):
    """ResNeXt / RegNet: 1x1, grouped 3x3 (4 groups), 1x1, add."""

    def __init__(self, c, width=16, groups=4):
        super().__init__()
        self.a = cbr(c, width, 1)
        self.b = cbr(width, width, 3, groups=groups)
        self.c = nn.Sequential(nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.c(self.b(self.a(x))))


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.block = GroupedBlock(8)
        self.head = Head(8)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def channel_shuffle(x, groups: int):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet-V2: split, a branch on one half, concatenate, shuffle."""

    def __init__(self, c):
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(cbr(half, half, 1), nn.Conv2d(half, half, 3, 1, 1,
                                    groups=half, bias=False), nn.BatchNorm2d(half),
                                    cbr(half, half, 1))

    def forward(self, x):
        left, right = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((left, self.branch(right)), 1), 2)


class ShuffleNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.unit = ShuffleUnit(8)
        self.last = cbr(8, 16, 1)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.last(self.unit(self.stem(x))))


class DenseLayer(nn.Module):
    """DenseNet: BN -> ReLU -> 1x1 -> BN -> ReLU -> 3x3, concatenated to its input."""

    def __init__(self, cin, growth=4):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 8, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat((x, y), 1)


class DenseNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.dense = nn.Sequential(DenseLayer(8), DenseLayer(12))
        self.norm = nn.BatchNorm2d(16)
        self.head = Head(16)

    def forward(self, x):
        return self.head(F.relu(self.norm(self.dense(self.stem(x)))))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7, LayerNorm over channels, MLP (Linear-GELU-Linear), add."""

    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return x + y


class ConvNeXtLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.block = ConvNeXtBlock(8)
        self.head = Head(8)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


class ConvClassifier(nn.Module):
    """SqueezeNet: the class scores are a conv's channels, averaged."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), nn.MaxPool2d(2), cbr(8, 16))
        self.classifier = cbr(16, 10, 1)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.classifier(self.features(x)), 1), 1)


class BatchNormAct2d(nn.BatchNorm2d):
    """BN and its activation in one module, with a drop slot (timm's layout)."""

    def __init__(self, c, act=nn.SiLU):
        super().__init__(c)
        self.drop, self.act = nn.Identity(), act()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class BNActNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), BatchNormAct2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, 1, 1, bias=False), BatchNormAct2d(16)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.bn2(self.conv2(self.bn1(self.conv1(x)))))


class SlotsAndActivations(nn.Module):
    """An identity slot between BN and a clamp / hardtanh, and a Softplus (f(0) != 0)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.slot = nn.Identity()
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.act2 = nn.Hardtanh(0.0, 6.0)
        self.conv3, self.bn3 = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.act3 = nn.Softplus()
        self.head = Head(16)

    def forward(self, x):
        x = torch.clamp(self.slot(self.bn1(self.conv1(x))), min=0)
        x = self.act2(self.slot(self.bn2(self.conv2(x))))
        return self.head(self.act3(self.bn3(self.conv3(x))))


class LinearInAdd(nn.Module):
    """A conditioning vector, through a Linear, broadcast-added to a feature map."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.conv = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8))
        self.embed = nn.Linear(3, 8)
        self.last = cbr(8, 16)
        self.head = Head(16)

    def forward(self, x):
        condition = self.embed(x.mean((2, 3)))
        y = F.relu(self.conv(self.stem(x)) + condition[:, :, None, None])
        return self.head(self.last(y))


class PaddedAvgPool(nn.Module):
    """A zero-padded average pool between a feature and a 1x1 conv (no padding there)."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.b = cbr(8, 16, 1)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.b(self.pool(self.a(x))))


class NoAffine(nn.Module):
    """A BatchNorm without affine parameters (no gamma) between two BN features."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(8, affine=False), nn.ReLU())
        self.c = cbr(8, 16)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.c(self.b(self.a(x))))


class VGGLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), cbr(8, 8), nn.MaxPool2d(2), cbr(8, 16),
                                      cbr(16, 16), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(),
                                        nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


ZOO = {
    "inverted-residual-se": MobileNetLike,
    "grouped-conv": GroupedNet,
    "channel-shuffle": ShuffleNetLike,
    "densenet-preact": DenseNetLike,
    "convnext-layernorm": ConvNeXtLike,
    "conv-classifier": ConvClassifier,
    "bn-act-module": BNActNet,
    "identity-slot-clamp-softplus": SlotsAndActivations,
    "linear-in-add": LinearInAdd,
    "padded-avgpool": PaddedAvgPool,
    "bn-without-affine": NoAffine,
    "resnet": lambda: ResNet18Style(width=4),
    "vgg": VGGLike,
}


def plant_dead(model: nn.Module, generator: torch.Generator) -> dict[str, int]:
    """Random dead patterns in every affine BatchNorm: gamma = 0 with beta < 0 (a zero
    output), beta > 0 (a constant), gamma tiny but alive, and now and then a whole layer
    dead; in every affine GroupNorm, dead whole groups and dead single channels. Returns
    how many of each were planted."""
    planted = {"zero": 0, "constant": 0, "barely-alive": 0}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm) and module.affine:
                _plant_dead_groups(module, generator, planted)
            if not isinstance(module, nn.BatchNorm2d) or not module.affine:
                continue
            c = module.num_features
            draw = torch.rand(c, generator=generator)
            whole = float(torch.rand((), generator=generator)) < 0.1
            dead = torch.ones(c, dtype=torch.bool) if whole else draw < 0.45
            constant = torch.rand(c, generator=generator) < 0.3
            module.weight[dead] = 0.0
            module.bias[dead & ~constant] = -0.5
            module.bias[dead & constant] = 0.5
            barely = ~dead & (torch.rand(c, generator=generator) < 0.1)
            module.weight[barely] = 2e-3  # above the 1e-3 threshold: alive
            planted["zero"] += int((dead & ~constant).sum())
            planted["constant"] += int((dead & constant).sum())
            planted["barely-alive"] += int(barely.sum())
    return planted


def _plant_dead_groups(norm: nn.GroupNorm, generator: torch.Generator, planted: dict) -> None:
    """Dead channels after a GroupNorm (gamma = 0, beta < 0): whole groups and single
    channels among live ones of their group."""
    size = norm.num_channels // norm.num_groups
    groups = torch.rand(norm.num_groups, generator=generator) < 0.4
    dead = groups.repeat_interleave(size) | (torch.rand(norm.num_channels,
                                                        generator=generator) < 0.2)
    norm.weight[dead], norm.bias[dead] = 0.0, -0.5
    planted["zero"] += int(dead.sum())


def warm_up(model: nn.Module, generator: torch.Generator, steps: int = 2) -> nn.Module:
    """Give every BatchNorm running statistics of its own, then eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(16, 3, 16, 16, generator=generator) * 1.5 + 0.3)
    return model.eval()
