"""ADMP on the user's own net: :func:`attach_masks`, :func:`fit`, :func:`export`.

from edgesparse.frontends import admp
groups = admp.attach_masks(net, example_inputs, round_to=1)
result = admp.fit(net, source=(images, labels), target=target_images, ratio=0.6, out_dir="runs/x")
admp.export(net, example_inputs, "student.onnx")   # then: --passes default,strip-channels
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import onnx_ir as ir
import torch

from edgesparse.frontends.admp.export import export_model
from edgesparse.frontends.admp.fitting import Config, Data, Experiment
from edgesparse.frontends.admp.groups import attach_masks, mask_groups
from edgesparse.frontends.admp.masks import set_mode
from edgesparse.frontends.errors import FrontendError

__all__ = ["FitResult", "attach_masks", "export", "fit"]

Batches = tuple[torch.Tensor, ...] | Iterable


@dataclasses.dataclass
class FitResult:
    metrics: dict  # target_acc (when ``test`` is given), kept_channel_ratio, images, config
    models: dict[str, torch.nn.Module]  # source_only, teacher, prune_then_adapt, admp (masked, hard)


def _tensors(batches, labelled: bool, what: str) -> tuple[torch.Tensor, ...]:
    """``(images, labels)`` / ``images`` as tensors, or an iterable of such batches, concatenated."""
    if isinstance(batches, torch.Tensor):
        parts = [(batches,)]
    elif isinstance(batches, tuple) and batches and all(isinstance(part, torch.Tensor) for part in batches):
        parts = [batches]
    else:
        parts = [batch if isinstance(batch, (tuple, list)) else (batch,) for batch in batches]
    if not parts:
        raise FrontendError(f"{what}: no batches")
    arity = 2 if labelled else 1
    if any(len(part) < arity for part in parts):
        raise FrontendError(f"{what}: expected {'(images, labels)' if labelled else 'images'} batches")
    return tuple(torch.cat([part[index] for part in parts]) for index in range(arity))


def fit(
    net: torch.nn.Module,
    *,
    source: Batches,
    target: Batches,
    ratio: float = 0.6,
    out_dir: str | os.PathLike,
    device: str = "cpu",
    test: Batches | None = None,
    **settings,
) -> FitResult:
    """Source training, the self-trained teacher, ADMP and its fine-tuning (and the baselines), each
    checkpointed in ``out_dir`` (a second call resumes). ``net`` (masked by :func:`attach_masks`, else
    masked here) ends as the ADMP student, hard masks on. ``source``: labelled ``(images, labels)``;
    ``target``: unlabelled images; ``test``: labelled target images, only to score. ``settings``: any
    other :class:`~edgesparse.frontends.admp.fitting.Config` field (epochs, batch_size, lr...)."""
    source_x, source_y = _tensors(source, True, "source")
    (target_x,) = _tensors(target, False, "target")
    test_x, test_y = _tensors(test, True, "test") if test is not None else (target_x[:0], source_y[:0])
    settings = {"size": source_x.shape[-1], "source_limit": None, "target_limit": None} | settings
    config = Config("source", "target", ratio=ratio, **settings)
    data = Data(source_x.float(), source_y.long(), target_x.float(), test_x.float(), test_y.long())
    experiment = Experiment(config, Path(out_dir), net=net, data=data, device=device)
    metrics = experiment.run()
    if not len(test_x):
        metrics.pop("target_acc")
    student = experiment.models["admp"]
    net.load_state_dict(student.state_dict())
    for name, mask in mask_groups(net).items():
        mask.round_to = mask_groups(student)[name].round_to
    set_mode(net, "hard")
    net.eval()
    return FitResult(metrics, experiment.models)


def export(
    net: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> ir.Model:
    """Writes ``net`` (eval mode, BatchNorm folded) to ONNX with each hard mask a ``Mul`` by a 0/1
    constant after its conv, for ``--passes default,strip-channels``; returns the onnx-ir model."""
    mask_groups(net)  # masked at all
    model = export_model(net, example_inputs, masked=True, input_names=input_names, output_names=output_names)
    ir.save(model, path)
    return model
