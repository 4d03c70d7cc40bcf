"""Data-parallel training over several processes (one machine or several), for any training method.

Started by ``torchrun`` (``torchrun --nproc-per-node N script.py ...``), which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` joins the process group from them
(gloo on CPU, NCCL on CUDA). Without them every helper here is the one-process identity, so a training loop
written with them runs unchanged in one process.

The convention the helpers serve: every process draws the same global batch (same seeded source) and trains
on its slice (:func:`local_slice`), DDP averages the gradients (:func:`wrap`), statistics that steer the
training are reduced (:func:`all_gather_cat`, :func:`all_reduce_mean`), and rank 0 alone writes checkpoints
(:func:`save_on_main`). The data order then does not depend on the number of processes, so a checkpoint
resumes with any number of them (the global batch divisible by it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import _functional_collectives as functional_collectives

from edgesparse.frontends.checkpoints import save_checkpoint
from edgesparse.frontends.errors import FrontendError


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Joins the process group torchrun described in the environment (once); False when not started by it."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return False
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: str | torch.device) -> torch.device:
    """``device``, with CUDA's index this process's local rank (one GPU per process)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0)
    return device


def wrap(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged across processes), or itself in one process."""
    if not is_distributed():
        return model
    device = torch.device(device)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def local_slice(batch: torch.Tensor, even: bool = True) -> torch.Tensor:
    """This process's contiguous share of a global batch (dimension 0): all shares of one size (``even``,
    so that the mean of the processes' batch means is the global batch's), else as near as can be."""
    size = world_size()
    if not even:
        return torch.tensor_split(batch, size)[rank()]
    if batch.shape[0] % size:
        raise FrontendError(f"a global batch of {batch.shape[0]} does not split evenly over {size} processes")
    share = batch.shape[0] // size
    return batch[rank() * share : (rank() + 1) * share]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the processes (in place, and returned)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the processes (in place, and returned)."""
    return all_reduce_sum(tensor).div_(world_size())


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Every gradient averaged over the processes, in place: what :func:`wrap`'s DDP does, for a training
    step DDP cannot wrap (ADMP's runs two forwards and two backward passes, each restricted to some of the
    parameters with ``inputs=``; DDP expects one of each). Gradients are None on every process or on none."""
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if not is_distributed() or not grads:
        return
    flat = all_reduce_mean(torch.cat([grad.reshape(-1) for grad in grads]))
    for grad, averaged in zip(grads, flat.split([grad.numel() for grad in grads])):
        grad.copy_(averaged.view_as(grad))


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training batch statistics are those of the global batch (every process's share),
    so that N processes train as one does. torch's ``SyncBatchNorm`` does this on GPUs only (its
    ``batch_norm_stats`` has no CPU kernel), and its ``convert_sync_batchnorm`` makes new modules, dropping
    the forward hooks (ADMP's masks) of the old ones; :func:`sync_batchnorm` swaps the class in place.
    The statistics are summed by :func:`_summed`, in two passes (the mean, then the mean squared
    deviation) for the precision of ``F.batch_norm``'s one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims, shape = [0, *range(2, x.dim())], (1, -1, *[1] * (x.dim() - 2))
        count = all_reduce_sum(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        mean = _summed(x.sum(dims)) / count
        centred = x - mean.view(shape)
        variance = _summed(centred.square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(variance * count / (count - 1), momentum)
        y = centred * torch.rsqrt(variance + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def replicate(model: nn.Module) -> nn.Module:
    """``model`` with rank 0's parameters and buffers on every process (as DDP does when it wraps one), for
    a loop that averages gradients itself (:func:`average_gradients`); unchanged in one process."""
    if is_distributed():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    return model


def _summed(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over the processes, differentiable: torch's functional all_reduce (the replacement for the
    deprecated ``torch.distributed.nn.functional``), whose backward sums the gradients over the processes."""
    return functional_collectives.wait_tensor(functional_collectives.all_reduce(tensor, "sum", dist.group.WORLD))


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm2d a :class:`SyncedBatchNorm2d` (in place; parameters, buffers,
    hooks and names kept), when several processes train it; unchanged in one process."""
    if is_distributed():
        for module in model.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = SyncedBatchNorm2d
    return model


def all_gather_cat(values: torch.Tensor) -> torch.Tensor:
    """Every process's 1-D ``values`` concatenated (rank order); lengths may differ between processes."""
    if not is_distributed():
        return values
    length = torch.tensor([values.numel()], device=values.device)
    lengths = [torch.zeros_like(length) for _ in range(world_size())]
    dist.all_gather(lengths, length)
    longest = int(max(lengths))
    padded = torch.cat([values, values.new_zeros(longest - values.numel())])
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return torch.cat([part[: int(n)] for part, n in zip(gathered, lengths)])


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def save_on_main(state: dict, path: Path) -> None:
    """Rank 0 writes the checkpoint (atomically); the others wait until it is there."""
    if is_main():
        save_checkpoint(state, path)
    barrier()


def shutdown() -> bool:
    """Leaves the process group; True on the process that reports the run (rank 0, or the only one)."""
    main = is_main()
    if is_distributed():
        dist.destroy_process_group()
    return main
