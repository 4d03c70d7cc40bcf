"""``attach_gates``: puts a FeatReg gate in front of every conv of any traceable net, in place.

The net is traced with ``torch.fx`` (symbolic tracing: the graph keeps the net's module calls and their
qualified names, so gates can take a ReLU module's place under its own name and the state dict keeps its
keys; ``torch.export`` lowers to ATen ops without the modules and could not be put back into the net in
place). A submodule fx cannot trace is kept as one opaque call and the convs inside it are reported.

Every conv whose input is a hidden feature (a value that depends on some conv's output: not the network's
input, nor something computed from it alone) gets a :class:`ThresholdGate` on that input; a feature read by
several convs gets one gate. Where the feature is:

- a ReLU's output (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``x.relu()``): the gate takes the ReLU's place
  for every reader of it; at threshold 0 the gate is the ReLU, so the dense model is unchanged;
- another activation's output (PReLU, LeakyReLU, SiLU, GELU, ...): the gate goes after the activation, read
  by the convs only; it zeroes the activation's negative outputs, so the dense model changes (reported);
- any other value (a sum, a concatenation, a conv's output): the gate goes in front of the convs; exact at
  threshold 0 where the value cannot be negative (a concatenation or sum of ReLU outputs, ...), otherwise
  the dense model changes (reported).

Convs the ``featreg`` pass cannot rewrite are not gated, with the reason: the input conv, transposed, 1-D and
3-D convs, grouped convs that are not depthwise, a conv module called at several places (shared weights).

Where every gate takes a ReLU module's place and that module runs once, the modules are swapped and the
net's own ``forward`` is kept. Otherwise the net's ``forward`` becomes the traced graph's, with the gates in
it (set on the instance; the gates are registered in ``net.featreg_gates``): the control flow fx traced is
fixed, as it is for any fx-transformed net.
"""

from __future__ import annotations

import dataclasses
import operator
import types

import torch
import torch.fx
from torch import nn

from edgesparse.frontends.errors import FrontendError
from edgesparse.frontends.featreg.gate import ThresholdGate

GATES_ATTRIBUTE = "featreg_gates"

RELU_MODULES = (nn.ReLU,)
RELU_FUNCTIONS = {torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu_}
RELU_METHODS = {"relu", "relu_"}
ACTIVATION_MODULES = (
    nn.PReLU,
    nn.LeakyReLU,
    nn.RReLU,
    nn.ReLU6,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
)
ACTIVATION_FUNCTIONS = {
    nn.functional.prelu,
    nn.functional.leaky_relu,
    nn.functional.relu6,
    nn.functional.elu,
    nn.functional.selu,
    nn.functional.celu,
    nn.functional.gelu,
    nn.functional.silu,
    nn.functional.mish,
    nn.functional.hardswish,
    nn.functional.hardtanh,
    nn.functional.softplus,
    torch.tanh,
    torch.sigmoid,
}
ACTIVATION_METHODS = {"sigmoid", "tanh"}
# Ops whose output is >= 0 where every tensor input is (a gate at threshold 0 is then exact).
NONNEGATIVE_PRESERVING_FUNCTIONS = {
    torch.cat,
    torch.concat,
    torch.stack,
    operator.add,
    torch.add,
    operator.mul,
    torch.mul,
    operator.getitem,
    torch.flatten,
    nn.functional.pixel_shuffle,
    nn.functional.pixel_unshuffle,
    nn.functional.max_pool2d,
    nn.functional.avg_pool2d,
    nn.functional.adaptive_avg_pool2d,
    nn.functional.dropout,
    torch.relu6 if hasattr(torch, "relu6") else nn.functional.relu6,
    nn.functional.relu6,
}
NONNEGATIVE_PRESERVING_MODULES = (
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Identity,
    nn.ReLU6,
    nn.Upsample,
)
NONNEGATIVE_PRESERVING_METHODS = {"view", "reshape", "flatten", "contiguous", "permute", "add", "mul", "clone"}


@dataclasses.dataclass
class GatedFeature:
    """One gate: its module name, the convs reading it, where it went and whether the dense net changed."""

    gate: str
    convs: list[str]
    placement: str  # "replaces ReLU <name>", "after PReLU <name>", "in front of the convs (<what the input is>)"
    exact: bool  # at threshold 0 the net computes what it did before


@dataclasses.dataclass
class SkippedConv:
    conv: str
    reason: str


@dataclasses.dataclass
class GateReport:
    gated: list[GatedFeature]
    skipped: list[SkippedConv]
    forward_replaced: bool  # the net's forward is now the traced graph's (False: modules swapped in place)
    max_change: float  # largest |output change| on example_inputs, all gates at threshold 0

    @property
    def dense_model_changes(self) -> bool:
        return not all(feature.exact for feature in self.gated)

    @property
    def gates(self) -> list[str]:
        return [feature.gate for feature in self.gated]

    def __str__(self) -> str:
        lines = [f"{len(self.gated)} gates in front of {sum(len(f.convs) for f in self.gated)} convs"]
        for feature in self.gated:
            note = "" if feature.exact else "  [dense model changes]"
            lines.append(f"  {feature.gate}: {feature.placement} -> {', '.join(feature.convs)}{note}")
        for skipped in self.skipped:
            lines.append(f"  not gated: {skipped.conv}: {skipped.reason}")
        if self.dense_model_changes:
            lines.append(
                f"the dense model changes (largest output change at threshold 0: {self.max_change:.3g}): train it "
                "with the gates"
            )
        if self.forward_replaced:
            lines.append("the net's forward is now the traced graph's, gates included")
        return "\n".join(lines)


class _Tracer(torch.fx.Tracer):
    """fx's tracer, with given submodules kept as opaque calls."""

    def __init__(self, opaque: dict[str, str]):
        super().__init__()
        self.opaque = opaque  # qualified name -> why fx cannot trace it
        self.failed: str | None = None

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.opaque or super().is_leaf_module(module, qualified_name)

    def call_module(self, module, forward, args, kwargs):
        try:
            return super().call_module(module, forward, args, kwargs)
        except Exception:
            if self.failed is None:
                self.failed = self.path_of_module(module)  # the innermost module whose trace failed
            raise


def trace(net: nn.Module) -> tuple[torch.fx.Graph, dict[str, str]]:
    """The net's fx graph, and the submodules kept opaque (name -> why)."""
    opaque: dict[str, str] = {}
    while True:
        tracer = _Tracer(opaque)
        try:
            return tracer.trace(net), opaque
        except Exception as error:  # noqa: BLE001  (fx raises any type where the code is not traceable)
            failed = tracer.failed
            if not failed or failed in opaque:
                raise FrontendError(
                    f"{type(net).__name__} cannot be traced with torch.fx ({type(error).__name__}: "
                    f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}), so no conv is gated"
                ) from error
            opaque[failed] = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def _module(net: nn.Module, node: torch.fx.Node) -> nn.Module | None:
    return net.get_submodule(node.target) if node.op == "call_module" else None


def _is_relu(net: nn.Module, node: torch.fx.Node) -> bool:
    return (
        (node.op == "call_module" and isinstance(_module(net, node), RELU_MODULES))
        or (node.op == "call_function" and node.target in RELU_FUNCTIONS)
        or (node.op == "call_method" and node.target in RELU_METHODS)
    )


def _activation(net: nn.Module, node: torch.fx.Node) -> str | None:
    if node.op == "call_module" and isinstance(_module(net, node), ACTIVATION_MODULES):
        return type(_module(net, node)).__name__
    if node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS:
        return node.target.__name__
    if node.op == "call_method" and node.target in ACTIVATION_METHODS:
        return node.target
    return None


def _preserves_nonnegative(net: nn.Module, node: torch.fx.Node) -> bool:
    return (
        (node.op == "call_module" and isinstance(_module(net, node), NONNEGATIVE_PRESERVING_MODULES))
        or (node.op == "call_function" and node.target in NONNEGATIVE_PRESERVING_FUNCTIONS)
        or (node.op == "call_method" and node.target in NONNEGATIVE_PRESERVING_METHODS)
    )


def _input_nodes(node: torch.fx.Node) -> list[torch.fx.Node]:
    return list(node.all_input_nodes)


def _conv_refusal(conv: nn.Module) -> str | None:
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        return f"{type(conv).__name__}: the featreg pass gates 2-D Conv only"
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__}: the featreg pass gates 2-D Conv only"
    if conv.groups != 1 and not (conv.in_channels == conv.groups and conv.out_channels == conv.groups):
        return f"grouped conv (groups {conv.groups}) that is not depthwise: the featreg pass does not rewrite it"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r}: exported as a Pad before the Conv, which the gate cannot reach"
    return None


def _site(node: torch.fx.Node) -> str:
    """A module call's module name, or (for a function) the traced node's name."""
    return node.target if node.op == "call_module" else f"({node.name})"


def _describe(net: nn.Module, node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return f"{type(_module(net, node)).__name__} {node.target}"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def attach_gates(net: nn.Module, example_inputs) -> GateReport:
    """Gates ``net`` in place (module docstring); returns what was gated and what not, and why.
    ``example_inputs``: a tensor or a tuple of the forward's positional arguments (the dense output before
    and after is compared on them)."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if any(isinstance(module, ThresholdGate) for module in net.modules()):
        raise FrontendError(f"{type(net).__name__} already has gates: attach_gates gates a net once")
    was_training = net.training
    net.eval()
    with torch.no_grad():
        before = net(*example_inputs)
    graph, opaque = trace(net)
    modules = dict(net.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    hidden: dict[torch.fx.Node, bool] = {}
    nonnegative: dict[torch.fx.Node, bool] = {}
    for node in graph.nodes:
        inputs = _input_nodes(node)
        module = _module(net, node)
        is_conv = isinstance(module, nn.modules.conv._ConvNd) or (
            node.op == "call_function" and node.target in (nn.functional.conv2d, nn.functional.conv_transpose2d)
        )
        has_conv_inside = node.target in opaque and any(
            isinstance(m, nn.modules.conv._ConvNd) for m in module.modules()
        )
        hidden[node] = is_conv or has_conv_inside or any(hidden.get(i, False) for i in inputs)
        numbers = [arg for arg in (*node.args, *node.kwargs.values()) if isinstance(arg, (int, float))]
        nonnegative[node] = _is_relu(net, node) or (
            _preserves_nonnegative(net, node)
            and bool(inputs)
            and all(nonnegative.get(i, False) for i in inputs)
            and all(number >= 0 for number in numbers)  # x + c, x * c: c >= 0
        )

    skipped: list[SkippedConv] = []
    for name in opaque:
        for inner, module in modules[name].named_modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                skipped.append(
                    SkippedConv(
                        f"{name}.{inner}" if inner else name,
                        f"inside {name}, which torch.fx cannot trace ({opaque[name]})",
                    )
                )
    by_feature: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_function" and node.target in (nn.functional.conv2d, nn.functional.conv_transpose2d):
            skipped.append(SkippedConv(node.name, "a functional conv: only conv modules are gated"))
            continue
        module = _module(net, node)
        if not isinstance(module, nn.modules.conv._ConvNd) or node.target in opaque:
            continue
        feature = node.args[0] if node.args else node.kwargs.get("input")
        reason = _conv_refusal(module)
        if reason is None and calls[node.target] > 1:
            reason = f"called at {calls[node.target]} places (shared weights): the featreg pass refuses shared weights"
        if reason is None and not isinstance(feature, torch.fx.Node):
            reason = "its input is not a traced value"
        if reason is None and feature.op == "placeholder":
            reason = "reads the network's input"
        if reason is None and not hidden[feature]:
            reason = "reads a value computed from the network's input alone, not a hidden feature"
        if reason is not None:
            skipped.append(SkippedConv(node.target, reason))
        else:
            by_feature.setdefault(feature, []).append(node)

    gates: dict[str, ThresholdGate] = {}
    gated: list[GatedFeature] = []
    swapped: list[str] = []
    rewrite = False
    for feature, convs in by_feature.items():
        conv_names = [conv.target for conv in convs]
        if _is_relu(net, feature) and not (feature.op == "call_module" and calls[feature.target] > 1):
            if feature.op == "call_module":
                name = feature.target
                swapped.append(name)
            else:
                name, rewrite = f"{GATES_ATTRIBUTE}.{feature.name}", True
                gates[feature.name] = ThresholdGate()
                relu_input = feature.args[0] if feature.args else feature.kwargs["input"]
                with graph.inserting_after(feature):
                    gate_node = graph.call_module(name, (relu_input,))
                feature.replace_all_uses_with(gate_node)
                graph.erase_node(feature)
            gated.append(GatedFeature(name, conv_names, f"replaces ReLU {_site(feature)}", True))
            continue
        rewrite = True
        gates[feature.name] = ThresholdGate()
        name = f"{GATES_ATTRIBUTE}.{feature.name}"
        with graph.inserting_after(feature):
            gate_node = graph.call_module(name, (feature,))
        for conv in convs:
            conv.replace_input_with(feature, gate_node)
        activation = _activation(net, feature)
        if _is_relu(net, feature):
            placement, exact = f"after ReLU {feature.target} (called at several places)", True
        elif activation is not None:
            placement, exact = f"after {activation} {_site(feature)}", False
        else:
            exact = nonnegative[feature]
            placement = f"in front of the convs (their input: {_describe(net, feature)}" + (
                ", never negative)" if exact else ", no activation)"
            )
        gated.append(GatedFeature(name, conv_names, placement, exact))

    for name in swapped:
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, ThresholdGate())
    if rewrite:
        net.add_module(GATES_ATTRIBUTE, nn.ModuleDict(gates))
        graph.lint()
        traced = torch.fx.GraphModule(net, graph)
        # The generated forward refers to the net's modules by qualified name: bound to the net, it runs the
        # net's own (now gated) modules, and the net stays one object (state dict, .to(), DDP, export).
        net.forward = types.MethodType(type(traced).forward, net)
    with torch.no_grad():
        after = net(*example_inputs)
    max_change = max(
        (float((a - b).abs().max()) for a, b in zip(_tensors(before), _tensors(after)) if a.numel()), default=0.0
    )
    net.train(was_training)
    return GateReport(gated, skipped, rewrite, max_change)


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [tensor for item in output for tensor in _tensors(item)]
    if isinstance(output, dict):
        return [tensor for item in output.values() for tensor in _tensors(item)]
    return []
