"""The small residual CNN backbone of the digit experiments (an ordinary net: attach_masks masks it).

    stem conv -> [conv, conv] + residual -> strided conv -> [conv, conv] + residual -> global pool -> Linear

Every conv is conv + BatchNorm + ReLU. :func:`~edgesparse.frontends.admp.groups.attach_masks` finds its
four channel groups: the convs whose outputs a residual add sums share one (stem and block1b, down and
block2b), the two inner convs have their own.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import relu


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels))


class ResidualCNN(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10, in_channels: int = 1):
        super().__init__()
        wide = 2 * width
        self.convs = nn.ModuleDict(
            dict(
                stem=conv_bn(in_channels, width),
                block1a=conv_bn(width, width),
                block1b=conv_bn(width, width),
                down=conv_bn(width, wide, stride=2),
                block2a=conv_bn(wide, wide),
                block2b=conv_bn(wide, wide),
            )
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(wide, classes)

    def _block(self, x: torch.Tensor, first: str, second: str) -> torch.Tensor:
        return relu(x + self.convs[second](relu(self.convs[first](x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features the head classifies (what MMD aligns)."""
        x = relu(self.convs["stem"](x))
        x = self._block(x, "block1a", "block1b")
        x = relu(self.convs["down"](x))
        x = self._block(x, "block2a", "block2b")
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
