"""``featreg``: each FeatReg gate + the Conv reading it becomes one ``edgesparse::GatedConv``.

Gates (each zeroes the elements <= a threshold t, per element):
    Relu(x), Max(x, 0), Clip(x, 0) without a max      t = 0
    ThresholdedRelu(x, alpha)                         t = alpha
    Where(Greater(x, t), x, 0)                        t = a constant; 0 any all-zero constant that
                                                      broadcasts to x (``torch.zeros_like`` exports a full one)
Clip(x, 0, 6) is not a gate (a gate then a clip) and stays as it is.
Convs rewritten: 2-D, groups 1 or depthwise, weight and bias constant initializers read by this conv
only (a shared weight is refused, as onnxscript's rules refuse it), explicit padding.

Thresholds, per gate: as trained; or sparsity level S from the model's metadata ``featreg.levels``
(``{"0.9": {gate node name: t, ...}, ...}``, written by the FeatReg exporter); or, for a level the metadata
lacks, calibrated on real inputs (``calibrate``: a sequence of input dicts; the command line reads them from
photos or .npz files with ``edgesparse.frontends.calibration``): gate by gate in graph order, the S-quantile
of the gate's input on those inputs with the gates before it already set (halfway between two feature
values, never on one), never below the trained threshold.

Per-layer decision: with calibration inputs, the gated input's sparsity is measured for every conv; a
conv below ``min_sparsity`` (where the gated kernel would be slower than dense; by default the
measured break-even below) stays gate + Conv. A conv named in ``dense_layers`` stays dense whatever its
sparsity: compile_model(..., tuning_db=) names the convs whose tuned dense kernel measured faster than the
gated one on the target (backends/gated_tuning.py, ``kernel_choice.json``).

Preserves the model's outputs exactly at the trained thresholds (GatedConv's body is the gate + Conv);
a level or calibrated threshold changes them by design. Records the report's ``layers`` (per conv:
name, op, threshold, input_sparsity, dense_macs, effective_macs) and a ``featreg`` summary.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from edgesparse.passes.cleanup import CLEANUP_PASSES
from edgesparse.passes.errors import PassError
from edgesparse.passes.gated_conv_op import DOMAIN, OP_TYPE, add_gated_conv_function
from edgesparse.passes.macs import node_macs
from edgesparse.passes.onnxruntime_ref import run_onnxruntime
from edgesparse.passes.registry import register_pass
from edgesparse.passes.report import FeatRegSummary, GatedLayer, GatedLayers, record

# Sparsity (fraction of gated-off input elements, each pixel its own random active set) below which
# the gated kernel (backends/gated_conv.py, default_schedule) for a 3x3 conv 64->64 on 1x64x128x128 is
# slower than ONNX Runtime's dense conv (all threads, full optimizations): below it the masks cost more
# than the skipped multiply-adds save, so such a conv stays dense (--min-sparsity overrides it).
# `python tools/bench.py --sections gated` prints the crossing, interpolated between levels; the runs this
# value comes from are in docs/benchmarks.md. Measure on an otherwise idle CPU: other load slows ONNX
# Runtime more than this kernel and moves the crossing down.
BREAK_EVEN_SPARSITY = 0.35
# Why a conv listed in ``dense_layers`` stays dense.
DENSE_FASTER_ON_TARGET = "the tuned dense kernel was faster on the target (tuning database)"

LEVELS_METADATA_KEY = "featreg.levels"


@dataclasses.dataclass(frozen=True)
class Gate:
    node: ir.Node
    # The pre-gate feature.
    input: ir.Value
    threshold: float

    @property
    def name(self) -> str:
        return self.node.name


def uniform_constant(value: ir.Value | None, feature: ir.Value) -> float | None:
    """The one value of a constant whose elements are all equal and that broadcasts to ``feature``'s shape
    without growing it (a scalar, or a full ``zeros_like`` tensor as ``torch.where(x > t, x, 0 * x)``
    exports); None for anything else."""
    tensor = value.const_value if value is not None else None
    if tensor is None or tensor.size == 0:
        return None
    array = tensor.numpy()
    if not np.all(array == array.flat[0]):
        return None
    if array.ndim > 0:
        shape = feature.shape
        if shape is None or not shape.is_static() or len(array.shape) > len(shape):
            return None
        try:
            if np.broadcast_shapes(array.shape, tuple(shape)) != tuple(shape):
                return None
        except ValueError:
            return None
    return float(array.flat[0])


def match_gate(value: ir.Value) -> Gate | None:
    """The gate producing ``value``, or None. Every form is exact: each zeroes the elements <= t and keeps
    the rest as they are."""
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Relu":
        return Gate(node, node.inputs[0], 0.0)
    if node.op_type == "ThresholdedRelu":
        return Gate(node, node.inputs[0], node.attributes.get_float("alpha", 1.0))
    if node.op_type == "Max" and len(node.inputs) == 2:
        for feature, other in (node.inputs, reversed(node.inputs)):
            if feature.const_value is None and uniform_constant(other, feature) == 0.0:
                return Gate(node, feature, 0.0)
        return None
    if node.op_type == "Clip":
        # Clip(x, 0) with no max is Relu; with a max it is a gate followed by a clip, not a gate.
        feature, low, high = (list(node.inputs) + [None, None])[:3]
        if high is None and uniform_constant(low, feature) == 0.0:
            return Gate(node, feature, 0.0)
        return None
    if node.op_type == "Where":
        condition, kept, other = node.inputs
        compare = condition.producer()
        if (
            compare is None
            or compare.op_type != "Greater"
            or compare.inputs[0] is not kept
            or uniform_constant(other, kept) != 0.0
        ):
            return None
        threshold = uniform_constant(compare.inputs[1], kept)
        return Gate(node, kept, threshold) if threshold is not None else None
    return None


def refusal(conv: ir.Node) -> str | None:
    """Why ``conv`` cannot become a GatedConv, or None (the rule's check)."""
    weight = conv.inputs[1]
    if weight.const_value is None or not weight.is_initializer():
        return "weight is not a constant initializer"
    if len(weight.shape) != 4:
        return f"{len(weight.shape) - 2}-D conv (only 2-D)"
    for value in conv.inputs[1:]:
        if value is None:
            continue
        others = sorted({user.name for user, _ in value.uses() if user is not conv})
        if others:
            return f"{value.name!r} is shared with {', '.join(others)}"
        if value.const_value is None:
            return f"{value.name!r} is not constant"
    if conv.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
        return "auto_pad padding"
    group = conv.attributes.get_int("group", 1)
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    if group != 1 and not (in_per_group == 1 and out_channels == group):
        return f"grouped conv (group {group}) that is not depthwise"
    return None


def gated_conv_node(conv: ir.Node, gate_input: ir.Value, threshold: float, graph: ir.Graph) -> ir.Node:
    weight = conv.inputs[1]
    bias = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2] is not None else None
    if bias is None:
        bias = ir.Value(name=f"{conv.name}.zero_bias", const_value=ir.tensor(np.zeros(weight.shape[0], np.float32)))
        graph.register_initializer(bias)
    kernel_rank = len(weight.shape) - 2
    attributes = {
        "threshold": float(threshold),
        "strides": conv.attributes.get_ints("strides", [1] * kernel_rank),
        "pads": conv.attributes.get_ints("pads", [0] * 2 * kernel_rank),
        "dilations": conv.attributes.get_ints("dilations", [1] * kernel_rank),
        "group": conv.attributes.get_int("group", 1),
    }
    return ir.node(OP_TYPE, [gate_input, weight, bias], attributes, domain=DOMAIN, name=conv.name)


def replace_node(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    ir.convenience.replace_nodes_and_values(graph, old, [old], [new], old.outputs, new.outputs)


def set_threshold(graph: ir.Graph, gate: Gate, threshold: float) -> Gate:
    """Gives the gate a new threshold, as the equivalent ThresholdedRelu; returns the new gate."""
    if threshold == gate.threshold:
        return gate
    node = ir.node("ThresholdedRelu", [gate.input], {"alpha": float(threshold)}, name=gate.name)
    replace_node(graph, gate.node, node)
    return Gate(node, gate.input, threshold)


def gated_convs(graph: ir.Graph) -> list[tuple[ir.Node, Gate]]:
    """(conv, gate) for every Conv that reads a gate's output, in graph order."""
    pairs = []
    for node in graph:
        if node.op_type == "Conv" and node.domain in ("", "ai.onnx"):
            gate = match_gate(node.inputs[0])
            if gate is not None:
                pairs.append((node, gate))
    return pairs


def gate_inputs_on(model: ir.Model, gates: list[Gate], samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each gate's input on every calibration sample (ONNX Runtime), stacked, by gate name."""
    probe = model.clone()
    values = {output.name: output for node in probe.graph for output in node.outputs}
    values.update({value.name: value for value in probe.graph.inputs})
    wanted = {gate.name: gate.input.name for gate in gates}
    for value_name in set(wanted.values()):
        if values[value_name] not in probe.graph.outputs:
            probe.graph.outputs.append(values[value_name])
    runs = [run_onnxruntime(probe, sample) for sample in samples]
    return {gate_name: np.stack([run[value_name] for run in runs]) for gate_name, value_name in wanted.items()}


def threshold_for_sparsity(features: np.ndarray, sparsity: float) -> float:
    """A threshold that gates off ``sparsity`` of ``features``, halfway between the last value gated
    off and the next one: a threshold equal to a feature value would flip on float rounding noise."""
    values = np.sort(features, axis=None)
    gated_off = int(round(sparsity * values.size))
    if gated_off == 0:
        return float(values[0]) - 1.0
    if gated_off == values.size:
        return float(values[-1])
    return float(values[gated_off - 1] + (values[gated_off] - values[gated_off - 1]) / 2)


@register_pass("featreg", requires=CLEANUP_PASSES)
class FeatRegPass(ir.passes.InPlacePass):
    def __init__(
        self,
        sparsity: float | None = None,
        calibrate: Sequence[dict[str, np.ndarray]] | None = None,
        min_sparsity: float = BREAK_EVEN_SPARSITY,
        dense_layers: Sequence[str] = (),
    ):
        if sparsity is not None and not 0.0 < sparsity < 1.0:
            raise PassError(f"featreg: sparsity {sparsity} is not a fraction between 0 and 1 (exclusive)")
        if not 0.0 <= min_sparsity <= 1.0:
            raise PassError(f"featreg: min_sparsity {min_sparsity} is not a fraction between 0 and 1")
        self.sparsity = sparsity
        self.calibrate = calibrate
        self.min_sparsity = min_sparsity
        # Convs that stay dense whatever their sparsity: the ones a tuning database measured faster dense on
        # the target (compile_model(..., tuning_db=) computes them; without a database, min_sparsity decides).
        if isinstance(dense_layers, str) or not all(isinstance(name, str) for name in dense_layers):
            raise PassError(f"featreg: dense_layers must be a list of conv names, not {dense_layers!r}")
        self.dense_layers = frozenset(dense_layers)

    def apply_level(self, model: ir.Model, samples: list[dict[str, np.ndarray]]) -> None:
        """Sets every gate to the asked level's threshold (nothing without a level): the one change of the
        model's outputs the pass makes, by design."""
        gates = {gate.name: gate for _, gate in gated_convs(model.graph)}
        for name, threshold in self.thresholds(model, list(gates.values()), samples).items():
            set_threshold(model.graph, gates[name], threshold)

    def expected_model(self, model: ir.Model) -> ir.Model:
        """What the pass's result must compute (``--debug`` checks it): ``model`` at the level's thresholds."""
        expected = model.clone()
        self.apply_level(expected, list(self.calibrate or []))
        return expected

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        samples = list(self.calibrate or [])
        self.apply_level(model, samples)
        pairs = gated_convs(graph)
        measured = gate_inputs_on(model, [gate for _, gate in pairs], samples) if samples else {}

        layers, modified = [], False
        for conv, _ in pairs:
            # Matched again: rewriting an earlier conv replaced values this gate may read.
            gate = match_gate(conv.inputs[0])
            sparsity = float(np.mean(measured[gate.name] <= gate.threshold)) if gate.name in measured else None
            dense_macs = node_macs(conv)
            reason = refusal(conv) or (
                DENSE_FASTER_ON_TARGET
                if conv.name in self.dense_layers
                else f"input sparsity {sparsity:.3f} below {self.min_sparsity}"
                if sparsity is not None and sparsity < self.min_sparsity
                else None
            )
            if reason is None:
                replace_node(graph, conv, gated_conv_node(conv, gate.input, gate.threshold, graph))
                modified = True
            layers.append(
                GatedLayer(
                    name=conv.name,
                    op="Conv" if reason else OP_TYPE,
                    gate=gate.name,
                    threshold=gate.threshold,
                    input_sparsity=sparsity,
                    dense_macs=dense_macs,
                    effective_macs=dense_macs if reason or sparsity is None else round(dense_macs * (1.0 - sparsity)),
                    kept_dense_because=reason,
                )
            )
        if modified:
            add_gated_conv_function(model)
            common.RemoveUnusedNodesPass()(model)
        record(model, GatedLayers(tuple(layers)))
        rewritten = sum(layer.op == OP_TYPE for layer in layers)
        if not layers:
            warnings.warn(
                "featreg found no gate (Relu, Max or Clip at 0, ThresholdedRelu, Where(x > t, x, 0)) before any "
                "conv: the model is unchanged",
                stacklevel=2,
            )
        record(model, FeatRegSummary(self.sparsity, len(samples), self.min_sparsity, len(layers), rewritten))
        return ir.passes.PassResult(model, modified)

    def thresholds(self, model: ir.Model, gates: list[Gate], samples: list[dict[str, np.ndarray]]) -> dict[str, float]:
        """gate name -> threshold for the asked level (empty: keep the trained thresholds)."""
        if self.sparsity is None:
            return {}
        levels = json.loads(model.metadata_props.get(LEVELS_METADATA_KEY, "{}"))
        level = next((thresholds for key, thresholds in levels.items() if np.isclose(float(key), self.sparsity)), None)
        if level is not None:
            missing = sorted({gate.name for gate in gates} - set(level))
            if missing:
                raise PassError(
                    f"featreg: level {self.sparsity} in the model's metadata has no threshold for gate(s) "
                    f"{', '.join(missing)}"
                )
            return {gate.name: float(level[gate.name]) for gate in gates}
        if not samples:
            known = ", ".join(sorted(levels)) or "none"
            raise PassError(
                f"featreg: sparsity {self.sparsity} is not among the model's levels ({known}); give --calibrate "
                "inputs to calibrate it"
            )
        return self.calibrated_thresholds(model, gates, samples)

    def calibrated_thresholds(
        self, model: ir.Model, gates: list[Gate], samples: list[dict[str, np.ndarray]]
    ) -> dict[str, float]:
        """Gate by gate in graph order, on a copy that has the earlier gates already set."""
        probe = model.clone()
        probe_gates = {gate.name: gate for _, gate in gated_convs(probe.graph)}
        thresholds = {}
        for gate in gates:
            features = gate_inputs_on(probe, [probe_gates[gate.name]], samples)[gate.name]
            thresholds[gate.name] = max(gate.threshold, threshold_for_sparsity(features, self.sparsity))
            probe_gates[gate.name] = set_threshold(probe.graph, probe_gates[gate.name], thresholds[gate.name])
        return thresholds
