"""ADMM for the {0, 1} mask constraint: auxiliary binary z, projection with a fixed count, dual update.

min_s L(s)  s.t. s in S = {z in {0, 1}^C : sum(z) = keep}
s-step:  gradient steps on L(s) + rho/2 * ||s - z + u||^2   (:meth:`ADMM.penalty`)
z-step:  z = Proj_S(s + u): ones at the ``keep`` largest entries  (:meth:`ADMM.step`)
u-step:  u = u + s - z
"""

from __future__ import annotations

import torch

from edgesparse.frontends.admp.masks import ChannelMask


def keep_count(channels: int, ratio: float, round_to: int = 1) -> int:
    """Channels kept of ``channels`` when a fraction ``ratio`` is pruned (never none), a multiple of
    ``round_to`` (or all of them, when fewer)."""
    if round_to >= channels:
        return channels
    return min(channels, max(round_to, round(channels * (1 - ratio) / round_to) * round_to))


def project_top_k(values: torch.Tensor, keep: int) -> torch.Tensor:
    """The nearest {0, 1} vector with ``keep`` ones (Euclidean): ones at the largest ``keep`` entries."""
    binary = torch.zeros_like(values)
    binary[values.topk(keep).indices] = 1
    return binary


class ADMM:
    """The z and u of every mask; z is written into the masks' ``hard`` buffers."""

    def __init__(self, masks: dict[str, ChannelMask], ratio: float, rho: float):
        self.masks, self.rho = masks, rho
        self.keep = {name: keep_count(mask.hard.numel(), ratio, mask.round_to) for name, mask in masks.items()}
        self.dual = {name: torch.zeros_like(mask.hard) for name, mask in masks.items()}

    def penalty(self) -> torch.Tensor:
        return sum(
            self.rho / 2 * (mask.soft() - mask.hard + self.dual[name]).pow(2).sum() for name, mask in self.masks.items()
        )

    @torch.no_grad()
    def step(self) -> None:
        for name, mask in self.masks.items():
            soft = mask.soft()
            mask.hard.copy_(project_top_k(soft + self.dual[name], self.keep[name]))
            self.dual[name] += soft - mask.hard

    def state_dict(self) -> dict:
        return {"dual": self.dual}

    def load_state_dict(self, state: dict) -> None:
        self.dual = state["dual"]
