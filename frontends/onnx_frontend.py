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
    return onnx_bytes_to_ir(path.read_bytes(), source=str(path), base_dir=path.parent)


def onnx_bytes_to_ir(data: bytes, *, source: str = "<bytes>", base_dir: str | os.PathLike | None = None) -> ir.Model:
    """Parses a serialized ModelProto, upgrades old opsets and infers shapes."""
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise FrontendError(f"{source}: not an ONNX model ({exc})") from None
    # Protobuf happily parses many non-ONNX byte strings into an empty message: a model has a graph.
    if not proto.graph.node or proto.ir_version == 0:
        raise FrontendError(f"{source}: not an ONNX model (no graph nodes or no ir_version)")
    if (problem := dangling_input(proto.graph)) is not None:
        raise FrontendError(f"{source}: {problem}")
    return proto_to_ir(proto, source=source, base_dir=base_dir)


def dangling_input(graph: onnx.GraphProto) -> str | None:
    """The first node input that no graph input, initializer or node defines (subgraphs are not read)."""
    defined = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    defined.update(name for node in graph.node for name in node.output)
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                return f"node {node.name!r} ({node.op_type}) reads {name!r}, which nothing in the model produces"
    for value in graph.output:
        if value.name not in defined:
            return f"graph output {value.name!r} is produced by no node"
    return None


def check_external_data(proto: onnx.ModelProto, base_dir: Path, source: str) -> None:
    """Every initializer stored outside the model file names a file that is there (beside the model)."""
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
        if not location or not (base_dir / location).is_file():
            raise FrontendError(
                f"{source}: initializer {tensor.name!r} keeps its data in {location or '(no file named)'}, which is "
                f"not in {base_dir}"
            )


def proto_to_ir(
    proto: onnx.ModelProto, *, source: str = "<model>", base_dir: str | os.PathLike | None = None
) -> ir.Model:
    """``base_dir``: where the model's external data files are (the model file's directory)."""
    check_external_data(proto, Path(base_dir if base_dir is not None else "."), source)
    opset = default_opset(proto)
    if opset < MIN_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, MIN_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors from C++
            raise FrontendError(f"{source}: cannot upgrade opset {opset} to {MIN_OPSET}: {exc}") from None
    model = ir.serde.deserialize_model(proto)
    if base_dir is not None:
        ir.external_data.set_base_dir(model.graph, base_dir)
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
    model = infer_shapes(model)
    if (problem := shape_problem(model.graph)) is not None:
        given = ", ".join(f"{name}={','.join(map(str, dims))}" for name, dims in shapes.items())
        raise FrontendError(f"--input-shape {given}: {problem}")
    return model


def shape_problem(graph: ir.Graph) -> str | None:
    """What ONNX shape inference lets through but no runtime accepts: a Conv whose input has other channels
    than its weights take, a value with a dim of zero or less (an output size the shapes make empty)."""
    for node in graph:
        if node.op_type == "Conv" and node.domain in ("", "ai.onnx") and len(node.inputs) > 1:
            x, weight = node.inputs[0], node.inputs[1]
            channels = x.shape[1] if x is not None and x.shape is not None and len(x.shape) > 1 else None
            group = node.attributes.get_int("group", 1)
            if isinstance(channels, int) and weight is not None and weight.shape is not None:
                expected = weight.shape[1] * group if isinstance(weight.shape[1], int) else None
                if expected is not None and channels != expected:
                    return f"node {node.name!r} (Conv) would get {channels} input channels, its weights take {expected}"
        for value in node.outputs:
            if value.shape is not None and any(isinstance(dim, int) and dim <= 0 for dim in value.shape):
                return f"node {node.name!r} ({node.op_type}) would output shape {list(value.shape)}"
    return None
