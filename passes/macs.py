"""Multiply-accumulate and parameter counts over an ONNX graph (an analysis; it changes nothing).

Needs inferred shapes. Counted ops, per batch element included (N is part of the output shape):
- Conv (and edgesparse::GatedConv, dense): every output element takes (C_in / group) * prod(kernel) MACs; this covers
  depthwise (group == C_in, one input channel per output) and grouped convs.
- ConvTranspose: every *input* element is scattered to (C_out / group) * prod(kernel) outputs.
- Gemm / MatMul: prod(output shape) * K, with batch dims of MatMul broadcast into the output shape.
Other ops count 0 (elementwise work is not multiply-accumulate work).
"""

from __future__ import annotations

import dataclasses
import math

import onnx_ir as ir

from edgesparse.passes.cleanup import FoldConstantsPass, shape_inference_pass
from edgesparse.passes.errors import PassError
from edgesparse.passes.gated_conv_op import is_gated_conv


@dataclasses.dataclass(frozen=True)
class NodeMacs:
    name: str
    op_type: str
    macs: int


def _static_shape(value: ir.Value, node: ir.Node) -> tuple[int, ...]:
    shape = value.shape
    if shape is None or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
        raise UnknownShapeError(
            f"cannot count MACs of {node.op_type} node {node.name!r}: shape of {value.name!r} is unknown ({shape})"
        )
    return tuple(shape)


def node_macs(node: ir.Node) -> int:
    """Dense MACs; a GatedConv counts as its Conv (its effective MACs depend on the input)."""
    if is_gated_conv(node) or node.op_type == "Conv" and node.domain in ("", "ai.onnx"):
        weight = _static_shape(node.inputs[1], node)  # [C_out, C_in/group, k...]
        out = _static_shape(node.outputs[0], node)
        return math.prod(out) * math.prod(weight[1:])
    if node.domain not in ("", "ai.onnx"):
        return 0
    if node.op_type == "ConvTranspose":
        weight = _static_shape(node.inputs[1], node)  # [C_in, C_out/group, k...]
        inp = _static_shape(node.inputs[0], node)
        return math.prod(inp) * math.prod(weight[1:])
    if node.op_type == "Gemm":
        a = _static_shape(node.inputs[0], node)
        out = _static_shape(node.outputs[0], node)
        trans_a = node.attributes.get_int("transA", 0)
        return math.prod(out) * (a[0] if trans_a else a[1])
    if node.op_type == "MatMul":
        a = _static_shape(node.inputs[0], node)
        out = _static_shape(node.outputs[0], node)
        return math.prod(out) * a[-1]
    return 0


class UnknownShapeError(PassError):
    pass


def count_macs(model: ir.Model) -> list[NodeMacs]:
    """Per-node MACs, in graph order, for every node of the main graph.

    Shapes that only constant folding can reveal (a Reshape fed by Shape->Slice->Concat, as many
    exporters write) are found on a folded copy; ``model`` itself is never changed.
    """
    try:
        return _count_macs(model)
    except UnknownShapeError:
        folded = shape_inference_pass()(FoldConstantsPass()(model.clone()).model).model
        return _count_macs(folded)


def _count_macs(model: ir.Model) -> list[NodeMacs]:
    return [
        NodeMacs(node.name or f"{node.op_type}_{index}", node.op_type, node_macs(node))
        for index, node in enumerate(model.graph)
    ]


def total_macs(model: ir.Model) -> int:
    return sum(entry.macs for entry in count_macs(model))


def count_params(model: ir.Model) -> int:
    """Elements of the floating-point weight tensors (initializers, or Constant nodes as some exporters
    store weights); scalars such as Clip bounds and integer shape constants are not parameters."""
    tensors = [value.const_value for value in model.graph.initializers.values()]
    tensors += [
        node.attributes["value"].as_tensor()
        for node in model.graph
        if node.op_type == "Constant" and "value" in node.attributes
    ]
    return sum(
        math.prod(tensor.shape)
        for tensor in tensors
        if tensor is not None and len(tensor.shape) > 0 and tensor.dtype.is_floating_point()
    )
