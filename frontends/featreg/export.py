"""A trained FeatReg net to ONNX in the gate form the ``featreg`` pass reads, every level in its metadata.

The gates export as ``Where(Greater(x, t), x, 0)`` at the lowest level's thresholds (the model runs at that
level as it is); metadata ``featreg.levels`` maps each level to {ONNX gate node name: threshold} and
``featreg.task`` records the task (``{"task": "sr", "scale": 2}`` or ``{"task": "denoise", "sigma": 25}``).
Height and width are symbolic: fix them (``set_input_shapes``, ``--input-shape``) to compile with TVM.
The exporter keeps the net's parameter names as initializer names, so :func:`load_onnx_weights` reads a
committed model back into its net (further training) where no BatchNorm was folded away.
"""

from __future__ import annotations

import io
import json
import os
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx import numpy_helper
from torch import nn

from edgesparse.frontends.errors import FrontendError
from edgesparse.frontends.featreg.controller import SparsityController
from edgesparse.frontends.onnx_frontend import onnx_bytes_to_ir
from edgesparse.frontends.torch_frontend import EXPORT_OPSET
from edgesparse.passes.featreg import LEVELS_METADATA_KEY, gated_convs
from edgesparse.passes.pipeline import run_pipeline

TASK_METADATA_KEY = "featreg.task"


def export_onnx(
    model: nn.Module,
    controller: SparsityController,
    task: dict | None,
    channels: int = 3,
    example: torch.Tensor | None = None,
) -> ir.Model:
    """``example``: an input (default: a random 1 x ``channels`` x 32 x 32 image); height and width are
    exported symbolic either way."""
    model = model.eval()
    if controller.levels:
        controller.apply(controller.levels[0])
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = (torch.rand(1, channels, 32, 32) if example is None else example[:1]).to(device)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's, on every call
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=EXPORT_OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {2: "height", 3: "width"}, "output": {2: "out_height", 3: "out_width"}},
        )
    # The clean-up pipeline lifts the exporter's Constant nodes (thresholds among them) to initializers,
    # where the pass's gate matching looks for them.
    exported = run_pipeline(onnx_bytes_to_ir(buffer.getvalue(), source=type(model).__name__))
    # One gate may feed several convs: each gate once, in graph order, which is call order as the
    # controller's is: pair them and check the pairing.
    position = {node: index for index, node in enumerate(exported.graph)}
    # (A ReLU left in front of a conv the net did not gate is a gate to the pass, not one of the net's.)
    unique = {gate.node: gate for _, gate in gated_convs(exported.graph) if gate.node.op_type == "Where"}
    onnx_gates = sorted(unique.values(), key=lambda gate: position[gate.node])
    torch_thresholds = [float(gate.threshold) for gate in controller.gates]
    if len(onnx_gates) != len(controller.gates) or not np.allclose(
        [gate.threshold for gate in onnx_gates], torch_thresholds, atol=1e-6
    ):
        raise RuntimeError(
            f"the exported graph's {len(onnx_gates)} gates do not pair with the net's {len(controller.gates)}"
        )
    levels = {
        str(level): {gate.name: float(t) for gate, t in zip(onnx_gates, controller.thresholds[level].tolist())}
        for level in controller.levels
    }
    exported.metadata_props[LEVELS_METADATA_KEY] = json.dumps(levels)
    if task is not None:
        exported.metadata_props[TASK_METADATA_KEY] = json.dumps(task)
    return exported


def load_onnx_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Loads into ``model`` the parameters and buffers of the same net exported to ONNX at ``path``."""
    initializers = {tensor.name: tensor for tensor in onnx.load(path).graph.initializer}
    expected = model.state_dict()
    missing = [name for name in expected if name not in initializers]
    if missing:
        raise FrontendError(
            f"{path}: no initializer for the net's {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
            "(not exported from this net, or BatchNorm folded into its convs)"
        )
    state = {name: torch.from_numpy(numpy_helper.to_array(initializers[name]).copy()) for name in expected}
    wrong = [name for name in expected if state[name].shape != expected[name].shape]
    if wrong:
        raise FrontendError(
            f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the net's is "
            f"{tuple(expected[wrong[0]].shape)} (other --width/--blocks?)"
        )
    model.load_state_dict(state)


def save_onnx(model: ir.Model, path: str | os.PathLike) -> None:
    onnx.save(ir.serde.serialize_model(model), path)
