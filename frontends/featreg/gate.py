"""The FeatReg gate: zeroes, per element, the features at or below a threshold, ``where(x > t, x, 0)``.

It exports to ONNX as ``Where(Greater(x, t), x, 0)``, the form the ``featreg`` pass rewrites together with
the conv after it. The threshold is a buffer, not a parameter: the sparsity controller sets it (per level);
the gradient w.r.t. ``x`` is the gate's own mask (1 where kept, 0 where gated off), i.e. the kept
features pass the gradient straight through, like a ReLU shifted to ``t``.
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


def gates_in_call_order(model: nn.Module, example: torch.Tensor) -> list[tuple[str, ThresholdGate]]:
    """(module name, gate) in the order a forward pass calls them: the order of the exported graph."""
    names = {gate: name for name, gate in model.named_modules() if isinstance(gate, ThresholdGate)}
    called: list[ThresholdGate] = []
    handles = [gate.register_forward_pre_hook(lambda gate, _: called.append(gate)) for gate in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [(names[gate], gate) for gate in called]
