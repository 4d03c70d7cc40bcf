"""Small PyTorch CNNs in the styles the project targets, with their example input shapes.

They are the built-in examples for the demo, the tests and the benchmarks: each one exercises the graph
patterns a pass or backend must handle (strided 1x1 downsample + residual add; depthwise + ReLU6 +
inverted residual; concat skips + ConvTranspose; residual blocks + PixelShuffle).
Weights are random (seeded): these nets check compilers, not accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edgesparse.frontends.featreg.nets import FeatRegEDSR, gated


def conv_bn_act(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class TinyCNN(nn.Module):
    """The demo model: conv-bn-relu twice, global pooling, a linear classifier."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(conv_bn_act(3, 16), conv_bn_act(16, 32, stride=2))
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(cin, cout, stride=stride), conv_bn_act(cout, cout, act=None))
        self.shortcut = (
            conv_bn_act(cin, cout, kernel=1, stride=stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetStyle(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn_act(3, 16)
        self.stages = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn_act(cin, hidden, kernel=1, act=nn.ReLU6),
            conv_bn_act(hidden, hidden, stride=stride, groups=hidden, act=nn.ReLU6),
            conv_bn_act(hidden, cout, kernel=1, act=None),
        )

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV2Style(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(3, 16, stride=2, act=nn.ReLU6),
            InvertedResidual(16, 16, 1, 4),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
            conv_bn_act(24, 64, kernel=1, act=nn.ReLU6),
        )
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class UNetStyle(nn.Module):
    def __init__(self, channels: int = 3, width: int = 16):
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn_act(channels, width), conv_bn_act(width, width))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), conv_bn_act(width, 2 * width), conv_bn_act(2 * width, 2 * width))
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = nn.Sequential(conv_bn_act(2 * width, width), conv_bn_act(width, width))
        self.out = nn.Conv2d(width, channels, 1)

    def forward(self, x):
        skip = self.enc1(x)
        return self.out(self.dec1(torch.cat([self.up(self.enc2(skip)), skip], dim=1)))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)
        )
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.body(x) * self.res_scale


class EDSRStyle(nn.Module):
    """EDSR-baseline layout: head conv, residual blocks, a global skip, conv + PixelShuffle upsampler."""

    def __init__(self, scale: int = 2, width: int = 32, blocks: int = 4, channels: int = 3):
        super().__init__()
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)], nn.Conv2d(width, width, 3, padding=1))
        self.upsample = nn.Sequential(nn.Conv2d(width, width * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.tail = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x):
        features = self.head(x)
        return self.tail(self.upsample(features + self.body(features)))


# name -> (constructor, example input shape)
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "tiny": (TinyCNN, (1, 3, 32, 32)),
    "resnet": (ResNetStyle, (1, 3, 32, 32)),
    "mobilenetv2": (MobileNetV2Style, (1, 3, 32, 32)),
    "unet": (UNetStyle, (1, 3, 32, 32)),
    "edsr": (EDSRStyle, (1, 3, 24, 24)),
    "featreg-edsr": (lambda: gated(FeatRegEDSR(width=32)), (1, 3, 24, 24)),
}


def build_zoo_model(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The named net with seeded random weights (BN statistics randomized too) and an example input."""
    constructor, shape = ZOO[name]
    torch.manual_seed(seed)
    module = constructor()
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            # Non-trivial statistics, so that folding BatchNormalization into Conv is really exercised.
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(layer.weight, 0.5, 1.5)
            nn.init.uniform_(layer.bias, -0.5, 0.5)
    return module.eval(), torch.randn(shape)
