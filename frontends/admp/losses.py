"""The losses: distillation (teacher-student output difference), pseudo labels, MMD."""

from __future__ import annotations

import math

import torch
from torch.nn.functional import cross_entropy, kl_div, log_softmax, softmax

from edgesparse.frontends import distributed


def distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``; T^2 keeps gradients at the scale of CE."""
    teacher = softmax(teacher_logits / temperature, dim=1)
    return kl_div(log_softmax(student_logits / temperature, dim=1), teacher, reduction="batchmean") * temperature**2


def pseudo_label(
    logits: torch.Tensor, labeller_logits: torch.Tensor, threshold: float, balanced: bool = False
) -> torch.Tensor:
    """CE on the labeller's arg-max where its confidence reaches ``threshold``, averaged over the batch
    (so few confident images weigh little). ``balanced``: each class present among the confident labels
    weighs the same in total (a class the labeller over-predicts cannot pull every image towards it:
    the self-reinforcing step of a collapse); the classes are counted over the global batch when several
    processes share it (:mod:`edgesparse.frontends.distributed`)."""
    confidence, labels = softmax(labeller_logits.detach(), dim=1).max(dim=1)
    weight = (confidence >= threshold).float()
    if balanced:
        counts = torch.zeros(logits.shape[1], device=logits.device).index_add_(0, labels, weight)
        counts = distributed.all_reduce_sum(counts)
        if counts.any():
            present = (counts > 0).sum()
            weight = weight * counts.sum() / (present * counts[labels].clamp_min(1))
    return (cross_entropy(logits, labels, reduction="none") * weight).mean()


def class_balance(logits: torch.Tensor) -> float:
    """Entropy of the arg-max class histogram over ``log(classes)``: 1 when every class is predicted
    equally often, 0 when one class takes every image (a collapsed self-training)."""
    counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).float()
    share = counts / counts.sum()
    return float(-(share[share > 0] * share[share > 0].log()).sum() / math.log(logits.shape[1]))


def mmd(
    source: torch.Tensor, target: torch.Tensor, bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
) -> torch.Tensor:
    """Biased squared MMD with a sum of Gaussian kernels, bandwidths relative to the mean squared distance."""
    joint = torch.cat([source, target])
    distances = torch.cdist(joint, joint).pow(2)
    scale = distances.detach().mean().clamp_min(1e-6)
    kernel = sum(torch.exp(-distances / (scale * bandwidth)) for bandwidth in bandwidths)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()
