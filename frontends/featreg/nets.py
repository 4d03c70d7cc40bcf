"""The FeatReg networks, as ordinary ReLU nets: every hidden conv reads a ReLU's output; only the first
conv reads the image. :func:`build_net` gates them with :func:`~edgesparse.frontends.featreg.attach.attach_gates`
(each ReLU becomes a gate under its own name), as it gates any user's net.

- :class:`FeatRegEDSR`: EDSR-baseline layout for super-resolution (x2, x3, x4), optionally plus the
  bicubic upscale of the input (``image_skip``), so the net only adds the missing detail: with gates in
  front of the tail, carrying the whole image through a 95%-sparse feature loses its flat areas' colour.
- :class:`FeatRegDnCNN`: DnCNN layout for denoising (predicts the noise, subtracted from the input),
  optionally subtracted from a learned linear smoothing of the input instead (``image_skip``, a 5x5
  depthwise conv, Gaussian at first): noise is everywhere, so a net that must output all of it needs dense
  features; after the smoothing, what is left to correct lies mostly along edges.
"""

from __future__ import annotations

import torch
from torch import nn

from edgesparse.frontends.featreg.attach import attach_gates

SMOOTHING_SIZE, SMOOTHING_SIGMA = 5, 1.0


class PreActivationResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


class FeatRegEDSR(nn.Module):
    """EDSR-baseline layout (head, residual blocks, global skip, conv + PixelShuffle, tail) with a ReLU in
    front of every conv but the head, which reads the image."""

    def __init__(self, scale: int = 2, width: int = 64, blocks: int = 4, channels: int = 3, image_skip: bool = False):
        super().__init__()
        self.scale, self.image_skip = scale, image_skip
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(
            *[PreActivationResidualBlock(width) for _ in range(blocks)],
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )
        self.upsample = nn.Sequential(
            nn.ReLU(), nn.Conv2d(width, width * scale * scale, 3, padding=1), nn.PixelShuffle(scale)
        )
        self.tail = nn.Sequential(nn.ReLU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x):
        features = self.head(x)
        detail = self.tail(self.upsample(features + self.body(features)))
        return (
            detail + nn.functional.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
            if self.image_skip
            else detail
        )


class FeatRegDnCNN(nn.Module):
    """DnCNN: conv, then ``depth - 2`` x (ReLU, conv, BatchNorm), then ReLU + conv to the noise estimate,
    which the net subtracts from its input (``image_skip``: from the input's learned smoothing). BatchNorm
    folds into the conv before it at export."""

    def __init__(self, width: int = 64, depth: int = 17, channels: int = 3, image_skip: bool = False):
        super().__init__()
        hidden = [
            nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
            for _ in range(depth - 2)
        ]
        self.noise = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), *hidden, nn.ReLU(), nn.Conv2d(width, channels, 3, padding=1)
        )
        self.smoothing = (
            nn.Conv2d(channels, channels, SMOOTHING_SIZE, padding=SMOOTHING_SIZE // 2, groups=channels, bias=False)
            if image_skip
            else None
        )
        if self.smoothing is not None:
            offsets = torch.arange(SMOOTHING_SIZE, dtype=torch.float32) - SMOOTHING_SIZE // 2
            gaussian = torch.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / (2 * SMOOTHING_SIGMA**2))
            with torch.no_grad():
                self.smoothing.weight.copy_((gaussian / gaussian.sum()).expand_as(self.smoothing.weight))

    def forward(self, x):
        return (x if self.smoothing is None else self.smoothing(x)) - self.noise(x)


def build_net(
    task: str,
    *,
    scale: int = 2,
    width: int = 32,
    blocks: int = 4,
    depth: int = 10,
    channels: int = 3,
    image_skip: bool = True,
) -> nn.Module:
    """The task's net, gated: ``sr`` -> :class:`FeatRegEDSR` (``blocks``), ``denoise`` -> :class:`FeatRegDnCNN`
    (``depth``)."""
    if task == "sr":
        net = FeatRegEDSR(scale=scale, width=width, blocks=blocks, channels=channels, image_skip=image_skip)
    else:
        net = FeatRegDnCNN(width=width, depth=depth, channels=channels, image_skip=image_skip)
    return gated(net, channels)


def gated(net: nn.Module, channels: int = 3) -> nn.Module:
    """``net`` with its gates attached (in place): every ReLU of these nets becomes a gate, exactly."""
    report = attach_gates(net, torch.rand(1, channels, 12, 12))
    if report.forward_replaced or report.dense_model_changes:
        raise RuntimeError(f"{type(net).__name__}: its ReLUs did not all become gates in place:\n{report}")
    return net
