"""featreg end to end: pass -> GatedConv -> the gated sparse kernel in TVM, against ONNX Runtime."""

import numpy as np
import onnx_ir as ir
import pytest
import torch
import tvm
from conftest import load_model
from torch import nn
from tvm import relax

from edgesparse.backends import compile_model
from edgesparse.backends.gated_conv import DepthToSpace
from edgesparse.backends.relax_import import fusable_readers
from edgesparse.backends.rpc import RPCAddress
from edgesparse.frontends.featreg.gate import ThresholdGate
from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.frontends.zoo import build_zoo_model
from edgesparse.passes.onnxruntime_ref import max_relative_error, run_onnxruntime


def featreg_compile(model: ir.Model, target: str, **options):
    # min_sparsity 0: every gated conv takes the sparse kernel, whatever its measured sparsity.
    return compile_model(
        model, target, passes="default,featreg", pass_options={"featreg": {"min_sparsity": 0.0, **options}}
    )


def gated_kernels(result) -> list[str]:
    """The gated kernel each call in the built ``main`` runs (convs of one shape share a kernel)."""
    called = []

    def visit(expr):
        if isinstance(expr, relax.Call):
            callee = expr.args[0] if isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.call_tir" else expr.op
            if isinstance(callee, tvm.ir.GlobalVar) and callee.name_hint.startswith("gated_conv"):
                called.append(callee.name_hint)

    relax.analysis.post_order_visit(result.build.lowered["main"].body, visit)
    return called


def image_inputs(model: ir.Model, seed: int) -> dict[str, np.ndarray]:
    value = model.graph.inputs[0]
    return {value.name: np.random.default_rng(seed).random(tuple(value.shape), dtype=np.float32)}


@pytest.fixture(scope="module")
def featreg_edsr():
    module, example = build_zoo_model("featreg-edsr")
    return from_torch(module, example, input_names=["input"], output_names=["output"])


@pytest.fixture(scope="module")
def calibration(featreg_edsr):
    return [image_inputs(featreg_edsr, seed) for seed in range(3)]


def test_trained_thresholds_match_onnxruntime_on_the_original_model(featreg_edsr):
    result = featreg_compile(featreg_edsr, "llvm")
    assert len(gated_kernels(result)) == 11
    inputs = image_inputs(featreg_edsr, seed=9)
    expected = run_onnxruntime(featreg_edsr, inputs)["output"]
    assert max_relative_error(result.run(inputs)["output"], expected) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.6, 0.9, 0.99])
def test_calibrated_levels_match_onnxruntime(sparsity, featreg_edsr, calibration):
    result = featreg_compile(featreg_edsr, "llvm", sparsity=sparsity, calibrate=calibration)
    layers = result.report["layers"]
    assert all(layer["op"] == "GatedConv" for layer in layers)
    assert np.mean([layer["input_sparsity"] for layer in layers]) == pytest.approx(sparsity, abs=0.03)
    assert result.report["macs_effective"] < result.report["macs_after"] * (1.05 - sparsity)
    inputs = image_inputs(featreg_edsr, seed=1)  # a calibration sample
    expected = run_onnxruntime(result.optimized, inputs)["output"]  # ONNX Runtime runs GatedConv's body
    assert max_relative_error(result.run(inputs)["output"], expected) < 1e-4


class GatedInputConv(nn.Module):
    """gate -> conv straight on the graph input, so that tests craft the gated feature pixel by pixel."""

    def __init__(self, threshold, channels=16, out_channels=24, kernel=3, stride=1, dilation=1, depthwise=False):
        super().__init__()
        self.gate = ThresholdGate(threshold)
        groups = channels if depthwise else 1
        out_channels = channels if depthwise else out_channels
        self.conv = nn.Conv2d(
            channels,
            out_channels,
            kernel,
            stride=stride,
            padding=dilation * (kernel // 2),
            dilation=dilation,
            groups=groups,
        )

    def forward(self, x):
        return self.conv(self.gate(x))


def crafted_feature(shape, sparsity: float, seed: int) -> tuple[np.ndarray, float]:
    """A standard-normal feature with its threshold at the sparsity quantile, one pixel with every channel
    off and one with every channel on."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    threshold = float(np.quantile(x, sparsity)) if sparsity > 0 else -100.0
    x[:, :, 0, 0] = threshold - 1.0
    x[:, :, -1, 1] = threshold + 1.0
    return x, threshold


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize(
    "layer",
    [
        dict(),
        dict(stride=2),
        dict(dilation=2),
        dict(kernel=1),
        dict(depthwise=True),
    ],
    ids=["3x3", "stride2", "dilation2", "1x1", "depthwise"],
)
def test_single_gated_conv_matches_onnxruntime(sparsity, layer):
    shape = (2, 16, 9, 13)  # batch 2, odd sizes
    x, threshold = crafted_feature(shape, sparsity, seed=4)
    torch.manual_seed(0)
    module = GatedInputConv(threshold, **layer).eval()
    model = from_torch(module, torch.from_numpy(x), input_names=["input"], output_names=["output"])
    result = featreg_compile(model, "llvm")
    assert len(gated_kernels(result)) == 1
    expected = run_onnxruntime(model, {"input": x})["output"]
    assert max_relative_error(result.run({"input": x})["output"], expected) < 1e-4


def test_arm_cpu_gated_build_runs_on_the_emulated_device(featreg_edsr, calibration, emulated_device, tmp_path):
    result = featreg_compile(featreg_edsr, "arm_cpu", sparsity=0.9, calibrate=calibration)
    assert len(gated_kernels(result)) == 11
    artefact = result.save(tmp_path / "build")
    inputs = image_inputs(featreg_edsr, seed=2)
    actual = artefact.run(inputs, RPCAddress.parse(emulated_device.rpc_address))["output"]
    assert max_relative_error(actual, run_onnxruntime(result.optimized, inputs)["output"]) < 1e-4


def test_mali_gated_build_holds_opencl_gated_kernels(featreg_edsr, tmp_path):
    result = featreg_compile(featreg_edsr, "mali")
    kernels = gated_kernels(result)
    assert len(kernels) == 11
    source = result.save(tmp_path / "build").directory.joinpath("model.cl").read_text()
    assert all(f"__kernel void {name}_kernel" in source for name in set(kernels))


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU on this machine")
def test_cuda_gated_build_matches_onnxruntime_on_the_gpu(featreg_edsr, calibration, tmp_path):
    result = featreg_compile(featreg_edsr, "cuda", sparsity=0.9, calibrate=calibration)
    artefact = result.save(tmp_path / "build")
    inputs = image_inputs(featreg_edsr, seed=2)
    assert (
        max_relative_error(artefact.run(inputs)["output"], run_onnxruntime(result.optimized, inputs)["output"]) < 1e-4
    )


def test_plain_relu_nets_take_the_gated_kernel_too():
    """Every ReLU net is already sparse: the EDSR-style test net's ReLU -> conv pairs."""
    model = load_model("edsr")
    result = featreg_compile(model, "llvm")
    assert len(gated_kernels(result)) == 4
    inputs = image_inputs(model, seed=3)
    assert max_relative_error(result.run(inputs)["output"], run_onnxruntime(model, inputs)["output"]) < 1e-4


def test_a_pixel_shuffle_or_a_residual_add_after_a_gated_conv_is_written_by_its_kernel(featreg_edsr):
    """The upsampling conv's DepthToSpace and the residual blocks' Adds: no kernels of their own on the
    CPU, the same result."""
    result = featreg_compile(featreg_edsr, "llvm")
    readers = fusable_readers(result.optimized)
    assert [reader.depth_to_space for reader in readers.values() if reader.depth_to_space] == [
        DepthToSpace(2, "CRD")  # torch.nn.PixelShuffle exports as CRD
    ]
    residual_adds = [reader.node for reader in readers.values() if reader.residual]
    assert len(residual_adds) >= 2
    kernels = [
        gvar.name_hint for gvar, func in result.build.lowered.functions_items() if isinstance(func, tvm.tirx.PrimFunc)
    ]
    assert not [name for name in kernels if "transpose" in name]
    # In the built main a kernel call's arguments are its buffers, the output last: x, w, b, [r,] y.
    with_residual = []
    relax.analysis.post_order_visit(
        result.build.lowered["main"].body,
        lambda expr: (
            isinstance(expr, relax.Call)
            and isinstance(expr.op, tvm.ir.GlobalVar)
            and expr.op.name_hint.startswith("gated_conv")
            and len(expr.args) == 5
            and with_residual.append(expr)
        ),
    )
    assert len(with_residual) == len(residual_adds)
    inputs = image_inputs(featreg_edsr, seed=4)
    assert max_relative_error(result.run(inputs)["output"], run_onnxruntime(result.optimized, inputs)["output"]) < 1e-4
    # Read by anything else as well (here: a graph output), the conv's output stays the conv's.
    model = result.optimized.clone()
    for node in model.graph:
        if node.name in readers:
            model.graph.outputs.append(node.outputs[0])
    assert fusable_readers(model) == {}
