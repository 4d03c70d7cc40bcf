"""Per-channel masks: off (identity), soft (sigmoid of learned logits) or hard ({0, 1} buffer)."""

from __future__ import annotations

import torch
from torch import nn

MODES = ("off", "soft", "hard")


class ChannelMask(nn.Module):
    """One channel group's mask, multiplied into [N, C, ...] activations in the current ``mode``.

    ``round_to``: the hard mask keeps a multiple of this many channels (see :func:`admm.keep_count`)."""

    def __init__(self, channels: int, round_to: int = 1):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(channels))
        self.register_buffer("hard", torch.ones(channels))
        self.mode = "off"
        self.round_to = round_to

    def soft(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def vector(self) -> torch.Tensor | None:
        """The current mask (None when off)."""
        if self.mode == "off":
            return None
        return self.soft() if self.mode == "soft" else self.hard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vector = self.vector()
        return x if vector is None else x * vector.view(1, -1, *[1] * (x.dim() - 2))


def set_mode(module: nn.Module, mode: str) -> None:
    """Puts every mask under ``module`` in ``mode``."""
    assert mode in MODES, mode
    for mask in module.modules():
        if isinstance(mask, ChannelMask):
            mask.mode = mode


def mask_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [mask.logits for mask in module.modules() if isinstance(mask, ChannelMask)]


def kept_channel_ratio(masks: dict[str, ChannelMask]) -> float:
    """Kept channels / all channels over the hard masks."""
    return float(sum(mask.hard.sum() for mask in masks.values()) / sum(mask.hard.numel() for mask in masks.values()))
