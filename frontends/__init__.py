"""Frontends: ONNX files and PyTorch modules in, onnx-ir models (shapes inferred) out."""

from edgesparse.frontends.onnx_frontend import load_onnx, set_input_shapes

__all__ = ["load_onnx", "set_input_shapes"]
