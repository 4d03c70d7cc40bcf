"""``strip-channels``: physically removes pruned channels from a CNN's ONNX graph (an in-place pass).

A pruned channel is one whose value is a known constant (see channel_constants): multiplied by 0 in a
per-channel mask (``Mul`` by a [1, C, 1, 1] or [C, 1, 1] 0/1 constant, after a layer and its optional
BatchNormalization), computed by an all-zero filter, or left out of a mask file (``masks=``: node name
-> kept channel indices, inserted as such masks first). Channels go by group (see channel_deps): a group
is removed when
- none of its channels is pinned: graph inputs and outputs keep their width; ops without a rule,
  Reshapes that mix channels with other axes and weights shared between nodes keep theirs, and
- every layer summing one of its channels into its outputs can do without it: the layer's weights never
  read it, or it is 0, or it is a constant whose contribution is folded exactly into the layer's bias
  (Conv without padding, Gemm: the ``fold`` of its handler in channel_ops). A constant read by a padded
  Conv is kept: at the borders it is no bias. A masked channel followed by a BatchNormalization is such
  a constant, not a 0.
What it cannot prove safe it leaves as it is, and says why in the report.

``round_to=N`` (default 1: every removable channel goes) keeps the fewest removable channels needed for the
width of every tensor that loses channels to be a multiple of N (vectorized kernels, ONNX Runtime's blocked
NCHWc convs and TVM's schedules, want multiples of the vector width; Torch-Pruning's ``round_to``). The
channels kept back are the first removable ones of the tensor (lowest indices): they are still masked, so
the outputs are exactly the masked model's, the mask keeps its zeros. Keeping a group back widens every
tensor of the group, so the rounding repeats until no tensor needs more; a tensor whose every removable
channel is kept back is left at its original width. The report lists them under "round_to".

Preserves: the model's outputs (up to float rounding of folded biases), its inputs and outputs, and
every channel it keeps. Removes the channels from every weight, bias, BatchNormalization parameter, mask,
Conv group count, Split/Slice/Reshape/Resize shape constant (the ``edit`` of each op's handler in
channel_ops) and value shape of their group; then deletes masks left all ones and initializers left
unused. Constant nodes become initializers first, as ``lift-constants`` does. Records ``strip_channels``
for the report: each layer's input and output channels before and after, and the pruned channels it
kept, by reason.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from edgesparse.passes.channel_constants import channel_constants
from edgesparse.passes.channel_deps import ChannelGraph, analyze_channels
from edgesparse.passes.channel_masks import insert_masks, load_masks, mask_operands
from edgesparse.passes.channel_ops import (
    CHANNEL_AXIS,
    Constants,
    Kept,
    Slot,
    channel_count,
    channel_slots,
    has_input,
    node_label,
    node_name,
    op_handler,
)
from edgesparse.passes.cleanup import CLEANUP_PASSES, lift_constants_pass
from edgesparse.passes.errors import PassError
from edgesparse.passes.initializers import add_initializer
from edgesparse.passes.registry import register_pass
from edgesparse.passes.report import StrippedChannels, record


@register_pass("strip-channels", requires=CLEANUP_PASSES)
class StripChannelsPass(ir.passes.InPlacePass):
    """Removes the pruned channels it can prove unused (see the module docstring); ``masks``: a mask file."""

    def __init__(self, masks: str | os.PathLike | None = None, round_to: int = 1):
        super().__init__()
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise PassError(f"strip-channels: round_to must be a positive integer, not {round_to!r}")
        self.round_to = round_to
        # Read now, so that a bad file fails before any pass runs.
        self.masks = load_masks(masks) if masks is not None else {}

    def expected_model(self, model: ir.Model) -> ir.Model:
        """What the result must compute (``--debug`` checks it): ``model`` with the mask file's masks applied."""
        expected = model.clone()
        if self.masks:
            insert_masks(expected, self.masks)
        return expected

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = lift_constants_pass()(model).modified
        if self.masks:
            insert_masks(model, self.masks)
            modified = True
        deps = analyze_channels(model)
        constants = channel_constants(model, deps)
        removed, kept = plan_removal(deps, constants, self.round_to)
        if not removed and not kept:
            warnings.warn(
                "strip-channels found no masked channel (give --masks, or masks as Mul constants in the graph): "
                "the model is unchanged",
                stacklevel=2,
            )
        widths_before = layer_widths(model)
        if removed:
            remove_channels(model, deps, constants, removed)
            modified = True
        modified |= remove_spent_masks(model)
        if modified:
            RemoveUnusedNodesPass()(model)
        widths_after = layer_widths(model)
        layers = [
            {
                "node": node_name(node),
                "op_type": node.op_type,
                "in_channels": [before[0], widths_after[node][0]],
                "out_channels": [before[1], widths_after[node][1]],
            }
            for node, before in widths_before.items()
        ]
        record(
            model,
            StrippedChannels(
                layers, [{"reason": reason, "channels": _by_value(slots)} for reason, slots in kept.items()]
            ),
        )
        return ir.passes.PassResult(model, modified)


def layer_widths(model: ir.Model) -> dict[ir.Node, tuple[int | None, int | None]]:
    """(input channels, output channels) of every layer: every node whose handler folds (Conv, ConvTranspose,
    Gemm, MatMul)."""
    return {
        node: (channel_count(node.inputs[0]), channel_count(node.outputs[0]))
        for node in model.graph
        if (handler := op_handler(node)) and handler.fold
    }


def _by_value(slots: list[Slot]) -> dict[str, list[int]]:
    channels = defaultdict(list)
    for slot in slots:
        if slot.value.const_value is None:
            channels[slot.value.name].append(slot.index)
    return dict(channels)


# ----------------------------------------------------------------------------------- planning
class CannotFold(Exception):
    """A layer cannot do without an input channel; the message says why."""


def plan_removal(
    deps: ChannelGraph, constants: Constants, round_to: int = 1
) -> tuple[set[Slot], dict[str, list[Slot]]]:
    """The slots to remove, and the groups of pruned channels (some channel constant) kept, by reason;
    ``round_to``: see the module docstring."""
    removed: set[Slot] = set()
    kept: dict[str, list[Slot]] = defaultdict(list)
    group_of: dict[Slot, list[Slot]] = {}
    for group in deps.groups():
        reason = _refusal(group, deps, constants)
        if reason is None:
            removed.update(group)
            group_of.update(dict.fromkeys(group, group))
        elif any(slot in constants for slot in group):
            kept[reason] += group
    # A tensor with no channels left is no tensor: keep the group of its first channel.
    for value in {slot.value for slot in removed if slot.value.const_value is None}:
        if all(slot in removed for slot in channel_slots(value)):
            group = group_of[Slot(value, CHANNEL_AXIS, 0)]
            removed.difference_update(group)
            kept[f"removing them would leave {value.name!r} without channels"] += group
    if round_to > 1:
        _round_widths(deps, removed, group_of, kept, round_to)
    return removed, kept


def _round_widths(
    deps: ChannelGraph, removed: set[Slot], group_of: dict[Slot, list[Slot]], kept: dict[str, list[Slot]], round_to: int
) -> None:
    """Takes groups out of ``removed`` until every tensor losing channels keeps a multiple of ``round_to``:
    for each tensor, its first removed channels (lowest indices), as few as needed."""
    reason = f"round_to={round_to}: kept so that the width is a multiple of {round_to}"
    changed = True
    while changed:
        changed = False
        cut: dict[tuple[ir.Value, int], list[Slot]] = defaultdict(list)
        for slot in removed:
            if slot.value.const_value is None:
                cut[slot.value, slot.axis].append(slot)
        for (value, axis), slots in sorted(cut.items(), key=lambda item: deps.order[item[0][0]]):
            if not all(slot in removed for slot in slots):
                continue  # a group kept back in this round already widened it: recount next round
            full = value.shape[axis] if value.shape is not None else None
            if not isinstance(full, int):
                continue
            extra = -(full - len(slots)) % round_to
            for slot in sorted(slots, key=lambda slot: slot.index)[:extra]:
                if slot in removed:
                    group = group_of[slot]
                    removed.difference_update(group)
                    kept[reason] += group
                    changed = True


def _refusal(group: list[Slot], deps: ChannelGraph, constants: Constants) -> str | None:
    for slot in group:
        if slot in deps.pins:
            return deps.pins[slot]
    try:
        for slot in group:
            for layer in deps.contractions.get(slot, ()):
                bias_contribution(layer, slot, constants.get(slot))
    except CannotFold as exc:
        return str(exc)
    return None


def bias_contribution(layer: ir.Node, slot: Slot, constant: float | None) -> np.ndarray:
    """What input channel ``slot`` adds to each output channel of ``layer``: the vector to fold into the
    layer's bias when the channel goes (how: the ``fold`` of its handler). Raises :class:`CannotFold` where
    that is no bias."""
    fold = op_handler(layer).fold(layer)
    taps = np.take(layer.inputs[1].const_value.numpy(), slot.index, fold.axis)
    taps = taps.reshape(taps.shape[0], -1).astype(np.float64)  # [output channels, kernel positions]
    if not taps.any() or constant == 0:
        return np.zeros(taps.shape[0])
    if constant is None:
        raise CannotFold(f"read by {node_label(layer)} and not a known constant")
    if fold.refusal is not None:
        raise CannotFold(fold.refusal)
    if has_input(layer, 2) and len(layer.inputs[2].uses()) > 1:
        raise CannotFold(f"non-zero constants to fold into the bias {layer.inputs[2].name!r}, which other nodes share")
    return constant * fold.scale * taps.sum(1)


# ----------------------------------------------------------------------------------- rewriting
def remove_channels(model: ir.Model, deps: ChannelGraph, constants: Constants, removed: set[Slot]) -> None:
    # Contributions come from the weights as they are, before any of them is cut.
    folds = [
        (layer, bias_contribution(layer, slot, constants.get(slot)))
        for slot in sorted(removed, key=deps.slot_key)
        for layer in deps.contractions.get(slot, ())
    ]
    cut: dict[tuple[ir.Value, int], list[int]] = defaultdict(list)
    for slot in removed:
        cut[slot.value, slot.axis].append(slot.index)
    kept: Kept = {
        value: np.setdiff1d(np.arange(channel_count(value)), indices)
        for (value, _), indices in cut.items()
        if value.const_value is None
    }
    # Shape constants and attributes are computed from the old widths: before any shape changes.
    for node in list(model.graph):
        handler = op_handler(node)
        if handler and handler.edit and any(value in kept for value in (*node.inputs, *node.outputs)):
            handler.edit(node, kept)
    for (value, axis), indices in cut.items():
        if value.const_value is not None:
            array = np.delete(value.const_value.numpy(), indices, axis)
            value.const_value = ir.tensor(array, name=value.name)
            value.shape = ir.Shape(array.shape)
        else:
            value.shape = ir.Shape(
                [dim - len(indices) if index == axis else dim for index, dim in enumerate(value.shape)]
            )
    for layer, contribution in folds:
        if contribution.any():
            output = layer.outputs[0]
            _add_to_bias(layer, contribution[kept[output]] if output in kept else contribution)


def _add_to_bias(layer: ir.Node, contribution: np.ndarray) -> None:
    if not has_input(layer, 2):
        layer.resize_inputs(3)
        layer.replace_input_with(
            2,
            add_initializer(
                layer.graph, f"{node_name(layer)}_bias", np.zeros(len(contribution), layer.outputs[0].dtype.numpy())
            ),
        )
    bias = layer.inputs[2]
    array = bias.const_value.numpy()
    array = (array + contribution.astype(array.dtype)).astype(array.dtype)
    bias.const_value = ir.tensor(array, name=bias.name)
    bias.shape = ir.Shape(array.shape)


def remove_spent_masks(model: ir.Model) -> bool:
    """Deletes the masks whose every entry is 1 (all their zeros went with the channels they masked)."""
    spent = []
    for node in model.graph:
        operands = mask_operands(node)
        output = node.outputs[0]
        if (
            operands
            and operands[1].const_value.numpy().all()
            and output.shape == operands[0].shape
            and not output.is_graph_output()
        ):
            spent.append((node, operands[0]))
    for node, activation in spent:
        node.outputs[0].replace_all_uses_with(activation)
        model.graph.remove(node, safe=True)
    return bool(spent)
