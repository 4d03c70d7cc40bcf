"""Test-set figures of an exported FeatReg model, run the way it deploys: through the ``featreg`` pass.

Each photo is degraded (:class:`~edgesparse.frontends.featreg.experiments.data.Degradation`; the noise
seeded by the photo's index, so every run sees the same noisy photos), the ONNX model gets that photo's
input shape and goes through ``default,featreg`` at the level (its thresholds from the metadata; the photo
itself is the calibration sample, so the pass measures each gated conv's input sparsity on it); ONNX
Runtime then runs the rewritten model (GatedConv as its function body). MACs come from the pass's report,
per photo; figures are averaged over photos. Builds and timings of the same model with TVM belong to the
tools (``tools/train_featreg.py``), which may use the backends.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import torch

from edgesparse.frontends.errors import FrontendError
from edgesparse.frontends.featreg.experiments.data import Degradation, bicubic_resize, to_tensor
from edgesparse.frontends.featreg.experiments.metrics import psnr_y, ssim_y, to_uint8
from edgesparse.frontends.featreg.export import TASK_METADATA_KEY
from edgesparse.frontends.onnx_frontend import set_input_shapes
from edgesparse.passes.featreg import LEVELS_METADATA_KEY
from edgesparse.passes.macs import count_macs
from edgesparse.passes.onnxruntime_ref import run_onnxruntime
from edgesparse.passes.pipeline import run_pipeline
from edgesparse.passes.report import GatedLayers, read


def model_levels(model: ir.Model) -> list[float]:
    return sorted(float(level) for level in json.loads(model.metadata_props.get(LEVELS_METADATA_KEY, "{}")))


def model_task(model: ir.Model) -> dict:
    return json.loads(model.metadata_props.get(TASK_METADATA_KEY, "{}"))


def check_level(model: ir.Model, level: float | None) -> None:
    levels = model_levels(model)
    if level is not None and not any(np.isclose(level, known) for known in levels):
        raise FrontendError(
            f"level {level} is not among the model's levels ({', '.join(map(str, levels)) or 'none: a dense model'})"
        )


class TestPair:
    """One test photo: the clean target, the model's input and the baseline (bicubic upscale or noisy)."""

    def __init__(self, photo: np.ndarray, degradation: Degradation, index: int):
        self.clean, source = degradation.prepare(photo)
        self.input = degradation.add_noise(to_tensor(source), torch.Generator().manual_seed(index)).numpy()
        self.baseline = (
            bicubic_resize(source, *self.clean.shape[:2]) if degradation.task == "sr" else to_uint8(self.input[0])
        )
        self.border = degradation.scale_factor if degradation.task == "sr" else 0

    def score(self, image: np.ndarray) -> dict[str, float]:
        """PSNR/SSIM of a uint8 HWC image against the clean photo."""
        return {"psnr": psnr_y(image, self.clean, self.border), "ssim": ssim_y(image, self.clean, self.border)}


def with_input_shape(model: ir.Model, inputs: np.ndarray) -> ir.Model:
    return set_input_shapes(model.clone(), {model.graph.inputs[0].name: list(inputs.shape)})


def featreg_options(level: float | None, calibration: list[dict[str, np.ndarray]] | None = None) -> dict:
    # min_sparsity 0: every gated conv takes the gated kernel, as the MAC figures assume.
    return {"featreg": {"sparsity": level, "min_sparsity": 0.0, **({"calibrate": calibration} if calibration else {})}}


def run_featreg(model: ir.Model, inputs: np.ndarray, level: float | None) -> tuple[np.ndarray, GatedLayers, int]:
    """(output, the pass's per-layer report, the model's dense MACs) for one input through the pass."""
    shaped = with_input_shape(model, inputs)
    name = shaped.graph.inputs[0].name
    optimized = run_pipeline(shaped, "default,featreg", pass_options=featreg_options(level, [{name: inputs}]))
    output = run_onnxruntime(optimized, {name: inputs})[optimized.graph.outputs[0].name]
    return output, read(optimized, GatedLayers), sum(entry.macs for entry in count_macs(optimized))


def evaluate_onnx(
    model: ir.Model, photos: dict[str, np.ndarray], degradation: Degradation, level: float | None
) -> dict:
    """The eval JSON: model and baseline PSNR/SSIM, sparsity (mean and per gated conv), MACs per photo."""
    check_level(model, level)
    baseline_name = "bicubic" if degradation.task == "sr" else "noisy"
    scores = {"model": [], baseline_name: []}
    sparsity: dict[str, list[float]] = {}
    dense, effective = [], []
    for index, photo in enumerate(photos.values()):
        pair = TestPair(photo, degradation, index)
        output, layers, macs = run_featreg(model, pair.input, level)
        scores["model"].append(pair.score(to_uint8(output[0])))
        scores[baseline_name].append(pair.score(pair.baseline))
        for layer in layers.layers:
            sparsity.setdefault(layer.name, []).append(layer.input_sparsity)
        dense.append(macs)
        effective.append(layers.effective_macs(macs))
    mean = lambda values: float(np.mean(values))  # noqa: E731
    return {
        **{
            key: {metric: mean([entry[metric] for entry in entries]) for metric in ("psnr", "ssim")}
            for key, entries in scores.items()
        },
        "sparsity": {
            "mean": mean([value for values in sparsity.values() for value in values]),
            "layers": {name: mean(values) for name, values in sparsity.items()},
        },
        "macs_dense": mean(dense),
        "macs_effective": mean(effective),
        "level": level,
        "images": list(photos),
    }
