"""The ``edgesparse::GatedConv`` op: a FeatReg gate and the Conv that reads it, as one node.

    GatedConv(X, W, B; threshold, strides, pads, dilations, group) = Conv(Where(X > threshold, X, 0), W, B)

It is defined once, as an ONNX model-local function whose body is exactly that gate + Conv, so ONNX
Runtime (which inlines functions) runs a rewritten model unchanged, and the TVM backend lowers the
node to a kernel that does the multiply-adds of the active channels only.
Only 2-D convs; ``B`` is always present (zeros where the original Conv had none).
"""

from __future__ import annotations

import onnx_ir as ir

DOMAIN = "edgesparse"
OP_TYPE = "GatedConv"
OPSET_VERSION = 1
# name -> default; every GatedConv node sets all of them explicitly.
ATTRIBUTE_DEFAULTS = {"threshold": 0.0, "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1}


def is_gated_conv(node: ir.Node) -> bool:
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def gated_conv_function(opset: int) -> ir.Function:
    """The function body, with the Conv's attributes and the threshold referenced from the call site."""
    x, weight, bias = ir.Value(name="X"), ir.Value(name="W"), ir.Value(name="B")
    threshold = ir.node("Constant", [], {"value_float": ir.RefAttr("value_float", "threshold", ir.AttributeType.FLOAT)})
    zero = ir.node("Constant", [], {"value_float": 0.0})
    active = ir.node("Greater", [x, threshold.outputs[0]])
    gated = ir.node("Where", [active.outputs[0], x, zero.outputs[0]])
    conv_attributes = {
        name: ir.RefAttr(name, name, ir.AttributeType.INT if name == "group" else ir.AttributeType.INTS)
        for name in ("strides", "pads", "dilations", "group")
    }
    conv = ir.node("Conv", [gated.outputs[0], weight, bias], conv_attributes)
    conv.outputs[0].name = "Y"
    body = ir.Graph(
        [x, weight, bias],
        conv.outputs,
        nodes=[threshold, zero, active, gated, conv],
        opset_imports={"": opset},
        name=OP_TYPE,
    )
    defaults = [
        ir.AttrFloat32(name, value)
        if name == "threshold"
        else ir.AttrInt64(name, value)
        if name == "group"
        else ir.AttrInt64s(name, value)
        for name, value in ATTRIBUTE_DEFAULTS.items()
    ]
    return ir.Function(DOMAIN, OP_TYPE, graph=body, attributes=defaults)


def add_gated_conv_function(model: ir.Model) -> None:
    """Declares the op's domain and function on ``model`` (once)."""
    model.opset_imports.setdefault(DOMAIN, OPSET_VERSION)
    key = (DOMAIN, OP_TYPE, "")
    if key not in model.functions:
        model.functions[key] = gated_conv_function(model.opset_imports[""])
