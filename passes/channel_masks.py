"""Channel masks: which output channels of a layer are kept, in a file beside a model or as Mul nodes in it.

A mask file maps a node (by name, or by the name of its output for unnamed nodes) to the indices of the
output channels it keeps: JSON ``{"/conv1/Conv": [0, 2, 5]}``, or an ``.npz`` holding one 1-D integer
array per node. :func:`insert_masks` writes each as a ``Mul`` of the node's output by a [1, C, 1, ...]
0/1 constant, the form in which pruning tools export hard masks, so that ``strip-channels`` treats
masks from a file and masks in the graph alike. :func:`random_masks` draws masks for tests and benchmarks.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgesparse.passes.channel_deps import analyze_channels
from edgesparse.passes.channel_ops import CHANNEL_AXIS, Slot, channel_count, node_name
from edgesparse.passes.errors import PassError
from edgesparse.passes.initializers import add_initializer, fresh_name

Masks = dict[str, list[int]]

# The layers whose output channels masks select.
MASKED_LAYERS = ("Conv", "ConvTranspose", "Gemm")


def load_masks(path: str | os.PathLike) -> Masks:
    """Reads a ``.json`` or ``.npz`` mask file; a file that is not one is a :class:`PassError`."""
    path = Path(path)
    if not path.is_file():
        raise PassError(f"masks {path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path) as archive:
                entries = {name: archive[name] for name in archive.files}
        elif path.suffix == ".json":
            entries = json.loads(path.read_text())
        else:
            raise PassError(f"masks {path}: expected a .json or .npz file")
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise PassError(f"masks {path}: cannot read it ({exc})") from None
    if not isinstance(entries, dict):
        raise PassError(f"masks {path}: expected a mapping of node names to kept channel indices")
    return {name: _kept_indices(path, name, kept) for name, kept in entries.items()}


def _kept_indices(path: Path, name: str, kept) -> list[int]:
    array = np.asarray(kept)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise PassError(
            f"masks {path}: {name!r} must be a list of kept channel indices, not an array of shape "
            f"{list(array.shape)} and type {array.dtype}"
        )
    return array.tolist()


def insert_masks(model: ir.Model, masks: Mapping[str, Sequence[int]]) -> None:
    """Multiplies each named node's output by its 0/1 mask, in place."""
    nodes = {}
    for node in model.graph:
        nodes.setdefault(node.outputs[0].name, node)
    nodes.update({node.name: node for node in model.graph if node.name})
    for name, kept in masks.items():
        if name not in nodes:
            layers = [node_name(node) for node in model.graph if node.op_type in MASKED_LAYERS]
            raise PassError(
                f"masks: no node or node output named {name!r} (layers: "
                f"{', '.join(layers[:8])}{', ...' if len(layers) > 8 else ''})"
            )
        output = nodes[name].outputs[0]
        count = channel_count(output)
        if count is None:
            raise PassError(f"masks: the output of {name!r} has no static channel axis (shape {output.shape})")
        if output.is_graph_output():
            raise PassError(f"masks: {name!r} produces the graph output {output.name!r}, which keeps its width")
        if len(set(kept)) != len(kept) or not all(0 <= index < count for index in kept):
            raise PassError(
                f"masks: {name!r} has {count} output channels; its kept indices must be distinct and in [0, "
                f"{count}), got {list(kept)}"
            )
        if not kept:
            warnings.warn(
                f"masks: {name!r} keeps none of its {count} channels: what reads it sees a constant", stacklevel=2
            )
        mask = np.zeros([1, count] + [1] * (len(output.shape) - 2), dtype=output.dtype.numpy())
        mask[0, list(kept)] = 1
        _multiply_output(model.graph, nodes[name], mask)


def _multiply_output(graph: ir.Graph, node: ir.Node, factor: np.ndarray) -> None:
    output = node.outputs[0]
    uses = list(output.uses())
    mul = ir.Node(
        "",
        "Mul",
        [output, add_initializer(graph, f"{output.name}_mask", factor)],
        name=fresh_name(graph, f"{node_name(node)}_mask"),
    )
    masked = mul.outputs[0]
    masked.name, masked.shape, masked.type = fresh_name(graph, f"{output.name}_masked"), output.shape, output.type
    graph.insert_after(node, mul)
    for use in uses:
        use.node.replace_input_with(use.idx, masked)


def mask_operands(node: ir.Node) -> tuple[ir.Value, ir.Value] | None:
    """(activation, mask) when ``node`` multiplies an activation by a per-channel 0/1 constant
    ([1, C, 1, ...] or [C, 1, ...]), else None."""
    if node.op_type != "Mul" or len(node.inputs) != 2:
        return None
    for activation, mask in (node.inputs, node.inputs[::-1]):
        count = channel_count(activation)
        if activation.const_value is not None or mask.const_value is None or count is None:
            continue
        values = mask.const_value.numpy()
        axis = CHANNEL_AXIS - (len(activation.shape) - values.ndim)
        if axis >= 0 and values.shape[axis] == values.size == count and np.isin(values, (0, 1)).all():
            return activation, mask
    return None


def random_masks(model: ir.Model, ratio: float, seed: int = 0, *, coupled: bool = False) -> Masks:
    """For every Conv/ConvTranspose/Gemm whose output is not a graph output: its output channels kept
    at random, at least one. Independent per layer (``ratio`` of each layer's channels pruned), or
    ``coupled``: one draw per channel group (channel_deps), each pruned with probability ``ratio``, so
    that layers whose channels only go together (a residual stream, a depthwise conv and its expansion)
    are pruned at the same channels, as a structured pruner would."""
    rng = np.random.default_rng(seed)
    draws = (
        {slot: draw for group in analyze_channels(model).groups() for draw in [rng.random()] for slot in group}
        if coupled
        else {}
    )
    masks = {}
    for node in model.graph:
        output = node.outputs[0]
        count = channel_count(output)
        if node.op_type not in MASKED_LAYERS or not count or output.is_graph_output():
            continue
        if coupled:
            scores = np.array([draws[Slot(output, CHANNEL_AXIS, channel)] for channel in range(count)])
            kept = np.flatnonzero(scores >= ratio) if scores.max() >= ratio else [scores.argmax()]
        else:
            kept = rng.choice(count, count - min(round(ratio * count), count - 1), replace=False)
        masks[node_name(node)] = sorted(int(channel) for channel in kept)
    return masks
