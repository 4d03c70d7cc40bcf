"""ONNX files (or bytes) in, an onnx-ir model with inferred shapes out.

Models older than opset 13 are upgraded with onnx's version converter, so that every pass can rely on
opset >= 13 semantics (e.g. Split/Squeeze/ReduceSum take their axes as inputs).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx.version_converter
import onnx_ir as ir
from google.protobuf.message import DecodeError

from edgesparse.frontends.errors import FrontendError
from edgesparse.passes.cleanup import shape_inference_pass

MIN_OPSET = 13


def load_onnx(path: str | os.PathLike) -> ir.Model:
    """Reads an ``.onnx`` file; a missing file or one that is not ONNX raises :class:`FrontendError`."""
    path = Path(path)
    if not path.is_file():
        raise FrontendError(f"{path}: no such file")
    return onnx_bytes_to_ir(path.read_bytes(), source=str(path))


def onnx_bytes_to_ir(data: bytes, *, source: str = "<bytes>") -> ir.Model:
    """Parses a serialized ModelProto, upgrades old opsets and infers shapes."""
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise FrontendError(f"{source}: not an ONNX model ({exc})") from None
    # Protobuf happily parses many non-ONNX byte strings into an empty message: a model has a graph.
    if not proto.graph.node or proto.ir_version == 0:
        raise FrontendError(f"{source}: not an ONNX model (no graph nodes or no ir_version)")
    return proto_to_ir(proto, source=source)


def proto_to_ir(proto: onnx.ModelProto, *, source: str = "<model>") -> ir.Model:
    opset = default_opset(proto)
    if opset < MIN_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, MIN_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors from C++
            raise FrontendError(f"{source}: cannot upgrade opset {opset} to {MIN_OPSET}: {exc}") from None
    model = ir.serde.deserialize_model(proto)
    return infer_shapes(model)


def default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def infer_shapes(model: ir.Model) -> ir.Model:
    return shape_inference_pass()(model).model


def set_input_shapes(model: ir.Model, shapes: dict[str, list[int]]) -> ir.Model:
    """Fixes symbolic input dims (e.g. a dynamic batch) to concrete ones, then re-infers shapes in place."""
    inputs = {value.name: value for value in model.graph.inputs}
    for name, dims in shapes.items():
        if name not in inputs:
            raise FrontendError(
                f"--input-shape {name}: the model has no input of that name (inputs: {', '.join(inputs)})"
            )
        old = inputs[name].shape
        if old is not None and len(old) != len(dims):
            raise FrontendError(f"--input-shape {name}: rank {len(dims)} given, the model's input has rank {len(old)}")
        inputs[name].shape = ir.Shape(dims)
    # Shape inference keeps shapes already recorded on values: forget the ones derived from the old dims.
    for node in model.graph:
        for output in node.outputs:
            output.shape = None
    return infer_shapes(model)
