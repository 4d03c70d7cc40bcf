"""Which channels of an ONNX CNN can only be removed together: a channel dependency graph (an analysis).

Modelled on Torch-Pruning's dependency graph, at the granularity of single channels, so that index
offsets (Concat, Split, Slice), blocks (DepthToSpace, grouped convs) and flattening (Flatten/Reshape
into a Gemm) are plain edges. A node of the networkx graph is a :class:`Slot`: channel ``index`` of an
activation (``axis`` 1, the channel axis of NCHW maps and of [N, K] matrices), or entry ``index`` of a
weight along the ``axis`` that lines up with an activation's channels (a Conv weight's rows with its
output channels, its columns with its input channels, a BN parameter with its channels...). An edge
reads "if one goes, the other goes"; the connected components are the channel groups, each kept or
removed whole.

Each op type's coupling rule is the ``couple`` of its handler in :data:`channel_ops.OP_HANDLERS` (the
only part of a handler this analysis reads). Besides edges a rule declares:
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
from collections import defaultdict
from collections.abc import Iterable

import networkx as nx
import onnx_ir as ir

from edgesparse.passes.channel_ops import NodeCoupling, Slot, Uncoupled, channel_slots, node_label, op_handler


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
    handler = op_handler(node)
    try:
        if handler is None:
            raise Uncoupled("no channel rule for this op")
        # Rules rely on the ranks of what a node reads and of its (first) output.
        for value in (*node.inputs, node.outputs[0]):
            if value is not None and value.shape is None:
                raise Uncoupled(f"shape of {value.name!r} is unknown")
        handler.couple(node, coupling)
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
