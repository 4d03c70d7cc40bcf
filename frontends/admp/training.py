"""The training loop: epochs over a stage with tqdm, a checkpoint after every epoch, resume from it.

A stage's checkpoint (``<name>.ckpt``) holds the epoch count done, the state of everything it trains
(model, optimizer, ADMM...) and the RNG state; a run started again resumes each stage where its
checkpoint left it, and skips the stages already done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch
from torch.nn.functional import affine_grid, grid_sample
from tqdm import trange

from edgesparse.frontends import distributed


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> object: ...


def run_stage(
    path: Path, epochs: int, train_epoch: Callable[[int], dict[str, float]], state: dict[str, Stateful]
) -> None:
    """Calls ``train_epoch(epoch)`` until ``epochs`` epochs are done (counting those in ``path``'s checkpoint)."""
    done = 0
    if path.exists():
        checkpoint = torch.load(path, weights_only=False)
        for key, item in state.items():
            item.load_state_dict(checkpoint[key])
        torch.set_rng_state(checkpoint["rng"])
        done = checkpoint["epoch"]
    progress = trange(
        done, epochs, initial=done, total=epochs, desc=path.stem, leave=False, disable=not distributed.is_main()
    )
    for epoch in progress:
        progress.set_postfix(train_epoch(epoch))
        checkpoint = {key: item.state_dict() for key, item in state.items()} | {
            "epoch": epoch + 1,
            "rng": torch.get_rng_state(),
        }
        distributed.save_on_main(checkpoint, path)


def batches(count: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Index batches of a fresh random permutation (the last, short batch dropped unless it is all)."""
    order = torch.randperm(count)
    for start in range(0, max(count - batch_size, 0) + 1, batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits in eval mode."""
    model.eval()
    if not len(images):
        return model(torch.zeros(1, *images.shape[1:], device=images.device))[:0]
    return torch.cat([model(images[start : start + batch_size]) for start in range(0, len(images), batch_size)])


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    if not len(labels):
        return float("nan")
    return float((predict(model, images).argmax(1) == labels).float().mean())


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> None:
    """AdaBN: BatchNorm running statistics re-estimated on ``images`` (a cumulative average); each process
    reads its share of every batch when several do (their BatchNorm is synced)."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    for start in range(0, len(images), batch_size):
        model(distributed.local_slice(images[start : start + batch_size], even=False))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def recolour(images: torch.Tensor) -> torch.Tensor:
    """Each image's channels given random colours: channel k becomes ``|c_k - x_k|`` for a uniform random
    ``c_k`` in [0, 1] per image and channel (``c_k = 0`` keeps it, ``c_k = 1`` inverts it), so ink and
    background come in any pair of colours and either may be the brighter one."""
    colours = torch.rand(images.shape[0], images.shape[1], 1, 1, device=images.device)
    return (colours - images).abs()


def augment(images: torch.Tensor, rotation: float = 0.25, scale: float = 0.15, shift: float = 0.1) -> torch.Tensor:
    """Random affine jitter (rotation in radians, relative scale and shift), one draw per image: a
    labelled domain seen under small changes of pose generalises further than its own framing."""
    count = len(images)
    angle = (torch.rand(count) * 2 - 1) * rotation
    zoom = 1 + (torch.rand(count) * 2 - 1) * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    offset = (torch.rand(count, 2) * 2 - 1) * shift * 2  # grid coordinates span [-1, 1]
    theta = torch.stack([torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1)
    theta = theta.to(images.device)
    grid = affine_grid(theta, list(images.shape), align_corners=False)
    return grid_sample(images, grid, align_corners=False)
