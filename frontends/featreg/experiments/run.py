"""One FeatReg experiment, as ``tools/train_featreg.py`` runs it: build the net, train it for its levels on
the packaged photos (resumable), calibrate and check each exported level on held-out patches, export
``model.onnx``, and score every level on the test photos through the ``featreg`` pass.

Compiling and timing the exported model belong to the backends: the caller passes them in as
``device_check`` (the tool does), so this package never imports a backend.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from PIL import Image
from torch import nn

from edgesparse.frontends.calibration import center_crop
from edgesparse.frontends.errors import FrontendError
from edgesparse.frontends.featreg.controller import SparsityController
from edgesparse.frontends.featreg.experiments.data import Degradation, PatchSampler, test_photos, training_photos
from edgesparse.frontends.featreg.experiments.evaluate import TestPair, evaluate_onnx
from edgesparse.frontends.featreg.export import export_onnx, load_onnx_weights, save_onnx
from edgesparse.frontends.featreg.gate import gates_in_call_order
from edgesparse.frontends.featreg.multilevel import CHECKPOINT, TrainConfig, train
from edgesparse.frontends.featreg.nets import build_net

HELD_OUT_PATCHES = 64
# The device check's input: the first test photo's centre, this many output pixels a side.
DEVICE_CHECK_SIDE = 256

# (net, controller, exported model, a test photo) -> figures for metrics.json["tvm"]
DeviceCheck = Callable[[nn.Module, SparsityController, ir.Model, TestPair], dict]


@dataclasses.dataclass
class Experiment:
    """What one run trains: the task, the net's shape, the levels, the training settings."""

    task: str
    output: Path
    scale: int = 2
    sigma: float = 25.0
    # Empty: the dense baseline (ReLU gates, no penalty).
    levels: list[float] = dataclasses.field(default_factory=list)
    # The levels calibrated, checked and exported (default: ``levels``).
    export_levels: list[float] | None = None
    width: int = 32
    blocks: int = 4
    depth: int = 10
    image_skip: bool = True
    patch: int = 48
    batch: int = 16
    init: Path | None = None
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    @property
    def degradation(self) -> Degradation:
        return Degradation(self.task, self.scale, self.sigma)

    @property
    def task_metadata(self) -> dict:
        return {"task": "sr", "scale": self.scale} if self.task == "sr" else {"task": "denoise", "sigma": self.sigma}


def load_initial_weights(model: nn.Module, init: Path) -> None:
    if init.suffix == ".onnx" and init.is_file():
        load_onnx_weights(model, init)
    elif (init / CHECKPOINT).is_file():
        model.load_state_dict(torch.load(init / CHECKPOINT, weights_only=False)["model"])
    else:
        raise FrontendError(f"--init {init}: neither a run directory with a {CHECKPOINT} nor an .onnx file")


def held_out_batch(photos, degradation: Degradation, patch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return PatchSampler(photos, degradation, patch, HELD_OUT_PATCHES, seed).sample()


def controller_check(model, controller: SparsityController, calibration: torch.Tensor, check: torch.Tensor) -> dict:
    """Each level's thresholds fixed on one held-out batch, the sparsity they give measured on another."""
    figures = {}
    for level in controller.levels:
        controller.calibrate(model, calibration, level)
        layers = controller.measure(model, check, level)
        figures[str(level)] = {"target": level, "measured": float(np.mean(list(layers.values()))), "layers": layers}
    return figures


def run(experiment: Experiment, device_check: DeviceCheck | None = None, extra_metrics: dict | None = None) -> dict:
    """Trains (resuming from ``experiment.output``), exports and evaluates; returns and writes metrics.json."""
    degradation = experiment.degradation
    photos, calibration_photos = training_photos()
    test = test_photos()
    out_dir = experiment.output
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = experiment.train.seed

    torch.manual_seed(seed)
    model = build_net(
        experiment.task,
        scale=experiment.scale,
        width=experiment.width,
        blocks=experiment.blocks,
        depth=experiment.depth,
        image_skip=experiment.image_skip,
    )
    low_patch = experiment.patch // degradation.scale_factor
    controller = SparsityController(
        gates_in_call_order(model, torch.rand(1, 3, low_patch, low_patch)), experiment.levels
    )
    if experiment.init is not None:
        load_initial_weights(model, experiment.init)
    sampler = PatchSampler(photos, degradation, experiment.patch, experiment.batch, seed)
    log = train(model, controller, sampler, experiment.train, out_dir)
    # The exported levels are each calibrated below (training's running thresholds are not kept).
    controller = controller.with_levels(experiment.export_levels or experiment.levels)

    calibration, _ = held_out_batch(calibration_photos, degradation, experiment.patch, seed + 1)
    check, _ = held_out_batch(calibration_photos, degradation, experiment.patch, seed + 2)
    metrics = {**(extra_metrics or {}), "task": experiment.task_metadata, "training_log_tail": log[-10:]}
    metrics["controller"] = controller_check(model, controller, calibration, check)
    onnx_model = export_onnx(model, controller, experiment.task_metadata)
    save_onnx(onnx_model, out_dir / "model.onnx")
    metrics["test"] = {
        str(level): evaluate_onnx(onnx_model, test, degradation, level) for level in controller.levels or [None]
    }
    if device_check is not None:
        first = next(iter(test.values()))
        crop = np.asarray(center_crop(Image.fromarray(first), DEVICE_CHECK_SIDE, DEVICE_CHECK_SIDE))
        metrics["tvm"] = device_check(model, controller, onnx_model, TestPair(crop, degradation, index=0))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
