"""Multi-sparsity training: one set of weights trained for several sparsity levels at once.

Each batch draws one level uniformly from the model's levels; every gate runs at that batch's quantile
for the level (:meth:`SparsityController.tracking`), so the net learns to work at all of them and one
model serves them all, a threshold set each. Loss: L1 to the target + ``reg_weight`` x the FeatReg penalty
(:mod:`~edgesparse.frontends.featreg.regularizer`). No levels: the dense baseline, every gate a ReLU
(threshold 0), trained the same way. ``freeze_batchnorm`` (sparsity fine-tuning of a trained net): its
BatchNorm layers keep their running statistics and normalize with them. Batches at different levels have
different feature statistics, so running statistics updated by all of them fit their mix and no level
(the problem slimmable nets solve with a BatchNorm per width); the affine parameters still train. On the
DnCNN denoiser it was better at the lowest level and worse at the next (docs/featreg.md), so it is not the
default.
Adam with a cosine learning-rate decay; a checkpoint (weights, optimizer, schedule, controller, sampler,
step) every ``checkpoint_every`` steps, written atomically, from which :func:`train` resumes after an
interruption. The loss is L1 by default, any ``loss(outputs, targets)`` otherwise.

Device and scale: ``device`` ("cpu", "cuda") holds the model and each batch. Started by ``torchrun``
(:mod:`edgesparse.frontends.distributed`), every process draws the same global batch from its (identically
seeded) source and trains on its slice, DDP averages the gradients, the controller's quantiles are taken
over all the slices, and rank 0 writes the checkpoint: the run equals one process on the global batch
(within float rounding), and a checkpoint resumes with any number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from tqdm import tqdm

from edgesparse.frontends import distributed
from edgesparse.frontends.errors import FrontendError
from edgesparse.frontends.featreg.controller import SparsityController
from edgesparse.frontends.featreg.regularizer import FeatureRegularizer

CHECKPOINT = "checkpoint.pt"


@runtime_checkable
class BatchSource(Protocol):
    """Where training batches come from (e.g. ``experiments.data.PatchSampler``): its state is checkpointed
    with the weights, so a resumed run draws the batches an uninterrupted one would have."""

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class IterableSource:
    """A :class:`BatchSource` over any iterable of ``(input, target)`` batches (a list, a DataLoader, a
    generator function's result): re-iterated when it runs out (epochs). Its state is the number of batches
    drawn: a resumed run re-iterates and skips that many, so it draws what an uninterrupted run would where
    the iterable yields the same batches each time it is iterated (a seeded DataLoader does)."""

    def __init__(self, batches: Iterable):
        self.batches, self.iterator, self.drawn = batches, None, 0

    def _next(self):
        if self.iterator is None:
            self.iterator = iter(self.batches)
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.batches)
            try:
                return next(self.iterator)
            except StopIteration:
                raise FrontendError("the training batches are empty") from None

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._next()
        self.drawn += 1
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise FrontendError(f"a training batch must be an (input, target) pair, got {type(batch).__name__}")
        return batch[0], batch[1]

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.iterator, self.drawn = None, 0
        for _ in range(state["drawn"]):
            self._next()
        self.drawn = state["drawn"]


@dataclasses.dataclass
class TrainConfig:
    steps: int = 3000
    lr: float = 5e-4
    reg_weight: float = 0.01
    reg_kind: str = "hoyer"
    checkpoint_every: int = 200
    seed: int = 0
    freeze_batchnorm: bool = False


def set_training_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train(
    model: nn.Module,
    controller: SparsityController,
    sampler: BatchSource,
    config: TrainConfig,
    out_dir: Path,
    *,
    progress: bool = True,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Trains ``model`` in place up to ``config.steps`` (resuming from ``out_dir``'s checkpoint); the
    training log (one entry per logged step) is returned and kept in the checkpoint. ``model`` ends on
    ``device``."""
    loss = loss or nn.functional.l1_loss
    device = distributed.local_device(device)
    model.to(device)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    level_generator = torch.Generator().manual_seed(config.seed)
    step, log = 0, []
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        controller.load_state_dict(state["controller"])
        sampler.load_state_dict(state["sampler"])
        level_generator.set_state(state["level_generator"])
        torch.set_rng_state(state["torch_rng"])  # the controller's quantile subsampling draws from it
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        step, log = state["step"], state["log"]
    trained = distributed.wrap(model, device)
    regularizer = (
        FeatureRegularizer(controller.gates, config.reg_kind) if controller.levels and config.reg_weight > 0 else None
    )
    set_training_mode(model, config.freeze_batchnorm)
    progress = progress and distributed.is_main()
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not progress)
    while step < config.steps:
        inputs, targets = sampler.sample()
        inputs = distributed.local_slice(inputs).to(device, non_blocking=True)
        targets = distributed.local_slice(targets).to(device, non_blocking=True)
        level = (
            controller.levels[int(torch.randint(len(controller.levels), (), generator=level_generator))]
            if controller.levels
            else None
        )
        with controller.tracking(level) if level is not None else contextlib.nullcontext():
            outputs = trained(inputs)
        reconstruction = loss(outputs, targets)
        penalty = regularizer.penalty() if regularizer else torch.zeros((), device=device)
        total = reconstruction + config.reg_weight * penalty
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        schedule.step()
        step += 1
        bar.update()
        bar.set_postfix(l1=f"{reconstruction.item():.4f}", reg=f"{penalty.item():.3f}")
        if step % 50 == 0:
            log.append({"step": step, "level": level, "l1": reconstruction.item(), "penalty": penalty.item()})
        if step % config.checkpoint_every == 0 or step == config.steps:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "controller": controller.state_dict(),
                "sampler": sampler.state_dict(),
                "level_generator": level_generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "log": log,
            }
            if device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            distributed.save_on_main(state, checkpoint)
    bar.close()
    if regularizer:
        regularizer.remove()
    model.eval()
    return log
