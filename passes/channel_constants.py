"""Which channels hold a known constant: the same value at every position, whatever the input (an analysis).

Pruned channels are such constants: 0 after a mask or an all-zero filter, the bias after a conv or a
BatchNormalization, then whatever the activations make of that. Constants flow forward in graph order:
- Conv / ConvTranspose / Gemm / MatMul: an output channel is constant when every input channel its
  weights read is constant. With padding (Conv) or overlapping kernels (ConvTranspose) only when those
  are all 0: a non-zero constant read through the zero border is not uniform.
- Mul: a channel multiplied by a known 0 is 0, whatever the other factor (activations are assumed
  finite).
- any other node with a coupling rule (channel_deps): when every input channel coupled to an output
  channel is known, the node is evaluated on constant inputs with ONNX's reference evaluator and the
  channel read back; it counts only if it came out uniform (a Pad or a padded pool can break that).
Nodes without a coupling rule are skipped: their channels are pinned, so their constants never matter.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from edgesparse.passes.channel_deps import (
    CHANNEL_AXIS,
    ChannelGraph,
    NodeCoupling,
    Slot,
    channel_count,
    channel_slots,
    has_input,
)

Constants = dict[Slot, float]


def channel_constants(model: ir.Model, deps: ChannelGraph) -> Constants:
    """Activation slot -> its constant value, for every channel of the main graph proven constant."""
    known: Constants = {}
    for node in model.graph:
        coupling = deps.couplings.get(node)
        if coupling is not None:
            known.update(LAYER_RULES.get(node.op_type, evaluated_constants)(node, coupling, known))
    return known


def has_padding(node: ir.Node) -> bool:
    """Whether a Conv/ConvTranspose pads: explicit pads, or SAME auto-padding with a kernel wider than 1."""
    if any(node.attributes.get_ints("pads", ())):
        return True
    kernel = node.inputs[1].shape[2:]
    return node.attributes.get_string("auto_pad", "NOTSET").startswith("SAME") and any(size > 1 for size in kernel)


def known_channels(value: ir.Value, known: Constants) -> np.ndarray:
    """Per channel of ``value``: its constant, NaN where unknown."""
    return np.array([known.get(slot, np.nan) for slot in channel_slots(value)], dtype=np.float64)


def convolution_constants(node: ir.Node, coupling: NodeCoupling, known: Constants) -> Constants:
    x, y = node.inputs[0], node.outputs[0]
    weight = node.inputs[1].const_value.numpy().astype(np.float64)
    groups = node.attributes.get_int("group", 1)
    outputs = channel_count(y)
    if node.op_type == "ConvTranspose":
        # [C_in, C_out/group, k...] -> [C_out, C_in/group, k...], as a Conv's filters
        per_in = weight.shape[0] // groups
        weight = np.concatenate(
            [weight[group * per_in : (group + 1) * per_in].swapaxes(0, 1) for group in range(groups)]
        )
    filters = weight.reshape(outputs, weight.shape[1], -1)
    reads = (filters != 0).any(-1)  # [C_out, C_in/group]: which input channels each output channel reads
    inputs = known_channels(x, known).reshape(groups, -1)[np.arange(outputs) // (outputs // groups)]
    bias = node.inputs[2].const_value.numpy() if has_input(node, 2) else np.zeros(outputs)
    contribution = np.where(reads, np.nan_to_num(inputs), 0.0)
    unknown = (np.isnan(inputs) & reads).any(1)
    uniform = not has_padding(node) if node.op_type == "Conv" else False
    exact = ~unknown & (uniform | ~contribution.any(1))
    values = bias + (contribution * filters.sum(-1)).sum(1)
    return {Slot(y, CHANNEL_AXIS, channel): float(values[channel]) for channel in np.flatnonzero(exact)}


def linear_constants(node: ir.Node, coupling: NodeCoupling, known: Constants) -> Constants:
    """Gemm (alpha * A @ B + beta * C) and MatMul of an [N, K] activation: no borders, every constant folds."""
    a, y = node.inputs[0], node.outputs[0]
    weight = node.inputs[1].const_value.numpy().astype(np.float64)
    bias = np.zeros((1, channel_count(y)))  # rows: batch elements (a bias may differ between them)
    alpha = 1.0
    if node.op_type == "Gemm":
        weight = weight.T if node.attributes.get_int("transB", 0) else weight
        alpha = node.attributes.get_float("alpha", 1.0)
        if has_input(node, 2):
            bias = np.atleast_2d(node.attributes.get_float("beta", 1.0) * node.inputs[2].const_value.numpy())
            bias = np.broadcast_to(bias, (bias.shape[0], channel_count(y)))
    inputs = known_channels(a, known)
    reads = weight != 0  # [K, N]
    unknown = (np.isnan(inputs)[:, None] & reads).any(0)
    exact = ~unknown & (bias == bias[:1]).all(0)
    values = alpha * (np.nan_to_num(inputs)[:, None] * weight).sum(0) + bias[0]
    return {Slot(y, CHANNEL_AXIS, channel): float(values[channel]) for channel in np.flatnonzero(exact)}


def evaluated_constants(node: ir.Node, coupling: NodeCoupling, known: Constants) -> Constants:
    """Runs the node on its inputs' constants (unknown channels filled with 1) and reads back each output
    channel whose coupled input channels are all known, or (Mul) which came out 0."""
    activations = [value for value in node.inputs if value is not None and value.const_value is None]
    annihilates = node.op_type == "Mul" and any(
        value.const_value is not None and not value.const_value.numpy().all()
        for value in node.inputs
        if value is not None
    )
    if not annihilates and not any(slot in known for value in activations for slot in channel_slots(value)):
        return {}
    determined = _determined_outputs(node, coupling, known, activations)
    feeds = {}
    for value in node.inputs:
        if value is None:
            continue
        feeds[value.name] = value.const_value.numpy() if value.const_value is not None else _constant_feed(value, known)
        if feeds[value.name] is None:
            return {}
    results = ReferenceEvaluator(ir.serde.serialize_node(node), opsets=dict(node.graph.opset_imports)).run(None, feeds)
    constants: Constants = {}
    for output, result in zip(node.outputs, results):
        if channel_count(output) is None:
            continue
        per_channel = np.asarray(result).swapaxes(0, CHANNEL_AXIS).reshape(channel_count(output), -1)
        uniform = np.isfinite(per_channel[:, 0]) & (per_channel == per_channel[:, :1]).all(1)
        for channel in range(channel_count(output)):
            slot = Slot(output, CHANNEL_AXIS, channel)
            if (slot in determined and uniform[channel]) or (annihilates and not per_channel[channel].any()):
                constants[slot] = float(per_channel[channel, 0])
    return constants


def _determined_outputs(
    node: ir.Node, coupling: NodeCoupling, known: Constants, activations: list[ir.Value]
) -> set[Slot]:
    """Output slots that depend only on known input slots: every activation input must be coupled (an
    uncoupled one, e.g. broadcast along the channels, feeds every output channel)."""
    local = nx.Graph(coupling.edges)
    if not all(any(local.has_node(slot) for slot in channel_slots(value)) for value in activations):
        return set()
    determined = set()
    for component in nx.connected_components(local):
        if all(slot in known for slot in component if slot.value in activations):
            determined.update(slot for slot in component if slot.value in node.outputs)
    return determined


def _constant_feed(value: ir.Value, known: Constants) -> np.ndarray | None:
    """A full-size input carrying each known channel's constant (1 elsewhere); None if it cannot be built."""
    shape = value.shape
    if (
        channel_count(value) is None
        or not all(isinstance(dim, int) for dim in shape)
        or not value.dtype.is_floating_point()
    ):
        return None
    constants = known_channels(value, known)
    feed = np.ones(tuple(shape), dtype=value.dtype.numpy())
    channels = np.flatnonzero(~np.isnan(constants))
    feed[:, channels] = constants[channels].reshape(-1, *[1] * (len(shape) - 2))
    return feed


LAYER_RULES = {
    "Conv": convolution_constants,
    "ConvTranspose": convolution_constants,
    "Gemm": linear_constants,
    "MatMul": linear_constants,
}
