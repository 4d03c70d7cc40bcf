"""One FeatReg experiment, as ``tools/train_featreg.py`` runs it: build the net (a built-in one, or the user's
gated by ``attach_gates``), train it for its levels on the packaged photos or a photo directory (resumable;
on a GPU; data-parallel under torchrun), calibrate and check each exported level on held-out patches,
export ``model.onnx``, and score every level on the test photos through the ``featreg`` pass.

Compiling and timing the exported model belong to the backends: the caller passes them in as
``device_check`` (the tool does), so this package never imports a backend.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from PIL import Image
from torch import nn

from edgesparse.frontends import distributed
from edgesparse.frontends.calibration import center_crop, image_files
from edgesparse.frontends.errors import FrontendError
from edgesparse.frontends.featreg.attach import attach_gates
from edgesparse.frontends.featreg.controller import SparsityController
from edgesparse.frontends.featreg.experiments.data import (
    HELD_OUT_EVERY,
    Degradation,
    PatchSampler,
    load_photo,
    test_photos,
    training_photos,
)
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
    # The user's net instead of the built-in one: a class or function ("file.py:Name", "package.module:Name")
    # called with ``model_args``, its dense weights (a state dict file) loaded before it is gated.
    model: str | None = None
    model_args: dict = dataclasses.field(default_factory=dict)
    weights: Path | None = None
    # Photo directories instead of the packaged photos (training: every 8th held out to calibrate).
    images: Path | None = None
    test_images: Path | None = None
    device: str = "cpu"

    @property
    def degradation(self) -> Degradation:
        return Degradation(self.task, self.scale, self.sigma)

    @property
    def task_metadata(self) -> dict:
        return {"task": "sr", "scale": self.scale} if self.task == "sr" else {"task": "denoise", "sigma": self.sigma}


def load_model_factory(spec: str) -> Callable[..., nn.Module]:
    """``path/to/file.py:Name`` or ``package.module:Name`` -> that class or function."""
    location, _, name = spec.rpartition(":")
    if not location or not name:
        raise FrontendError(f"--model {spec!r}: expected FILE.py:NAME or PACKAGE.MODULE:NAME")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise FrontendError(f"--model {spec!r}: no such file {location}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise FrontendError(f"--model {spec!r}: cannot import {location} ({error})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise FrontendError(f"--model {spec!r}: {location} has no class or function {name}")
    return factory


def build_model(experiment: Experiment, example: torch.Tensor) -> tuple[nn.Module, str | None]:
    """The experiment's gated net, and (a user's net) the gate report."""
    if experiment.model is None:
        return build_net(
            experiment.task,
            scale=experiment.scale,
            width=experiment.width,
            blocks=experiment.blocks,
            depth=experiment.depth,
            image_skip=experiment.image_skip,
        ), None
    try:
        model = load_model_factory(experiment.model)(**experiment.model_args)
    except TypeError as error:
        raise FrontendError(f"--model {experiment.model} with --model-args {experiment.model_args}: {error}") from None
    if not isinstance(model, nn.Module):
        raise FrontendError(f"--model {experiment.model} made a {type(model).__name__}, not a torch.nn.Module")
    if experiment.weights is not None:
        state = torch.load(experiment.weights, map_location="cpu", weights_only=False)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return model, str(attach_gates(model, example))


def directory_photos(directory: Path) -> list[np.ndarray]:
    if not directory.is_dir():
        raise FrontendError(f"{directory}: no such directory")
    files = image_files(directory)
    if not files:
        raise FrontendError(f"{directory}: no PNG or JPEG photo in it")
    return [load_photo(path) for path in files]


def photo_sets(experiment: Experiment) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, np.ndarray]]:
    """(training, calibration, test) photos: --images / --test-images, or the packaged ones."""
    if experiment.images is not None:
        photos = directory_photos(experiment.images)
        if len(photos) < 2:
            raise FrontendError(f"--images {experiment.images}: at least 2 photos (one is held out to calibrate)")
        training = [photo for index, photo in enumerate(photos) if index % HELD_OUT_EVERY]
        calibration = [photo for index, photo in enumerate(photos) if index % HELD_OUT_EVERY == 0]
    else:
        training, calibration = training_photos()
    if experiment.test_images is not None:
        files = image_files(experiment.test_images) if experiment.test_images.is_dir() else []
        test = {path.stem: load_photo(path, max_side=None) for path in files}
        if not test:
            raise FrontendError(f"--test-images {experiment.test_images}: no such directory or no photo in it")
    else:
        test = test_photos()
    return training, calibration, test


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
    distributed.init_from_env(experiment.device)
    photos, calibration_photos, test = photo_sets(experiment)
    out_dir = experiment.output
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = experiment.train.seed

    torch.manual_seed(seed)
    low_patch = experiment.patch // degradation.scale_factor
    example = torch.rand(1, 3, low_patch, low_patch)
    model, gate_report = build_model(experiment, example)
    if gate_report is not None and distributed.is_main():
        print(gate_report)
    controller = SparsityController(gates_in_call_order(model, example), experiment.levels)
    if experiment.init is not None:
        load_initial_weights(model, experiment.init)
    sampler = PatchSampler(photos, degradation, experiment.patch, experiment.batch, seed)
    log = train(model, controller, sampler, experiment.train, out_dir, device=experiment.device)
    model.cpu()  # calibration, export and evaluation run on the CPU
    if not distributed.is_main():
        return {}
    # The exported levels are each calibrated below (training's running thresholds are not kept).
    controller = controller.with_levels(experiment.export_levels or experiment.levels)

    calibration, _ = held_out_batch(calibration_photos, degradation, experiment.patch, seed + 1)
    check, _ = held_out_batch(calibration_photos, degradation, experiment.patch, seed + 2)
    metrics = {**(extra_metrics or {}), "task": experiment.task_metadata, "training_log_tail": log[-10:]}
    if gate_report is not None:
        metrics["gates"] = gate_report.splitlines()
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
