"""ONNX Runtime as the numeric reference: every compiled result is compared against it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from edgesparse.passes.errors import PassError


def to_proto(model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)


def run_onnxruntime(model: ir.Model | onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs ``model`` on the CPU provider, with graph optimizations off so that it is a faithful reference."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def input_specs(model: ir.Model) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(name, static shape, numpy dtype) of each graph input; a symbolic dim is a user error here."""
    specs = []
    for value in model.graph.inputs:
        shape = value.shape
        if shape is None or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
            raise PassError(
                f"input {value.name!r} has a symbolic shape {shape}; fix it with --input-shape {value.name}=D0,D1,..."
            )
        specs.append((value.name, tuple(shape), value.dtype.numpy()))
    return specs


def random_inputs(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float inputs (small non-negative integers for integer inputs), one per graph input."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape, dtype in input_specs(model):
        if np.issubdtype(dtype, np.floating):
            inputs[name] = rng.standard_normal(shape).astype(dtype)
        else:
            inputs[name] = rng.integers(0, 4, size=shape).astype(dtype)
    return inputs


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max(|e|) (scale-free, and stable where single elements of ``expected`` are ~0)."""
    scale = float(np.max(np.abs(expected))) or 1.0
    return float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale
