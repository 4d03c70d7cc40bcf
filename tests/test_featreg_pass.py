"""The featreg pass on onnx-ir graphs, checked in ONNX Runtime (which runs GatedConv's function body)."""

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch
from torch import nn

from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.frontends.zoo import build_zoo_model
from edgesparse.passes import EdgesparseError, run_pipeline
from edgesparse.passes.featreg import LEVELS_METADATA_KEY
from edgesparse.passes.onnxruntime_ref import max_relative_error, random_inputs, run_onnxruntime
from edgesparse.passes.report import FeatRegSummary, GatedLayers, read


class WhereGate(nn.Module):
    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        return torch.where(x > self.threshold, x, 0.0)


class ZerosLikeWhereGate(WhereGate):
    """The commonest hand-written gate: its zero exports as a full constant tensor, not a scalar."""

    def forward(self, x):
        return torch.where(x > self.threshold, x, torch.zeros_like(x))


class MaxGate(nn.Module):
    def forward(self, x):
        return torch.maximum(x, torch.zeros(()))


class ClampGate(nn.Module):
    def __init__(self, high: float | None = None):
        super().__init__()
        self.high = high

    def forward(self, x):
        return torch.clamp(x, min=0.0, max=self.high)


class GateConv(nn.Module):
    """stem conv -> gate -> conv (-> gate -> conv), optionally the gate also read by a residual add."""

    def __init__(self, gate: nn.Module, width=8, stride=1, dilation=1, groups=1, residual=False):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.gate = gate
        self.conv = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups)
        self.residual = residual

    def forward(self, x):
        gated = self.gate(self.stem(x))
        out = self.conv(gated)
        return out + gated if self.residual else out


def export(module: nn.Module, shape=(1, 3, 9, 11)) -> ir.Model:
    torch.manual_seed(0)
    for parameter in module.parameters():
        nn.init.normal_(parameter, std=0.3)
    return from_torch(module.eval(), torch.randn(shape), input_names=["input"], output_names=["output"])


def featreg(model: ir.Model, **options) -> ir.Model:
    return run_pipeline(model.clone(), "default,featreg", pass_options={"featreg": options})


def layers(model: ir.Model) -> list[dict]:
    return read(model, GatedLayers).to_json()


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def assert_same_outputs(original: ir.Model, rewritten: ir.Model):
    inputs = random_inputs(original, seed=1)
    expected, actual = run_onnxruntime(original, inputs)["output"], run_onnxruntime(rewritten, inputs)["output"]
    assert max_relative_error(actual, expected) < 1e-5


def calibration_samples(model: ir.Model, count=3) -> list[dict[str, np.ndarray]]:
    return [random_inputs(model, seed=100 + index) for index in range(count)]


@pytest.mark.parametrize(
    "gate, threshold",
    [
        (nn.ReLU(), 0.0),
        (WhereGate(0.25), 0.25),
        (WhereGate(-0.1), -0.1),
        (ZerosLikeWhereGate(0.25), 0.25),
        (ZerosLikeWhereGate(0.0), 0.0),
        (MaxGate(), 0.0),
        (ClampGate(), 0.0),
    ],
    ids=["relu", "where", "where-negative", "where-zeros-like", "where-zeros-like-0", "max", "clamp-min"],
)
def test_gate_and_conv_become_one_gated_conv_with_the_same_outputs(gate, threshold):
    original = export(GateConv(gate))
    rewritten = run_pipeline(original.clone(), "default,featreg", debug=True)  # debug: ORT-compared after each pass
    assert op_types(rewritten) == ["Conv", "GatedConv"]
    node = rewritten.graph.node(1)
    assert node.domain == "edgesparse"
    assert node.attributes.get_float("threshold") == pytest.approx(threshold)
    assert ("edgesparse", "GatedConv", "") in rewritten.functions
    assert_same_outputs(original, rewritten)
    assert [layer["op"] for layer in layers(rewritten)] == ["GatedConv"]


def test_a_clip_with_a_max_is_not_a_gate_and_stays():
    """Clip(x, 0, 6) is a gate followed by a clip: a GatedConv would drop the clip."""
    original = export(GateConv(ClampGate(high=0.5)))
    rewritten = run_pipeline(original.clone(), "default,featreg", debug=True)
    assert "GatedConv" not in op_types(rewritten)
    assert_same_outputs(original, rewritten)
    assert read(rewritten, FeatRegSummary).gated_convs == 0


def test_a_nonzero_constant_in_where_is_not_a_gate():
    class WhereOnes(nn.Module):
        def forward(self, x):
            return torch.where(x > 0.0, x, torch.ones_like(x))

    rewritten = featreg(export(GateConv(WhereOnes())))
    assert "GatedConv" not in op_types(rewritten)


def test_thresholded_relu_gate_is_recognised():
    original = export(GateConv(nn.ReLU()))
    relu = next(node for node in original.graph if node.op_type == "Relu")
    thresholded = ir.node("ThresholdedRelu", [relu.inputs[0]], {"alpha": 0.4}, name="gate")
    ir.convenience.replace_nodes_and_values(
        original.graph, relu, [relu], [thresholded], relu.outputs, thresholded.outputs
    )
    rewritten = featreg(original)
    assert op_types(rewritten) == ["Conv", "GatedConv"]
    assert rewritten.graph.node(1).attributes.get_float("threshold") == pytest.approx(0.4)
    assert_same_outputs(original, rewritten)


def test_stride_dilation_and_depthwise_convs_are_rewritten():
    for module in (GateConv(nn.ReLU(), stride=2), GateConv(nn.ReLU(), dilation=2), GateConv(nn.ReLU(), groups=8)):
        original = export(module)
        rewritten = featreg(original)
        assert "GatedConv" in op_types(rewritten)
        assert_same_outputs(original, rewritten)


def test_a_gate_also_read_elsewhere_stays_for_that_reader():
    original = export(GateConv(nn.ReLU(), residual=True))
    rewritten = featreg(original)
    assert sorted(op_types(rewritten)) == ["Add", "Conv", "GatedConv", "Relu"]
    assert_same_outputs(original, rewritten)


def test_grouped_non_depthwise_conv_is_refused_with_a_reason():
    original = export(GateConv(nn.ReLU(), groups=2))
    rewritten = featreg(original)
    assert "GatedConv" not in op_types(rewritten)
    [layer] = layers(rewritten)
    assert layer["op"] == "Conv" and "grouped conv (group 2)" in layer["kept_dense_because"]


def test_a_shared_weight_is_refused():
    original = export(GateConv(nn.ReLU()))
    convs = [node for node in original.graph if node.op_type == "Conv"]
    # The stem reads its own input; give the gated conv a second reader of its weight.
    twin = ir.node("Conv", [convs[1].inputs[0], convs[1].inputs[1]], {"pads": [1, 1, 1, 1]}, name="twin")
    original.graph.append(twin)
    add = ir.node("Add", [convs[1].outputs[0], twin.outputs[0]], name="sum")
    original.graph.append(add)
    ir.convenience.replace_all_uses_with(convs[1].outputs[0], add.outputs[0], replace_graph_outputs=True)
    add.replace_input_with(0, convs[1].outputs[0])
    rewritten = featreg(original)
    assert "GatedConv" not in op_types(rewritten)
    assert all("is shared with" in layer["kept_dense_because"] for layer in layers(rewritten))


def test_a_level_from_the_metadata_sets_every_gate_threshold():
    original = export(GateConv(WhereGate(0.0)))
    gate_name = next(node.name for node in run_pipeline(original.clone()).graph if node.op_type == "Where")
    original.metadata_props[LEVELS_METADATA_KEY] = json.dumps({"0.6": {gate_name: 0.2}, "0.9": {gate_name: 0.7}})
    rewritten = featreg(original, sparsity=0.9)
    assert rewritten.graph.node(1).attributes.get_float("threshold") == pytest.approx(0.7)
    reference = export(GateConv(WhereGate(0.7)))
    assert_same_outputs(reference, rewritten)


def test_debug_mode_checks_a_level_against_the_model_at_that_level():
    """A level changes the outputs by design: --debug compares with the model at the level's thresholds
    (and still catches a pass whose result differs from that)."""
    original = export(GateConv(WhereGate(0.0)))
    gate_name = next(node.name for node in run_pipeline(original.clone()).graph if node.op_type == "Where")
    original.metadata_props[LEVELS_METADATA_KEY] = json.dumps({"0.9": {gate_name: 0.7}})
    options = {"featreg": {"sparsity": 0.9}}
    rewritten = run_pipeline(original.clone(), "default,featreg", debug=True, pass_options=options)
    assert_same_outputs(export(GateConv(WhereGate(0.7))), rewritten)


@pytest.mark.parametrize(
    "options", [{"sparsity": 1.5}, {"sparsity": float("nan")}, {"sparsity": 0.0}, {"min_sparsity": 7}]
)
def test_options_out_of_range_are_refused_in_one_line(options):
    with pytest.raises(EdgesparseError, match="featreg: .* fraction"):
        featreg(export(GateConv(nn.ReLU())), **options)


def test_a_level_missing_from_the_metadata_needs_calibration():
    with pytest.raises(EdgesparseError, match="sparsity 0.8 is not among the model's levels"):
        featreg(export(GateConv(nn.ReLU())), sparsity=0.8)


@pytest.mark.parametrize("target", [0.6, 0.9, 0.99])
def test_calibration_hits_the_target_sparsity_on_its_inputs(target):
    original = export(GateConv(nn.ReLU()), shape=(1, 3, 24, 24))
    rewritten = featreg(original, sparsity=target, calibrate=calibration_samples(original))
    [layer] = layers(rewritten)
    assert layer["input_sparsity"] == pytest.approx(target, abs=0.03)
    assert layer["threshold"] >= 0.0, "never below the trained ReLU threshold"


def test_below_min_sparsity_a_layer_stays_dense():
    original = export(GateConv(nn.ReLU()), shape=(1, 3, 24, 24))
    rewritten = featreg(original, calibrate=calibration_samples(original), min_sparsity=0.99)
    [layer] = layers(rewritten)
    assert layer["op"] == "Conv" and "below 0.99" in layer["kept_dense_because"]
    assert layer["effective_macs"] == layer["dense_macs"]
    assert "GatedConv" not in op_types(rewritten)


def test_effective_macs_agree_with_an_independent_count_of_nonzeros():
    original = export(GateConv(nn.ReLU(), width=16), shape=(1, 3, 20, 20))
    calibration = calibration_samples(original, count=2)
    rewritten = featreg(original, calibrate=calibration)
    [layer] = layers(rewritten)
    # Independently: the gated feature in torch-free terms, via ORT on the original with the Relu exposed.
    probe = original.clone()
    relu = next(node for node in probe.graph if node.op_type == "Relu")
    probe.graph.outputs.append(relu.outputs[0])
    nonzeros = [np.count_nonzero(run_onnxruntime(probe, sample)[relu.outputs[0].name]) for sample in calibration]
    out_channels, kernel_size = 16, 9
    independent = np.mean(nonzeros) * out_channels * kernel_size  # stride 1, 'same' padding
    assert layer["effective_macs"] == pytest.approx(independent, rel=1e-6)
    assert layer["dense_macs"] == 20 * 20 * 16 * 16 * 9


def test_chained_gated_convs_keep_the_graph_valid():
    """A GatedConv whose gate reads another GatedConv's output (every conv of a FeatReg net)."""
    module, example = build_zoo_model("featreg-edsr")
    original = from_torch(module, example, input_names=["input"], output_names=["output"])
    rewritten = run_pipeline(original.clone(), "default,featreg", debug=True)
    assert op_types(rewritten).count("GatedConv") == 11  # every conv but the head
    assert_same_outputs(original, rewritten)
