"""PyTorch side of FeatReg: the gate, and an EDSR-style SR net whose every hidden conv reads a gated feature.

The gate zeroes, per element, the features at or below a threshold: ``where(x > t, x, 0)``. It exports
to ONNX as ``Where(Greater(x, t), x, 0)``, the form the ``featreg`` pass rewrites with the conv after it.
"""

from __future__ import annotations

import torch
from torch import nn


class ThresholdGate(nn.Module):
    def __init__(self, threshold: float = 0.0):
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.threshold, x, torch.zeros((), dtype=x.dtype))


class GatedResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(ThresholdGate(), nn.Conv2d(width, width, 3, padding=1), ThresholdGate(), nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class FeatRegEDSR(nn.Module):
    """EDSR-baseline layout (head, residual blocks, global skip, conv + PixelShuffle, tail) with a gate in
    front of every conv but the head, which reads the image."""

    def __init__(self, scale: int = 2, width: int = 64, blocks: int = 4, channels: int = 3):
        super().__init__()
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(*[GatedResidualBlock(width) for _ in range(blocks)], ThresholdGate(), nn.Conv2d(width, width, 3, padding=1))
        self.upsample = nn.Sequential(ThresholdGate(), nn.Conv2d(width, width * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.tail = nn.Sequential(ThresholdGate(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x):
        features = self.head(x)
        return self.tail(self.upsample(features + self.body(features)))
