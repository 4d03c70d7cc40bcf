"""Mask groups found in any CNN: the channel groups of ``strip-channels``' own coupling analysis.

:func:`attach_masks` exports the net to ONNX (edgesparse.frontends.torch_frontend), runs the default
clean-up and :func:`edgesparse.passes.channel_deps.analyze_channels` on it (the analysis strip-channels
uses, with its per-op rules in ``channel_ops``: no second copy of them here), and maps each ONNX ``Conv``
back to its ``torch.nn.Conv2d`` (the exporter writes the nodes in call order, each named after its
module's scope; both are checked). Output channels of convs that meet in one connected group of the
analysis (a residual add, a depthwise conv and the conv before it...) share one :class:`ChannelMask`;
channels of a pinned group (a graph output, an op without a rule...) are never masked.

The net is changed in place: ``net.admp_masks`` (a ModuleDict, one ChannelMask per group, part of its
state dict) and a forward hook after each masked conv's BatchNorm (or after the conv when no BatchNorm
reads it) that multiplies the output by its group's mask. Parameter names of the net stay as they were,
so weights saved before (torchvision's) still load.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from edgesparse.frontends.admp.masks import ChannelMask
from edgesparse.frontends.errors import FrontendError
from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.passes import run_pipeline
from edgesparse.passes.channel_deps import analyze_channels
from edgesparse.passes.channel_ops import channel_slots

MASKS, TAPS = "admp_masks", "admp_taps"


@dataclasses.dataclass(frozen=True)
class MaskGroup:
    """One mask: its name in ``net.admp_masks``, the convs whose output channels it masks, its size."""

    name: str
    convs: tuple[str, ...]
    channels: int


class MaskTap(nn.Module):
    """A forward hook: multiplies a layer's output by its group's mask, channel ``c`` by entry
    ``index[c]`` (``index[c] == channels``: a pinned channel, always 1)."""

    def __init__(self, mask: ChannelMask, index: torch.Tensor, conv: str):
        super().__init__()
        self.__dict__["mask"] = mask  # not a submodule: the mask lives in net.admp_masks
        self.register_buffer("index", index, persistent=False)
        self.identity = bool(torch.equal(index, torch.arange(len(index))))
        self.conv = conv

    def forward(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        vector = self.mask.vector()
        if vector is None:
            return output
        if not self.identity:
            vector = torch.cat([vector, vector.new_ones(1)])[self.index]
        return output * vector.view(1, -1, *[1] * (output.dim() - 2))


def attach_masks(
    net: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor, round_to: int = 1
) -> list[MaskGroup]:
    """Adds a soft and a hard mask per channel group to ``net`` (in place; masks start off) and returns
    the groups. ``round_to``: each hard mask keeps a multiple of this many channels."""
    if hasattr(net, MASKS):
        raise FrontendError(f"{type(net).__name__} already has masks (attach_masks was called on it)")
    if round_to < 1:
        raise FrontendError(f"round_to must be at least 1, not {round_to}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    calls, norm_after = _conv_calls(net, tuple(example_inputs))
    onnx_convs = _analysed_convs(net, tuple(example_inputs))
    if len(onnx_convs) != len(calls):
        raise FrontendError(
            f"the ONNX export has {len(onnx_convs)} Conv nodes for {len(calls)} conv calls: attach_masks needs "
            "each Conv2d called once per forward"
        )
    # Conv i -> the component of each of its output channels (None: pinned)
    components: list[list[int | None]] = []
    for name, (node_name, slots) in zip(calls, onnx_convs):
        scope = node_name.rsplit("/", 2)[-2] if node_name.count("/") >= 2 else ""
        if scope and not name.endswith(scope):
            raise FrontendError(f"the ONNX Conv {node_name!r} does not match the conv {name!r} called in its place")
        components.append(slots)
    # Convs that share a component share a mask: union-find over convs.
    parent = list(range(len(calls)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for conv, slots in enumerate(components):
        for component in slots:
            if component is not None:
                if component in owner:
                    parent[find(conv)] = find(owner[component])
                else:
                    owner[component] = conv
    members: dict[int, list[int]] = {}
    for conv, slots in enumerate(components):
        if any(component is not None for component in slots):
            members.setdefault(find(conv), []).append(conv)

    modules = dict(net.named_modules())
    masks, taps, groups = nn.ModuleDict(), nn.ModuleDict(), []
    for convs in members.values():
        order = list(dict.fromkeys(c for conv in convs for c in components[conv] if c is not None))
        position = {component: index for index, component in enumerate(order)}
        name = _key(calls[convs[0]])
        mask = ChannelMask(len(order), round_to)
        masks[name] = mask
        for conv in convs:
            index = torch.tensor([len(order) if c is None else position[c] for c in components[conv]])
            tap = MaskTap(mask, index, calls[conv])
            taps[_key(calls[conv])] = tap
            modules[norm_after.get(calls[conv], calls[conv])].register_forward_hook(tap)
        groups.append(MaskGroup(name, tuple(calls[conv] for conv in convs), len(order)))
    net.add_module(MASKS, masks)
    net.add_module(TAPS, taps)
    return groups


def _key(module_name: str) -> str:
    return module_name.replace(".", "_")


def _conv_calls(net: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[list[str], dict[str, str]]:
    """The Conv2d modules in call order, and conv -> the BatchNorm2d that reads its output directly."""
    calls: list[str] = []
    outputs: dict[int, str] = {}
    norm_after: dict[str, str] = {}
    kept = []  # tensors alive until the end, so that their ids stay unique

    def conv_hook(name):
        def hook(module, args, output):
            calls.append(name)
            outputs[id(output)] = name
            kept.append(output)

        return hook

    def norm_hook(name):
        def hook(module, args):
            conv = outputs.get(id(args[0]))
            if conv is not None:
                norm_after.setdefault(conv, name)

        return hook

    handles = []
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook(name)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(norm_hook(name)))
    training = net.training
    try:
        with torch.no_grad():
            net.eval()(*inputs)
    finally:
        net.train(training)
        for handle in handles:
            handle.remove()
    if len(set(calls)) != len(calls):
        twice = sorted({name for name in calls if calls.count(name) > 1})
        raise FrontendError(f"attach_masks needs each Conv2d called once per forward; called more often: {twice}")
    return calls, norm_after


def _analysed_convs(net: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[str, list[int | None]]]:
    """For each ONNX Conv of the exported net, in graph order: its name, and the channel group of each of
    its output channels in strip-channels' analysis (None where the group is pinned)."""
    model = run_pipeline(from_torch(copy.deepcopy(net), inputs), "default")
    deps = analyze_channels(model)
    component = {}
    for number, group in enumerate(deps.groups()):
        pinned = any(slot in deps.pins for slot in group)
        for slot in group:
            component[slot] = None if pinned else number
    return [
        (node.name, [component.get(slot) for slot in channel_slots(node.outputs[0])])
        for node in model.graph
        if node.op_type == "Conv"
    ]


def mask_groups(net: nn.Module) -> dict[str, ChannelMask]:
    """Group name -> its mask (those :func:`attach_masks` added)."""
    if not hasattr(net, MASKS):
        raise FrontendError(f"{type(net).__name__} has no masks: call attach_masks first")
    return dict(getattr(net, MASKS).items())


@torch.no_grad()
def group_magnitudes(net: nn.Module) -> dict[str, torch.Tensor]:
    """Group name -> per mask entry, the summed |BatchNorm gamma| of the channels it masks (|filter| L2
    norm for a conv that no BatchNorm follows): the magnitude criterion."""
    modules = dict(net.named_modules())
    sums = {
        name: torch.zeros(mask.hard.numel() + 1, device=mask.hard.device) for name, mask in mask_groups(net).items()
    }
    masks = {id(mask): name for name, mask in mask_groups(net).items()}
    for tap in getattr(net, TAPS).values():
        conv = modules[tap.conv]
        norm = _norm_of(net, tap)
        weight = norm.weight.abs() if norm is not None else conv.weight.flatten(1).norm(dim=1)
        sums[masks[id(tap.mask)]].index_add_(0, tap.index, weight.to(sums[masks[id(tap.mask)]].dtype))
    return {name: values[:-1] for name, values in sums.items()}


def _norm_of(net: nn.Module, tap: MaskTap) -> nn.BatchNorm2d | None:
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d) and tap in module._forward_hooks.values():
            return module
    return None
