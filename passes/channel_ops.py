"""What each ONNX op does to channels: one :class:`OpHandler` per op type in :data:`OP_HANDLERS`, so that
supporting an op in the channel passes is one entry there. Ops without one, and ops of other domains,
pin every channel they touch.

A handler's parts are kept apart, each read by one user only:
- ``couple``, its coupling rule: which channels of its inputs, outputs and weights can only go together
  (channel_deps, the analysis, reads this part and nothing else);
- ``constants``: which of its output channels hold a known constant, given its inputs' (channel_constants);
- ``edit``: how its attributes and shape inputs follow when channels go (strip-channels);
- ``fold``, for a layer that sums its input channels into every output: how an input channel that goes
  is taken into its bias (strip-channels).
Also the terms these share: a :class:`Slot` is one channel of an activation or one entry of a weight.
Coupling and constant rules read a node and change nothing; an edit changes the node strip-channels
hands it (its attributes and shape inputs), nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import networkx as nx
import numpy as np
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from edgesparse.passes.initializers import add_initializer

# ----------------------------------------------------------------------------------- slots
CHANNEL_AXIS = 1


class Slot(NamedTuple):
    value: ir.Value
    axis: int
    index: int


class Uncoupled(Exception):
    """A rule cannot map the channels of a node: the message says why, and all its channels are pinned."""


def node_name(node: ir.Node) -> str:
    """The node's name, or its first output's for unnamed nodes (as some exporters leave them)."""
    return node.name or node.outputs[0].name


def node_label(node: ir.Node) -> str:
    """``Op 'name'``, for messages and reports."""
    return f"{node.op_type} {node_name(node)!r}"


def channel_count(value: ir.Value) -> int | None:
    """The static size of axis 1 of a tensor of rank >= 2, else None (such a value has no channels)."""
    shape = value.shape
    if shape is None or len(shape) < 2 or not isinstance(shape[CHANNEL_AXIS], int):
        return None
    return shape[CHANNEL_AXIS]


def channel_slots(value: ir.Value) -> list[Slot]:
    return [Slot(value, CHANNEL_AXIS, index) for index in range(channel_count(value) or 0)]


def const_ints(value: ir.Value | None) -> list[int] | None:
    """The integers of a constant 1-D input (shape, axes, sizes...), or None when it is computed."""
    if value is None or value.const_value is None:
        return None
    return [int(item) for item in value.const_value.numpy().reshape(-1)]


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def has_input(node: ir.Node, index: int) -> bool:
    return len(node.inputs) > index and node.inputs[index] is not None


@dataclasses.dataclass
class NodeCoupling:
    """What a coupling rule found for one node."""

    node: ir.Node
    edges: list[tuple[Slot, Slot]] = dataclasses.field(default_factory=list)
    contracted: list[ir.Value] = dataclasses.field(default_factory=list)
    pinned: dict[ir.Value, str] = dataclasses.field(default_factory=dict)

    def couple(self, a: Slot, b: Slot) -> None:
        self.edges.append((a, b))

    def couple_channels(
        self, a: ir.Value, b: ir.Value, a_start: int = 0, b_start: int = 0, count: int | None = None
    ) -> None:
        """Channel ``a_start + i`` of ``a`` with channel ``b_start + i`` of ``b``."""
        count = channels(b) - b_start if count is None else count
        for offset in range(count):
            self.couple(Slot(a, CHANNEL_AXIS, a_start + offset), Slot(b, CHANNEL_AXIS, b_start + offset))

    def couple_weight(self, weight: ir.Value, axis: int, activation: ir.Value) -> None:
        """Entry i of ``weight`` along ``axis`` with channel i of ``activation``."""
        if weight.shape is None or weight.shape[axis] != channels(activation):
            raise Uncoupled(
                f"{weight.name!r} of shape {weight.shape} does not line up with the {channels(activation)} "
                f"channels of {activation.name!r}"
            )
        for index in range(channels(activation)):
            self.couple(Slot(weight, axis, index), Slot(activation, CHANNEL_AXIS, index))


def channels(value: ir.Value) -> int:
    """The channel count a rule needs; unknown, the node cannot be mapped."""
    count = channel_count(value)
    if count is None:
        raise Uncoupled(f"channel count of {value.name!r} is unknown (shape {value.shape})")
    return count


def constant_input(node: ir.Node, index: int, role: str) -> ir.Value:
    value = node.inputs[index]
    if value.const_value is None:
        raise Uncoupled(f"its {role} {value.name!r} is computed at run time")
    return value


# ----------------------------------------------------------------------------------- coupling rules
CouplingRule = Callable[[ir.Node, NodeCoupling], None]


def channelwise(node: ir.Node, coupling: NodeCoupling) -> None:
    """Output channel c is computed from input channel c alone (activations, pooling, resizing...)."""
    x, y = node.inputs[0], node.outputs[0]
    if channels(y) != channels(x):
        raise Uncoupled(f"it changes the channel count from {channels(x)} to {channels(y)}")
    if any(output.uses() or output.is_graph_output() for output in node.outputs[1:]):
        raise Uncoupled("its second output (e.g. MaxPool indices) is used")
    coupling.couple_channels(x, y)


def broadcast_elementwise(node: ir.Node, coupling: NodeCoupling) -> None:
    """Numpy broadcasting: operands with all the channels are coupled channel by channel (a residual
    Add, an SE block's Mul); constants with all the channels are per-channel weights (masks, biases,
    PRelu slopes); an activation broadcast along the channels is read by every channel (pinned)."""
    y = node.outputs[0]
    count, rank = channels(y), len(y.shape)
    for operand in node.inputs:
        if operand is None:
            continue
        axis = CHANNEL_AXIS - (rank - len(operand.shape))
        size = operand.shape[axis] if axis >= 0 else 1
        if operand.const_value is not None:
            if axis >= 0 and size == count:
                coupling.couple_weight(operand, axis, y)
        elif size == count and axis == CHANNEL_AXIS:
            coupling.couple_channels(operand, y)
        elif size == 1:
            coupling.pinned[operand] = f"it is broadcast to every channel of {node_label(node)}"
        else:
            raise Uncoupled(f"cannot align {operand.name!r} of shape {operand.shape} with its channels")


def normalization(node: ir.Node, coupling: NodeCoupling) -> None:
    """BatchNormalization / InstanceNormalization: channelwise, with one parameter entry per channel."""
    if len(node.outputs) > 1:
        raise Uncoupled("training-mode outputs")
    channelwise(node, coupling)
    for index in range(1, len(node.inputs)):
        coupling.couple_weight(constant_input(node, index, "parameter"), 0, node.outputs[0])


def convolution(node: ir.Node, coupling: NodeCoupling) -> None:
    """Conv weight [C_out, C_in/group, k...], ConvTranspose weight [C_in, C_out/group, k...].

    Without groups the weight's axis 1 lines up with the other side's channels and the input is
    contracted. With groups a group's input and output channels move together (for a depthwise conv:
    channel c in, its multiplier's channels out), and the group count shrinks with them."""
    x, y = node.inputs[0], node.outputs[0]
    weight = constant_input(node, 1, "weight")
    rows, cols = (y, x) if node.op_type == "Conv" else (x, y)
    coupling.couple_weight(weight, 0, rows)
    if has_input(node, 2):
        coupling.couple_weight(constant_input(node, 2, "bias"), 0, y)
    groups = node.attributes.get_int("group", 1)
    if groups == 1:
        coupling.couple_weight(weight, 1, cols)
        coupling.contracted.append(x)
        return
    per_in, per_out = channels(x) // groups, channels(y) // groups
    for group in range(groups):
        anchor = Slot(y, CHANNEL_AXIS, group * per_out)
        for index in range(group * per_in, (group + 1) * per_in):
            coupling.couple(Slot(x, CHANNEL_AXIS, index), anchor)
        for index in range(group * per_out + 1, (group + 1) * per_out):
            coupling.couple(Slot(y, CHANNEL_AXIS, index), anchor)


def gemm(node: ir.Node, coupling: NodeCoupling) -> None:
    """Y = alpha * A @ B + beta * C, with A [N, K] (its K channels contracted) and a constant B."""
    if node.attributes.get_int("transA", 0):
        raise Uncoupled("transA is set")
    matrix_multiply(node, coupling, k_axis=1 if node.attributes.get_int("transB", 0) else 0)
    if has_input(node, 2):
        bias = constant_input(node, 2, "bias")
        if len(bias.shape) > 0 and bias.shape[-1] == channels(node.outputs[0]):
            coupling.couple_weight(bias, len(bias.shape) - 1, node.outputs[0])


def matrix_multiply(node: ir.Node, coupling: NodeCoupling, k_axis: int = 0) -> None:
    """MatMul of an [N, K] activation by a constant 2-D weight (the ``k_axis`` of which is K)."""
    a, y = node.inputs[0], node.outputs[0]
    weight = constant_input(node, 1, "weight")
    if len(a.shape) != 2 or len(weight.shape) != 2:
        raise Uncoupled("only [N, K] @ [K, M] products are mapped")
    coupling.couple_weight(weight, k_axis, a)
    coupling.couple_weight(weight, 1 - k_axis, y)
    coupling.contracted.append(a)


def concat(node: ir.Node, coupling: NodeCoupling) -> None:
    y = node.outputs[0]
    if normalize_axis(node.attributes.get_int("axis"), len(y.shape)) != CHANNEL_AXIS:
        for x in node.inputs:
            coupling.couple_channels(x, y)
        return
    offset = 0
    for x in node.inputs:
        coupling.couple_channels(x, y, 0, offset, channels(x))
        offset += channels(x)


def split(node: ir.Node, coupling: NodeCoupling) -> None:
    x = node.inputs[0]
    if has_input(node, 1):
        constant_input(node, 1, "split sizes")  # rewritten when channels go
    if normalize_axis(node.attributes.get_int("axis", 0), len(x.shape)) != CHANNEL_AXIS:
        for y in node.outputs:
            coupling.couple_channels(x, y)
        return
    offset = 0
    for y in node.outputs:
        coupling.couple_channels(x, y, offset, 0)
        offset += channels(y)


def slice_channels(node: ir.Node) -> tuple[int, int] | None:
    """(position in the Slice's starts/ends, first input channel read) when it slices the channel axis."""
    x = node.inputs[0]
    starts = const_ints(node.inputs[1])
    axes = const_ints(node.inputs[3]) if has_input(node, 3) else list(range(len(starts or ())))
    steps = const_ints(node.inputs[4]) if has_input(node, 4) else [1] * len(starts or ())
    if starts is None or axes is None or steps is None or const_ints(node.inputs[2]) is None:
        raise Uncoupled("its starts, ends, axes or steps are computed at run time")
    axes = [normalize_axis(axis, len(x.shape)) for axis in axes]
    if CHANNEL_AXIS not in axes:
        return None
    position = axes.index(CHANNEL_AXIS)
    if steps[position] != 1:
        raise Uncoupled("it slices the channels with a step other than 1")
    count = channels(x)
    return position, min(max(normalize_axis(starts[position], count), 0), count)


def slice_(node: ir.Node, coupling: NodeCoupling) -> None:
    sliced = slice_channels(node)
    coupling.couple_channels(node.inputs[0], node.outputs[0], sliced[1] if sliced else 0, 0)


def depth_to_space(node: ir.Node, coupling: NodeCoupling) -> None:
    """Output channel c gathers r*r input channels: c*r*r + i (CRD, torch's PixelShuffle) or i*C + c (DCR)."""
    x, y = node.inputs[0], node.outputs[0]
    block = node.attributes.get_int("blocksize") ** 2
    crd = node.attributes.get_string("mode", "DCR") == "CRD"
    count = channels(y)
    for channel in range(count):
        for i in range(block):
            coupling.couple(
                Slot(x, CHANNEL_AXIS, channel * block + i if crd else i * count + channel),
                Slot(y, CHANNEL_AXIS, channel),
            )


def space_to_depth(node: ir.Node, coupling: NodeCoupling) -> None:
    """Input channel c goes to the r*r output channels i*C + c."""
    x, y = node.inputs[0], node.outputs[0]
    count = channels(x)
    for i in range(node.attributes.get_int("blocksize") ** 2):
        coupling.couple_channels(x, y, 0, i * count, count)


def reshape(node: ir.Node, coupling: NodeCoupling) -> None:
    """Reshape/Flatten/Squeeze/Unsqueeze: mapped when the batch and channel axes stay put ([N, C, H, W]
    -> [N, C, H*W]) or when everything after the batch is flattened ([N, C, H, W] -> [N, C*H*W], into
    a Gemm: channel c becomes H*W consecutive features)."""
    x, y = node.inputs[0], node.outputs[0]
    if node.op_type == "Reshape":
        constant_input(node, 1, "target shape")  # rewritten when channels go
    before, after = list(x.shape or ()), list(y.shape or ())
    if not all(isinstance(dim, int) for dim in before + after) or len(before) < 2 or len(after) < 2:
        raise Uncoupled(f"it reshapes {before} to {after} (static shapes of rank >= 2 are needed)")
    if before[:2] == after[:2] and math.prod(before[2:]) == math.prod(after[2:]):
        coupling.couple_channels(x, y)
    elif len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:]):
        features = math.prod(before[2:])
        for channel in range(before[1]):
            for feature in range(features):
                coupling.couple(Slot(x, CHANNEL_AXIS, channel), Slot(y, CHANNEL_AXIS, channel * features + feature))
    else:
        raise Uncoupled(f"it reshapes {before} to {after}, mixing channels with other axes")


def pad(node: ir.Node, coupling: NodeCoupling) -> None:
    rank = len(node.inputs[0].shape)
    pads = const_ints(node.inputs[1])
    axes = const_ints(node.inputs[3]) if has_input(node, 3) else list(range(rank))
    if pads is None or axes is None:
        raise Uncoupled("its pads are computed at run time")
    padded = {normalize_axis(axis, rank) for axis, begin, end in zip(axes, pads, pads[len(axes) :]) if begin or end}
    if padded & {0, CHANNEL_AXIS}:
        raise Uncoupled("it pads the batch or channel axis")
    channelwise(node, coupling)


def resize(node: ir.Node, coupling: NodeCoupling) -> None:
    if has_input(node, 3):
        constant_input(node, 3, "sizes")  # rewritten when channels go
    channelwise(node, coupling)


def reduce(node: ir.Node, coupling: NodeCoupling) -> None:
    """Reductions over spatial axes only (keepdims or not, the channels stay on axis 1)."""
    rank = len(node.inputs[0].shape)
    axes = node.attributes.get_ints("axes") or (const_ints(node.inputs[1]) if has_input(node, 1) else None)
    if not axes or {normalize_axis(axis, rank) for axis in axes} & {0, CHANNEL_AXIS}:
        raise Uncoupled("it reduces over the batch or channel axis")
    channelwise(node, coupling)


def softmax(node: ir.Node, coupling: NodeCoupling) -> None:
    if normalize_axis(node.attributes.get_int("axis", -1), len(node.inputs[0].shape)) == CHANNEL_AXIS:
        raise Uncoupled("it normalizes across channels")
    channelwise(node, coupling)


# ----------------------------------------------------------------------------------- constant propagation
# activation slot -> its constant value
Constants = dict[Slot, float]
ConstantRule = Callable[[ir.Node, NodeCoupling, Constants], Constants]


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


def evaluated_constants(
    node: ir.Node, coupling: NodeCoupling, known: Constants, annihilates: bool = False
) -> Constants:
    """Runs the node on its inputs' constants (unknown channels filled with 1) and reads back each output
    channel whose coupled input channels are all known, or (``annihilates``) which came out 0."""
    activations = [value for value in node.inputs if value is not None and value.const_value is None]
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


def product_constants(node: ir.Node, coupling: NodeCoupling, known: Constants) -> Constants:
    """Mul: evaluated, and a channel multiplied by a known 0 is 0 whatever the other factor (activations are
    assumed finite)."""
    zero_factor = any(
        value.const_value is not None and not value.const_value.numpy().all()
        for value in node.inputs
        if value is not None
    )
    return evaluated_constants(node, coupling, known, annihilates=zero_factor)


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


# ----------------------------------------------------------------------------------- shape edits
# activation -> its kept channel indices (old numbering), for the activations that lose channels
Kept = dict[ir.Value, np.ndarray]
ShapeEdit = Callable[[ir.Node, Kept], None]


def _width(value: ir.Value, kept: Kept) -> int:
    return len(kept[value]) if value in kept else channel_count(value)


def _set_constant_input(node: ir.Node, index: int, values: list[int]) -> None:
    """A fresh initializer for the node's shape-like input: the old one may be shared."""
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    hint = node.inputs[index].name if node.inputs[index] is not None else f"{node_name(node)}_input{index}"
    node.replace_input_with(index, add_initializer(node.graph, hint, np.array(values, dtype=np.int64)))


def edit_group_count(node: ir.Node, kept: Kept) -> None:
    groups = node.attributes.get_int("group", 1)
    x = node.inputs[0]
    if groups > 1 and x in kept:
        node.attributes["group"] = ir.AttrInt64("group", groups * len(kept[x]) // channel_count(x))


def edit_split_sizes(node: ir.Node, kept: Kept) -> None:
    if normalize_axis(node.attributes.get_int("axis", 0), len(node.inputs[0].shape)) == CHANNEL_AXIS:
        node.attributes.pop("num_outputs", None)  # the sizes input replaces it (the parts may now differ)
        _set_constant_input(node, 1, [_width(output, kept) for output in node.outputs])


def edit_slice_bounds(node: ir.Node, kept: Kept) -> None:
    sliced = slice_channels(node)
    x, y = node.inputs[0], node.outputs[0]
    if sliced is None:
        return
    position, start = sliced
    starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
    starts[position] = int(np.count_nonzero(kept[x] < start)) if x in kept else start
    ends[position] = starts[position] + _width(y, kept)
    _set_constant_input(node, 1, starts)
    _set_constant_input(node, 2, ends)


def edit_reshape_target(node: ir.Node, kept: Kept) -> None:
    target = const_ints(node.inputs[1])
    y = node.outputs[0]
    if y in kept and target[CHANNEL_AXIS] > 0:  # 0 (copy) and -1 (infer) follow the input by themselves
        target[CHANNEL_AXIS] = _width(y, kept)
        _set_constant_input(node, 1, target)


def edit_resize_sizes(node: ir.Node, kept: Kept) -> None:
    y = node.outputs[0]
    if has_input(node, 3) and y in kept:
        rank = len(y.shape)
        axes = [normalize_axis(axis, rank) for axis in node.attributes.get_ints("axes", range(rank))]
        sizes = const_ints(node.inputs[3])
        if CHANNEL_AXIS in axes:
            sizes[axes.index(CHANNEL_AXIS)] = _width(y, kept)
            _set_constant_input(node, 3, sizes)


# ----------------------------------------------------------------------------------- bias folds
class BiasFold(NamedTuple):
    """How a layer takes an input channel that goes into its bias: a constant c read through the channel's
    weights (along ``axis``) adds c * ``scale`` * (their sum) to each output channel, unless ``refusal``
    says why that is no bias."""

    axis: int
    scale: float = 1.0
    refusal: str | None = None


BiasFoldRule = Callable[[ir.Node], BiasFold]


def conv_fold(layer: ir.Node) -> BiasFold:
    if has_padding(layer):
        return BiasFold(
            1, refusal=f"non-zero constants read by {node_label(layer)} through zero padding: no bias at the borders"
        )
    return BiasFold(1)


def conv_transpose_fold(layer: ir.Node) -> BiasFold:
    return BiasFold(0, refusal=f"non-zero constants read by {node_label(layer)}: overlapping kernels make them no bias")


def gemm_fold(layer: ir.Node) -> BiasFold:
    """alpha * A @ B + beta * C: a constant's alpha-scaled contribution, divided by beta, goes into C."""
    axis = 1 if layer.attributes.get_int("transB", 0) else 0
    beta = layer.attributes.get_float("beta", 1.0)
    if beta == 0:
        return BiasFold(axis, refusal=f"non-zero constants read by {node_label(layer)}, whose beta is 0")
    return BiasFold(axis, layer.attributes.get_float("alpha", 1.0) / beta)


def matmul_fold(layer: ir.Node) -> BiasFold:
    return BiasFold(0, refusal=f"non-zero constants read by {node_label(layer)}, which has no bias to fold them into")


# ----------------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class OpHandler:
    """What one op type does to channels (see the module docstring for who reads which part)."""

    couple: CouplingRule
    # Default: the node run on its inputs' constants.
    constants: ConstantRule = evaluated_constants
    # None: nothing but the shapes of its values changes with the channels.
    edit: ShapeEdit | None = None
    # The layers whose coupling rule contracts an input (sums its channels into every output) have one,
    # and only they: they are the layers of strip-channels' report.
    fold: BiasFoldRule | None = None


CHANNELWISE_OPS = (
    "Relu",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "ThresholdedRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Softsign",
    "Mish",
    "Gelu",
    "Erf",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Clip",
    "Shrink",
    "Identity",
    "Dropout",
    "Cast",
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
)
REDUCE_OPS = (
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)

# op type -> its handler, for the default ONNX domain
OP_HANDLERS: dict[str, OpHandler] = {
    **dict.fromkeys(CHANNELWISE_OPS, OpHandler(channelwise)),
    **dict.fromkeys(
        ("Add", "Sub", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"), OpHandler(broadcast_elementwise)
    ),
    "Mul": OpHandler(broadcast_elementwise, constants=product_constants),
    **dict.fromkeys(("BatchNormalization", "InstanceNormalization"), OpHandler(normalization)),
    "Conv": OpHandler(convolution, constants=convolution_constants, edit=edit_group_count, fold=conv_fold),
    "ConvTranspose": OpHandler(
        convolution, constants=convolution_constants, edit=edit_group_count, fold=conv_transpose_fold
    ),
    "Gemm": OpHandler(gemm, constants=linear_constants, fold=gemm_fold),
    "MatMul": OpHandler(matrix_multiply, constants=linear_constants, fold=matmul_fold),
    "Concat": OpHandler(concat),
    "Split": OpHandler(split, edit=edit_split_sizes),
    "Slice": OpHandler(slice_, edit=edit_slice_bounds),
    "DepthToSpace": OpHandler(depth_to_space),
    "SpaceToDepth": OpHandler(space_to_depth),
    **dict.fromkeys(("Flatten", "Squeeze", "Unsqueeze"), OpHandler(reshape)),
    "Reshape": OpHandler(reshape, edit=edit_reshape_target),
    "Pad": OpHandler(pad),
    "Resize": OpHandler(resize, edit=edit_resize_sizes),
    **dict.fromkeys(REDUCE_OPS, OpHandler(reduce)),
    **dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), OpHandler(softmax)),
}


def op_handler(node: ir.Node) -> OpHandler | None:
    """The node's handler; None for ops without one and ops of other domains."""
    return OP_HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
