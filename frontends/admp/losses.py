"""The losses: distillation (teacher-student output difference), pseudo labels, MMD."""

from __future__ import annotations

import torch
from torch.nn.functional import cross_entropy, kl_div, log_softmax, softmax


def distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``; T^2 keeps gradients at the scale of CE."""
    teacher = softmax(teacher_logits / temperature, dim=1)
    return kl_div(log_softmax(student_logits / temperature, dim=1), teacher, reduction="batchmean") * temperature**2


def pseudo_label(logits: torch.Tensor, labeller_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """CE on the labeller's arg-max where its confidence reaches ``threshold``, averaged over the batch
    (so few confident images weigh little)."""
    confidence, labels = softmax(labeller_logits.detach(), dim=1).max(dim=1)
    return (cross_entropy(logits, labels, reduction="none") * (confidence >= threshold)).mean()


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
