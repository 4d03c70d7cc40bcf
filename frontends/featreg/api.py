"""FeatReg on any net in three calls: ``attach_gates``, ``fit``, ``export``.

    from edgesparse.frontends import featreg
    report = featreg.attach_gates(net, example_inputs)     # in place; what was gated and what not, and why
    featreg.fit(net, batches, levels=(0.6, 0.8, 0.9, 0.95), loss=torch.nn.L1Loss(), steps=20000,
                out_dir="runs/x", device="cpu")            # batches: any iterable of (input, target)
    featreg.export(net, example_inputs, "model.onnx", calibration=held_out_batches)

``fit`` is :func:`~edgesparse.frontends.featreg.multilevel.train` (multi-level training, the controller, the
FeatReg penalty, resumable checkpoints in ``out_dir``, data-parallel under ``torchrun``); ``export`` fixes each
level's thresholds on the held-out batches and writes the ONNX model with every level in its metadata
(:func:`~edgesparse.frontends.featreg.export.export_onnx`), the form the ``featreg`` pass reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from edgesparse.frontends import distributed
from edgesparse.frontends.errors import FrontendError
from edgesparse.frontends.featreg.controller import SparsityController
from edgesparse.frontends.featreg.export import export_onnx, save_onnx
from edgesparse.frontends.featreg.gate import ThresholdGate, gates_in_call_order
from edgesparse.frontends.featreg.multilevel import BatchSource, IterableSource, TrainConfig, train

DEFAULT_LEVELS = (0.6, 0.8, 0.9, 0.95)
# The levels fit trained, kept on the net for export (not in its state dict).
LEVELS_ATTRIBUTE = "featreg_levels"


def _first_input(example_inputs) -> torch.Tensor:
    return example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs


def controller_for(net: nn.Module, example_inputs, levels: Sequence[float]) -> SparsityController:
    """The sparsity controller of a gated net's gates (call order) for ``levels``."""
    if not any(isinstance(module, ThresholdGate) for module in net.modules()):
        raise FrontendError(f"{type(net).__name__} has no gates: call featreg.attach_gates(net, example_inputs) first")
    parameter = next(net.parameters(), None)
    example = _first_input(example_inputs)[:1]
    if parameter is not None:
        example = example.to(parameter.device)
    was_training = net.training
    gates = gates_in_call_order(net.eval(), example)
    net.train(was_training)
    return SparsityController(gates, list(levels))


def fit(
    net: nn.Module,
    batches: Iterable | BatchSource,
    levels: Sequence[float] = DEFAULT_LEVELS,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    steps: int = 20000,
    out_dir: str | os.PathLike = "runs/featreg",
    device: str = "cpu",
    *,
    lr: float = 5e-4,
    reg_weight: float = 0.01,
    reg_kind: str = "hoyer",
    checkpoint_every: int = 200,
    seed: int = 0,
    freeze_batchnorm: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Trains the gated ``net`` in place for ``levels`` (empty: the dense baseline, no penalty) on ``batches``
    (an iterable of ``(input, target)``, re-iterated as needed, or a :class:`BatchSource`); resumes from
    ``out_dir``'s checkpoint. Under ``torchrun`` each batch is the global batch, split across the processes.
    Returns the training log."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FrontendError(f"device {device!r}: no CUDA device is available here")
    distributed.init_from_env(device)
    source = batches if isinstance(batches, BatchSource) else IterableSource(batches)
    state = source.state_dict()
    example = source.sample()[0]  # the gates' call order is found on one input
    source.load_state_dict(state)
    net.to(distributed.local_device(device))
    controller = controller_for(net, example, levels)
    config = TrainConfig(
        steps=steps,
        lr=lr,
        reg_weight=reg_weight if levels else 0.0,
        reg_kind=reg_kind,
        checkpoint_every=checkpoint_every,
        seed=seed,
        freeze_batchnorm=freeze_batchnorm,
    )
    log = train(net, controller, source, config, Path(out_dir), progress=progress, loss=loss, device=device)
    setattr(net, LEVELS_ATTRIBUTE, sorted(levels))
    return log


def _calibration_inputs(calibration) -> torch.Tensor:
    if isinstance(calibration, torch.Tensor):
        return calibration
    inputs = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in calibration]
    if not inputs:
        raise FrontendError("calibration: no held-out batch")
    return torch.cat(inputs)


def export(
    net: nn.Module,
    example_inputs,
    path: str | os.PathLike,
    calibration,
    levels: Sequence[float] | None = None,
    task: dict | None = None,
):
    """Fixes each level's thresholds on ``calibration`` (held-out inputs: a tensor, or an iterable of inputs
    or of ``(input, target)`` batches), writes the ONNX model to ``path`` (gates at the lowest level, every
    level in its metadata ``featreg.levels``; ``task`` as ``featreg.task``, e.g. ``{"task": "sr", "scale":
    2}`` for ``tools/eval_featreg.py``) and returns it (an onnx-ir model). ``levels``: those ``fit`` trained
    by default. Under ``torchrun`` rank 0 writes the file."""
    levels = list(levels if levels is not None else getattr(net, LEVELS_ATTRIBUTE, DEFAULT_LEVELS))
    controller = controller_for(net, example_inputs, levels)
    inputs = _calibration_inputs(calibration)
    parameter = next(net.parameters(), None)
    if parameter is not None:
        inputs = inputs.to(parameter.device)
    net.eval()
    for level in controller.levels:
        controller.calibrate(net, inputs, level)
    model = export_onnx(net, controller, task, example=_first_input(example_inputs))
    if distributed.is_main():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_onnx(model, path)
    distributed.barrier()
    return model


def set_level(net: nn.Module, example_inputs, calibration, level: float) -> None:
    """Sets the net's gates to ``level``'s thresholds calibrated on ``calibration`` (what ``export`` writes
    for that level): to run the PyTorch net at a level."""
    controller = controller_for(net, example_inputs, [level])
    net.eval()
    inputs = _calibration_inputs(calibration)
    parameter = next(net.parameters(), None)
    controller.calibrate(net, inputs.to(parameter.device) if parameter is not None else inputs, level)
