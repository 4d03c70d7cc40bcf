"""Teacher and pruned student to onnx-ir: the student's hard masks become per-channel ``Mul`` constants."""

from __future__ import annotations

import copy

import onnx_ir as ir
import torch
from onnx_ir.passes.common import RemoveUnusedNodesPass

from edgesparse.frontends.admp.masks import set_mode
from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.passes.initializers import add_initializer


def export_model(model: torch.nn.Module, size: int, *, masked: bool) -> ir.Model:
    """``masked``: a ``Mul`` by each hard mask (a [1, C, 1, 1] 0/1 constant) after its convs; else none.
    BatchNorm is folded into the convs by the exporter, so each mask follows its conv directly."""
    model = copy.deepcopy(model).eval()
    set_mode(model, "hard" if masked else "off")
    exported = from_torch(model, torch.zeros(1, 1, size, size), input_names=["input"], output_names=["logits"])
    if masked:
        _own_mask_constants(exported)
    return exported


def _constant(value: ir.Value) -> ir.TensorProtocol | None:
    """The tensor behind ``value``: an initializer, or one the exporter passed through an Identity."""
    producer = value.producer()
    if producer is not None and producer.op_type == "Identity":
        value = producer.inputs[0]
    return value.const_value


def _own_mask_constants(model: ir.Model) -> None:
    """The exporter writes the masks of one group (two Muls, same values) as one shared tensor, and
    strip-channels keeps channels whose weights are shared: every Mul gets its own copy."""
    for node in model.graph:
        if node.op_type != "Mul":
            continue
        tensor = _constant(node.inputs[1])
        if tensor is not None:
            node.replace_input_with(1, add_initializer(model.graph, f"{node.name}_mask", tensor.numpy().copy()))
    RemoveUnusedNodesPass()(model)
