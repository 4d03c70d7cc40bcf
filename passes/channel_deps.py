"""Which channels of an ONNX CNN can only be removed together: a channel dependency graph (an analysis).

Modelled on Torch-Pruning's dependency graph, at the granularity of single channels, so that index
offsets (Concat, Split, Slice), blocks (DepthToSpace, grouped convs) and flattening (Flatten/Reshape
into a Gemm) are plain edges. A node of the networkx graph is a :class:`Slot`: channel ``index`` of an
activation (``axis`` 1, the channel axis of NCHW maps and of [N, K] matrices), or entry ``index`` of a
weight along the ``axis`` that lines up with an activation's channels (a Conv weight's rows with its
output channels, its columns with its input channels, a BN parameter with its channels...). An edge
reads "if one goes, the other goes"; the connected components are the channel groups, each kept or
removed whole.

Each op type has one coupling rule in :data:`COUPLING_RULES`. Besides edges a rule declares:
- contracted inputs: channels a layer sums into every output (Conv, ConvTranspose, Gemm, MatMul without
  groups). Nothing downstream depends on them alone; whether the layer can do without one is the
  pruning pass's decision, not this analysis's.
- pinned inputs: channels that must stay (an activation broadcast to every channel of an elementwise op).
A rule that cannot map a node's channels (a Reshape mixing channels with other axes, weights computed at
run time) raises :class:`Uncoupled`, which pins every channel the node touches. Graph inputs and
outputs, nodes of ops without a rule, values read inside subgraphs and weights shared by two nodes are
pinned too; a pin holds its whole group.

Needs static channel dims (shape inference) and weights as initializers (``lift-constants``): a Constant
node has no rule, so what it produces is pinned.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import NamedTuple

import networkx as nx
import onnx_ir as ir

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
Rule = Callable[[ir.Node, NodeCoupling], None]


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
BROADCAST_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu")
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

# op type -> rule, for the default ONNX domain; ops not listed pin every channel they touch.
COUPLING_RULES: dict[str, Rule] = {
    **dict.fromkeys(CHANNELWISE_OPS, channelwise),
    **dict.fromkeys(BROADCAST_OPS, broadcast_elementwise),
    **dict.fromkeys(("BatchNormalization", "InstanceNormalization"), normalization),
    **dict.fromkeys(("Conv", "ConvTranspose"), convolution),
    "Gemm": gemm,
    "MatMul": matrix_multiply,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "DepthToSpace": depth_to_space,
    "SpaceToDepth": space_to_depth,
    **dict.fromkeys(("Flatten", "Reshape", "Squeeze", "Unsqueeze"), reshape),
    "Pad": pad,
    "Resize": resize,
    **dict.fromkeys(REDUCE_OPS, reduce),
    **dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), softmax),
}


# ----------------------------------------------------------------------------------- the graph
@dataclasses.dataclass
class ChannelGraph:
    graph: nx.Graph
    # slot -> why it must stay
    pins: dict[Slot, str]
    # activation slot -> the layers that sum it into their outputs
    contractions: dict[Slot, list[ir.Node]]
    # node -> what its rule found (absent: the node is pinned)
    couplings: dict[ir.Node, NodeCoupling]
    # value -> its position in the graph, for a stable order of slots in groups and reports
    order: dict[ir.Value, int]

    def groups(self) -> list[list[Slot]]:
        """The channel groups, each sorted, in graph order of their first slot."""
        groups = [sorted(component, key=self.slot_key) for component in nx.connected_components(self.graph)]
        return sorted(groups, key=lambda group: self.slot_key(group[0]))

    def slot_key(self, slot: Slot) -> tuple[int, int, int]:
        return self.order[slot.value], slot.axis, slot.index

    def pin(self, slots: Iterable[Slot], reason: str) -> None:
        for slot in slots:
            self.pins.setdefault(slot, reason)


def analyze_channels(model: ir.Model) -> ChannelGraph:
    """The channel dependency graph of the main graph of ``model`` (which is not changed)."""
    values = [*model.graph.inputs, *model.graph.initializers.values()]
    values += [output for node in model.graph for output in node.outputs]
    result = ChannelGraph(nx.Graph(), {}, defaultdict(list), {}, {value: index for index, value in enumerate(values)})
    for value in values:
        if value.const_value is None:
            result.graph.add_nodes_from(channel_slots(value))
    for node in model.graph:
        _add_node(result, node)
    result.pin((slot for value in model.graph.inputs for slot in channel_slots(value)), "graph input")
    result.pin(
        (slot for value in model.graph.outputs for slot in channel_slots(value)), "graph output (keeps its width)"
    )
    # An If/Loop body may read a value of the main graph directly, not through its node's inputs.
    for value in values:
        if any(use.node.graph is not model.graph for use in value.uses()):
            result.pin(channel_slots(value), f"{value.name!r} is read inside a subgraph")
    for slot in list(result.graph):
        if slot.value.const_value is not None and (reason := _unmodifiable_weight(slot.value)):
            result.pin([slot], reason)
    return result


def _add_node(result: ChannelGraph, node: ir.Node) -> None:
    coupling = NodeCoupling(node)
    rule = COUPLING_RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    try:
        if rule is None:
            raise Uncoupled("no channel rule for this op")
        # Rules rely on the ranks of what a node reads and of its (first) output.
        for value in (*node.inputs, node.outputs[0]):
            if value is not None and value.shape is None:
                raise Uncoupled(f"shape of {value.name!r} is unknown")
        rule(node, coupling)
    except Uncoupled as exc:
        touched = [value for value in (*node.inputs, *node.outputs) if value is not None and value.const_value is None]
        result.pin((slot for value in touched for slot in channel_slots(value)), f"{node_label(node)}: {exc}")
        return
    result.couplings[node] = coupling
    result.graph.add_edges_from(coupling.edges)
    for value in coupling.contracted:
        for slot in channel_slots(value):
            result.contractions[slot].append(node)
    for value, reason in coupling.pinned.items():
        result.pin(channel_slots(value), reason)


def _unmodifiable_weight(weight: ir.Value) -> str | None:
    """Why the channels of a weight cannot be cut: narrowing it would change another node or the interface."""
    users = list(dict.fromkeys(use.node for use in weight.uses()))
    if len(users) > 1:
        return f"weight {weight.name!r} is shared by {', '.join(node_label(node) for node in users)}"
    if weight.is_graph_input() or weight.is_graph_output():
        return f"weight {weight.name!r} is a graph input or output"
    return None
