"""The small residual CNN backbone, with one channel mask per channel group.

    stem conv -> [conv, conv] + residual -> strided conv -> [conv, conv] + residual -> global pool -> Linear

Every conv is conv + BatchNorm (the mask after it) + ReLU. The two convs whose outputs a residual add
sums share that group's mask (``trunk1``, ``trunk2``): a channel can only be stripped from an add when
it is pruned in both of its inputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import relu

from edgesparse.frontends.admp.masks import ChannelMask


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels))


class ResidualCNN(nn.Module):
    # mask group -> the convs whose outputs it masks
    GROUPS = {"trunk1": ("stem", "block1b"), "mid1": ("block1a",), "trunk2": ("down", "block2b"), "mid2": ("block2a",)}

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        wide = 2 * width
        self.convs = nn.ModuleDict(
            dict(
                stem=conv_bn(1, width),
                block1a=conv_bn(width, width),
                block1b=conv_bn(width, width),
                down=conv_bn(width, wide, stride=2),
                block2a=conv_bn(wide, wide),
                block2b=conv_bn(wide, wide),
            )
        )
        self.masks = nn.ModuleDict(
            dict(trunk1=ChannelMask(width), mid1=ChannelMask(width), trunk2=ChannelMask(wide), mid2=ChannelMask(wide))
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(wide, classes)

    def _block(self, x: torch.Tensor, first: str, second: str, mid: str, trunk: str) -> torch.Tensor:
        hidden = relu(self.masks[mid](self.convs[first](x)))
        return relu(x + self.masks[trunk](self.convs[second](hidden)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features the head classifies (what MMD aligns)."""
        x = relu(self.masks["trunk1"](self.convs["stem"](x)))
        x = self._block(x, "block1a", "block1b", "mid1", "trunk1")
        x = relu(self.masks["trunk2"](self.convs["down"](x)))
        x = self._block(x, "block2a", "block2b", "mid2", "trunk2")
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def group_gammas(self) -> dict[str, torch.Tensor]:
        """Mask group -> |BatchNorm gamma| summed over the group's convs (the magnitude criterion)."""
        return {
            group: sum(self.convs[conv][1].weight.detach().abs() for conv in convs)
            for group, convs in self.GROUPS.items()
        }
