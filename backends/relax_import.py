"""ONNX (onnx-ir) -> Relax: TVM's ONNX importer, taught this project's ops.

TVM's importer has no hook for custom ops, so a subclass converts ``edgesparse::GatedConv`` itself:
into a ``call_tir`` of the gated sparse kernel (backends/gated_conv.py) where the kernel supports the
conv, and into the dense equivalent (where + conv2d) elsewhere. Everything else is TVM's own import.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx_ir as ir
import tvm
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter, _get_convert_map

from edgesparse.backends.onnxruntime_ref import input_specs, to_proto
from edgesparse.passes.errors import EdgesparseError
from edgesparse.passes.gated_conv_op import OP_TYPE, is_gated_conv


def check_supported_ops(model: ir.Model) -> None:
    """Names the first node that neither TVM's importer nor this project can convert."""
    supported = _get_convert_map()
    for node in model.graph:
        if is_gated_conv(node):
            continue
        if node.domain not in ("", "ai.onnx") or (node.op_type not in supported and node.op_type != "Constant"):
            domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
            raise EdgesparseError(f"unsupported op {domain}{node.op_type} in node {node.name!r}: TVM's ONNX importer has no converter for it")


def constant_array(expr: relax.Expr, what: str) -> np.ndarray:
    if not isinstance(expr, tvm.ir.GenericConst):
        raise EdgesparseError(f"{OP_TYPE}: its {what} must be a constant")
    return expr.value.numpy()


def dense_gated_conv(bb: relax.BlockBuilder, x: relax.Expr, weight: np.ndarray, bias: np.ndarray, attrs: dict) -> relax.Expr:
    """Conv(Where(x > t, x, 0)) with Relax's dense conv2d: the reference lowering, and the fallback."""
    threshold = relax.const(np.float32(attrs["threshold"]))
    gated = bb.emit(relax.op.where(relax.op.greater(x, threshold), x, relax.const(np.float32(0.0))))
    conv = bb.emit(
        relax.op.nn.conv2d(
            gated,
            relax.const(weight),
            strides=attrs["strides"],
            padding=attrs["pads"],
            dilation=attrs["dilations"],
            groups=attrs["group"],
        )
    )
    return relax.op.add(conv, relax.const(bias.reshape(1, -1, 1, 1)))


class EdgesparseImporter(ONNXGraphImporter):
    def __init__(self, shape_dict, dtype_dict, target: tvm.target.Target):
        super().__init__(shape_dict, dtype_dict)
        self.target = target

    def _check_for_unsupported_ops(self, graph):
        # check_supported_ops() already ran on the onnx-ir model, naming the offending node.
        pass

    def _convert_operator(self, op_name, inputs, attrs, opset):
        if op_name != OP_TYPE:
            return super()._convert_operator(op_name, inputs, attrs, opset)
        attrs = {name: attrs[name] for name in ("threshold", "strides", "pads", "dilations", "group")}
        weight, bias = constant_array(inputs[1], "weight"), constant_array(inputs[2], "bias")
        return self.bb.normalize(dense_gated_conv(self.bb, inputs[0], weight, bias, attrs))


def import_to_relax(model: ir.Model, target: tvm.target.Target) -> tvm.IRModule:
    check_supported_ops(model)
    specs = input_specs(model)
    proto = to_proto(model)
    importer = EdgesparseImporter(
        {name: list(shape) for name, shape, _ in specs},
        {name: str(dtype) for name, _, dtype in specs},
        target,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importer.from_onnx(proto.graph, model.opset_imports[""])
