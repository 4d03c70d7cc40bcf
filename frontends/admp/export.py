"""Teacher and pruned student to onnx-ir: the student's hard masks become per-channel ``Mul`` constants."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import onnx_ir as ir
import torch
from onnx_ir.passes.common import RemoveUnusedNodesPass

from edgesparse.frontends.admp.masks import set_mode
from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.passes.initializers import add_initializer


def export_model(
    model: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    masked: bool,
    input_names: Sequence[str] | None = ("input",),
    output_names: Sequence[str] | None = ("logits",),
) -> ir.Model:
    """``masked``: a ``Mul`` by each hard mask (a [1, C, 1, 1] 0/1 constant) after its convs; else none.
    BatchNorm is folded into the convs by the exporter, so each mask follows its conv directly."""
    model = copy.deepcopy(model).cpu().eval()
    set_mode(model, "hard" if masked else "off")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(x.cpu() for x in example_inputs)
    exported = from_torch(model, example_inputs, input_names=input_names, output_names=output_names)
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
