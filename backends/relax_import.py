"""ONNX (onnx-ir) -> Relax: TVM's ONNX importer, taught this project's ops.

TVM's importer has no hook for custom ops, so a subclass converts ``edgesparse::GatedConv`` itself,
into a ``call_tir`` of the gated sparse kernel (backends/gated_conv.py) for the build's target, and
``Clip`` with constant bounds into Relax ops (see :func:`clip`). Everything else is TVM's own import.
A ``DepthToSpace`` (a super-resolution net's pixel shuffle) or a residual ``Add`` that alone reads a
GatedConv becomes part of the kernel where the kernel can write it (:func:`fusable_readers`): TVM would
otherwise read and write the conv's whole output once more only to shuffle it or add the skip.
"""

from __future__ import annotations

import collections
import contextlib
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import tvm
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter, _get_convert_map

from edgesparse.backends.errors import BackendError
from edgesparse.backends.gated_conv import (
    DepthToSpace,
    GatedConvSchedule,
    GatedConvShape,
    default_schedule,
    fuses_depth_to_space,
    gated_conv2d,
    has_output_phase,
    pack_weight,
    workload_key,
)
from edgesparse.passes.errors import EdgesparseError
from edgesparse.passes.gated_conv_op import OP_TYPE, is_gated_conv
from edgesparse.passes.onnxruntime_ref import input_specs, to_proto


def check_supported_ops(model: ir.Model) -> None:
    """Names the first node that neither TVM's importer nor this project can convert."""
    supported = _get_convert_map()
    for node in model.graph:
        if is_gated_conv(node):
            continue
        if node.domain not in ("", "ai.onnx") or (node.op_type not in supported and node.op_type != "Constant"):
            domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
            raise BackendError(
                f"unsupported op {domain}{node.op_type} in node {node.name!r}: TVM's ONNX importer has no "
                "converter for it"
            )


def constant_array(expr: relax.Expr, what: str) -> np.ndarray:
    if not isinstance(expr, tvm.ir.GenericConst):
        raise BackendError(f"{OP_TYPE}: its {what} must be a constant")
    return expr.value.numpy()


def gated_conv(
    bb: relax.BlockBuilder,
    x: relax.Expr,
    weight: np.ndarray,
    bias: np.ndarray,
    attrs: dict,
    target: tvm.target.Target,
    tuned_schedules: Mapping[str, GatedConvSchedule],
    depth_to_space: DepthToSpace | None = None,
    residual: relax.Expr | None = None,
) -> tuple[relax.Expr, bool]:
    """A ``call_tir`` of the gated sparse kernel, specialised to this conv's shapes and threshold, with
    the tuned schedule of its workload if there is one (else the target's default), and whether it
    writes ``depth_to_space``'s output, or the conv's plus ``residual``, instead of the conv's (where the
    kernel can)."""
    batch, channels, height, width = (int(dim) for dim in x.ty.shape.values)
    try:
        shape = GatedConvShape(
            batch,
            channels,
            weight.shape[0],
            height,
            width,
            kernel=tuple(weight.shape[2:]),
            stride=tuple(attrs["strides"]),
            pads=tuple(attrs["pads"]),
            dilation=tuple(attrs["dilations"]),
            group=attrs["group"],
        )
    except ValueError as exc:
        raise BackendError(f"{OP_TYPE}: {exc}") from None
    schedule = tuned_schedules.get(workload_key(shape, target)) or default_schedule(shape, target)
    if depth_to_space is not None and not fuses_depth_to_space(shape, target, depth_to_space):
        depth_to_space = None
    conv_shape = (batch, shape.out_channels, shape.out_height, shape.out_width)
    if residual is not None and not (
        has_output_phase(shape, target)
        and isinstance(residual.ty, relax.TensorType)
        and residual.ty.dtype == "float32"
        and residual.ty.shape is not None
        and [int(dim) if isinstance(dim, tvm.tirx.IntImm) else None for dim in residual.ty.shape.values]
        == list(conv_shape)
    ):
        residual = None
    function = gated_conv2d(
        shape, attrs["threshold"], schedule, target, depth_to_space=depth_to_space, residual=residual is not None
    )
    # Without its own symbol the kernel gets the unique name the builder gives it, one per conv.
    kernel = bb.add_func(function.without_attr("global_symbol"), "gated_conv")
    arguments = [x, relax.const(pack_weight(weight, shape, schedule)), relax.const(bias.astype(np.float32))]
    out_shape = depth_to_space.output_shape(shape) if depth_to_space is not None else conv_shape
    call = relax.call_tir(
        kernel,
        arguments + ([residual] if residual is not None else []),
        out_ty=relax.TensorType(out_shape, "float32"),
    )
    return call, depth_to_space is not None or residual is not None


@dataclass(frozen=True)
class FusableReader:
    """The one op that reads a GatedConv's output, which the conv's kernel may write instead: a
    DepthToSpace, or an Add of the conv's output and ``residual`` (a value's name)."""

    node: str
    depth_to_space: DepthToSpace | None = None
    residual: str | None = None


def fusable_readers(model: ir.Model) -> dict[str, FusableReader]:
    """GatedConv node name -> its :class:`FusableReader`, for every GatedConv that has one. The
    importer knows nodes by name only, so nodes without a name of their own are left out."""
    names = collections.Counter(node.name for node in model.graph)
    readers = {}
    for node in model.graph:
        output = node.outputs[0]
        if not is_gated_conv(node) or output.is_graph_output() or len(output.uses()) != 1:
            continue
        (reader,) = output.consumers()
        if (
            reader.domain not in ("", "ai.onnx")
            or not node.name
            or not reader.name
            or names[node.name] > 1
            or names[reader.name] > 1
        ):
            continue
        if reader.op_type == "DepthToSpace":
            mode = reader.attributes.get_string("mode", "DCR")
            readers[node.name] = FusableReader(reader.name, DepthToSpace(reader.attributes.get_int("blocksize"), mode))
        elif reader.op_type == "Add" and len(reader.inputs) == 2:
            (other,) = [value for value in reader.inputs if value is not output] or [None]
            if other is not None and other.name:
                readers[node.name] = FusableReader(reader.name, residual=other.name)
    return readers


def clip(bb: relax.BlockBuilder, x: relax.Expr, bounds: list[relax.Expr | None]) -> relax.Expr | None:
    """ONNX Clip (opset 11 on: bounds are inputs) with constant bounds, or none, as ``R.maximum`` /
    ``R.minimum`` with scalar constants; None when a bound is computed. TVM's importer emits each as a
    ``call_tir`` of a TE function, which ConvertLayout cannot see through: an NHWC conv before a ReLU6
    would get a transpose on either side. A NaN bound is no bound, as in ONNX Runtime."""
    if any(bound is not None and not isinstance(bound, tvm.ir.GenericConst) for bound in bounds):
        return None
    dtype = x.ty.dtype
    for op, bound in zip((relax.op.maximum, relax.op.minimum), bounds):
        if bound is not None and not np.isnan(value := float(bound.value.numpy())):
            x = bb.normalize(op(x, relax.const(value, dtype)))
    return x


class EdgesparseImporter(ONNXGraphImporter):
    def __init__(
        self,
        shape_dict,
        dtype_dict,
        target: tvm.target.Target,
        tuned_schedules: Mapping[str, GatedConvSchedule],
        readers: Mapping[str, FusableReader],
    ):
        super().__init__(shape_dict, dtype_dict)
        self.target = target
        self.tuned_schedules = tuned_schedules
        self.readers = readers  # fusable_readers' candidates
        self.absorbed: dict[str, relax.Expr] = {}  # reader node -> the kernel that wrote its output

    def _check_for_unsupported_ops(self, graph):
        # check_supported_ops() already ran on the onnx-ir model, naming the offending node.
        pass

    def _convert_operator(self, op_name, inputs, attrs, opset):
        try:
            return self._convert_node(op_name, inputs, attrs, opset)
        except EdgesparseError:
            raise
        except Exception as exc:  # noqa: BLE001  (TVM's converters raise ValueError, TVMError, ...: one line)
            node = attrs.get("tvm_custom", {}).get("name", "?")
            message = (str(exc).strip().splitlines() or [""])[0]
            raise BackendError(
                f"node {node!r} ({op_name}): TVM's ONNX importer cannot convert it: {type(exc).__name__}: {message}"
            ) from exc

    def _convert_node(self, op_name, inputs, attrs, opset):
        name = attrs.get("tvm_custom", {}).get("name")
        if op_name == "Clip" and opset >= 11 and (clipped := clip(self.bb, inputs[0], inputs[1:3])) is not None:
            return clipped
        if name in self.absorbed:
            return self.absorbed[name]  # the GatedConv before it wrote its output
        if op_name != OP_TYPE:
            return super()._convert_operator(op_name, inputs, attrs, opset)
        reader = self.readers.get(name)
        # A skip connection fuses only if converted already (the Add's other operand may come later).
        residual = self._nodes.get(reader.residual) if reader is not None and reader.residual else None
        attrs = {key: attrs[key] for key in ("threshold", "strides", "pads", "dilations", "group")}
        weight, bias = constant_array(inputs[1], "weight"), constant_array(inputs[2], "bias")
        call, fused = gated_conv(
            self.bb,
            inputs[0],
            weight,
            bias,
            attrs,
            self.target,
            self.tuned_schedules,
            reader.depth_to_space if reader is not None else None,
            residual if isinstance(residual, relax.Expr) else None,
        )
        if not fused:
            return self.bb.normalize(call)
        # Bound to a variable: the conv's output and its reader's are then one value, computed once.
        self.absorbed[reader.node] = self.bb.emit(call)
        return self.absorbed[reader.node]


def import_to_relax(
    model: ir.Model, target: tvm.target.Target, tuned_schedules: Mapping[str, GatedConvSchedule] | None = None
) -> tvm.IRModule:
    """``tuned_schedules``: gated kernel knobs by workload key (backends/gated_tuning.py)."""
    check_supported_ops(model)
    specs = input_specs(model)
    proto = to_proto(model)
    importer = EdgesparseImporter(
        {name: list(shape) for name, shape, _ in specs},
        {name: str(dtype) for name, _, dtype in specs},
        target,
        tuned_schedules or {},
        fusable_readers(model),
    )
    # TVM prints "Error converting operator ..." with every input's Relax text before it re-raises: the
    # BackendError raised above already names the node.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return importer.from_onnx(proto.graph, model.opset_imports[""])
