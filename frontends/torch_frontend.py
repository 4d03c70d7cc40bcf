"""A ``torch.nn.Module`` plus example inputs in, an onnx-ir model out (through ONNX export).

The TorchScript exporter (``dynamo=False``) is used: in eval mode it already folds BatchNormalization
into Conv, needs no onnxscript at export time, and names inputs/outputs as asked.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import onnx_ir as ir
import torch

from edgesparse.frontends.onnx_frontend import onnx_bytes_to_ir

EXPORT_OPSET = 17


def from_torch(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int = EXPORT_OPSET,
) -> ir.Model:
    """Exports ``module`` (put in eval mode) at the shapes of ``example_inputs``."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    input_names = list(
        input_names or (["input"] if len(example_inputs) == 1 else [f"input{i}" for i in range(len(example_inputs))])
    )
    module = module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter announces its own deprecation on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            example_inputs,
            buffer,
            dynamo=False,
            input_names=input_names,
            output_names=list(output_names) if output_names else None,
            opset_version=opset,
        )
    return onnx_bytes_to_ir(buffer.getvalue(), source=type(module).__name__)
