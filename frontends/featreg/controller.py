"""The sparsity controller: a target sparsity in, one threshold per gate out.

A level S's threshold for a gate is the S-quantile of that gate's input, with the gates before it already
at their level-S thresholds (a forward pass sets them in call order, so one pass over a batch calibrates
them all in sequence). In training (:meth:`SparsityController.tracking`) each batch uses its own quantiles,
as BatchNorm uses batch statistics, and a running average keeps them per level; :meth:`calibrate` fixes
them on held-out patches and :meth:`measure` checks the sparsity they give on other held-out patches.
Quantiles in training come from a random subsample of each feature (``TRACK_SAMPLES`` values): a full sort
of every feature each step would cost as much as the convs.

In data-parallel training (:mod:`edgesparse.frontends.distributed`) the training quantiles are taken over
every process's share of the batch (each process's subsample, gathered), so every process gates alike and
as one process would on the whole batch (exactly so where a feature has at most ``TRACK_SAMPLES`` values).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from edgesparse.frontends import distributed
from edgesparse.frontends.featreg.gate import ThresholdGate

TRACK_SAMPLES = 1 << 15
MOMENTUM = 0.05


def quantile(feature: torch.Tensor, level: float, samples: int | None = None) -> torch.Tensor:
    values = feature.detach().flatten()
    if samples is not None and values.numel() > samples:
        values = values[torch.randint(values.numel(), (samples,), device=values.device)]
    return torch.quantile(values, level)


def global_quantile(feature: torch.Tensor, level: float, samples: int) -> torch.Tensor:
    """The quantile over all processes' shares of the batch (each subsampled to its share of ``samples``)."""
    if not distributed.is_distributed():
        return quantile(feature, level, samples)
    values = feature.detach().flatten()
    share = max(1, samples // distributed.world_size())
    if values.numel() > share:
        values = values[torch.randint(values.numel(), (share,), device=values.device)]
    return torch.quantile(distributed.all_gather_cat(values), level)


class SparsityController:
    def __init__(self, gates: list[tuple[str, ThresholdGate]], levels: list[float]):
        self.names = [name for name, _ in gates]
        self.gates = [gate for _, gate in gates]
        self.levels = sorted(levels)
        self.thresholds = {level: torch.zeros(len(gates)) for level in self.levels}

    def with_levels(self, levels: list[float]) -> SparsityController:
        """A controller of the same gates for other levels (thresholds unset: calibrate them)."""
        return SparsityController(list(zip(self.names, self.gates)), levels)

    @contextlib.contextmanager
    def hooked(self, hook):
        """``hook(index, gate, feature)`` runs before each gate."""
        handles = [
            gate.register_forward_pre_hook(lambda gate, args, index=index: hook(index, gate, args[0]))
            for index, gate in enumerate(self.gates)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def tracking(self, level: float):
        """Training: each gate at the level's quantile of this batch; the running thresholds follow."""
        running = self.thresholds[level]

        def hook(index, gate, feature):
            threshold = global_quantile(feature, level, TRACK_SAMPLES)
            gate.threshold.copy_(threshold)
            running[index] += MOMENTUM * (float(threshold) - running[index])

        return self.hooked(hook)

    def apply(self, level: float) -> None:
        for gate, threshold in zip(self.gates, self.thresholds[level]):
            gate.threshold.fill_(float(threshold))

    @torch.no_grad()
    def calibrate(self, model: nn.Module, inputs: torch.Tensor, level: float) -> None:
        """Fixes the level's thresholds: exact quantiles on ``inputs`` (held-out patches)."""

        def hook(index, gate, feature):
            self.thresholds[level][index] = quantile(feature, level)
            gate.threshold.fill_(float(self.thresholds[level][index]))

        with self.hooked(hook):
            model(inputs)

    @torch.no_grad()
    def measure(self, model: nn.Module, inputs: torch.Tensor, level: float | None) -> dict[str, float]:
        """Gate name -> the fraction of its input gated off on ``inputs`` at the level (None: as set)."""
        if level is not None:
            self.apply(level)
        measured = {}

        def hook(index, gate, feature):
            measured[self.names[index]] = float((feature <= gate.threshold).float().mean())

        with self.hooked(hook):
            model(inputs)
        return measured

    def state_dict(self) -> dict:
        return {str(level): thresholds.tolist() for level, thresholds in self.thresholds.items()}

    def load_state_dict(self, state: dict) -> None:
        for level in self.levels:
            self.thresholds[level] = torch.tensor(state[str(level)])
