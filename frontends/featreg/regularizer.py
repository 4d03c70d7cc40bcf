"""The FeatReg penalty: makes each pixel's channel vector of every gated feature sparse.

Applied to the positive part of each gate's input, ``r = relu(x)`` (what a gate at threshold 0 would let
through), per pixel over the channel axis, averaged over pixels and gates:

- ``hoyer`` (default): ``(sum_c r_c)^2 / (C * sum_c r_c^2)``, the squared Hoyer measure in [1/C, 1]. It
  is scale-invariant, so the net cannot lower it by shrinking a feature and growing the next conv's
  weights, and it rewards concentrating each pixel's energy in a few channels: what a threshold gate then
  cuts away carries little of it.
- ``l1``: ``mean(r)``, the plain L1 penalty (not scale-invariant).
"""

from __future__ import annotations

import torch

from edgesparse.frontends.errors import FrontendError
from edgesparse.frontends.featreg.gate import ThresholdGate

KINDS = ("hoyer", "l1")
EPSILON = 1e-8


def pixel_penalty(feature: torch.Tensor, kind: str) -> torch.Tensor:
    positive = torch.relu(feature)
    if kind == "l1":
        return positive.mean()
    l1, l2 = positive.sum(dim=1), positive.square().sum(dim=1)
    return (l1.square() / (feature.shape[1] * l2 + EPSILON)).mean()


class FeatureRegularizer:
    """Records every gate's input on each forward pass; :meth:`penalty` is their mean penalty."""

    def __init__(self, gates: list[ThresholdGate], kind: str = "hoyer"):
        if kind not in KINDS:
            raise FrontendError(f"regularizer {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.features: list[torch.Tensor] = []
        self.handles = [gate.register_forward_pre_hook(lambda _, args: self.features.append(args[0])) for gate in gates]

    def penalty(self) -> torch.Tensor:
        """The penalty of the features recorded since the last call (which forgets them)."""
        if not self.features:
            raise FrontendError("the regularizer recorded no gate input: run a forward pass first")
        value = torch.stack([pixel_penalty(feature, self.kind) for feature in self.features]).mean()
        self.features = []
        return value

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
