"""The GatedConv TIR kernels: exact Conv(where(x > t, x, 0)) on every target, at every sparsity.

The reference is ONNX Runtime running the op's definition (Greater, Where, Conv). CPU kernels run
here; the GPU kernels' logic runs here too, with their thread loops made serial; the cuda build runs
where a GPU exists; aarch64 builds run on the emulated device.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from edgesparse.backends.gated_conv import (
    DepthToSpace,
    GatedConvSchedule,
    GatedConvShape,
    default_schedule,
    effective_macs,
    few_outputs,
    gated_conv2d,
    pack_weight,
    schedule_space,
    standalone_module,
)
from edgesparse.backends.rpc import RPCAddress, request_session
from edgesparse.backends.targets import resolve_target
from edgesparse.backends.tvm_build import _module_tree
from edgesparse.passes.onnxruntime_ref import max_relative_error, run_onnxruntime

# name -> (shape, threshold). Thresholds: 0 (Relu), positive (ThresholdedRelu), negative (Where).
CASES = {
    "3x3": (GatedConvShape(1, 24, 40, 13, 15, (3, 3), pads=(1, 1, 1, 1)), 0.0),
    "3x3-stride2-asym-pads-batch2": (GatedConvShape(2, 13, 17, 11, 9, (3, 3), (2, 2), (1, 0, 2, 1)), 0.3),
    "3x3-dilation2-two-mask-words": (
        GatedConvShape(1, 70, 33, 10, 23, (3, 3), pads=(2, 2, 2, 2), dilation=(2, 2)),
        -0.2,
    ),
    "3x3-no-padding": (GatedConvShape(1, 8, 16, 7, 12, (3, 3)), 0.0),
    "3x1-stride1x2": (GatedConvShape(1, 130, 64, 5, 37, (3, 1), (1, 2), (0, 0, 1, 0)), 0.5),
    "1x1": (GatedConvShape(1, 16, 24, 17, 17, (1, 1)), 0.0),
    "1x1-stride2-batch3": (GatedConvShape(3, 9, 9, 9, 8, (1, 1), (2, 2)), 0.1),
    # At most half a vector of outputs: the x86 hosts' CPU kernel vectorizes over pixels (few_outputs).
    "few-outputs-3x3-stride2-asym-pads-batch2": (GatedConvShape(2, 13, 3, 11, 21, (3, 3), (2, 2), (1, 0, 2, 1)), 0.3),
    "few-outputs-3x3-dilation2": (GatedConvShape(1, 70, 1, 10, 35, (3, 3), pads=(2, 2, 2, 2), dilation=(2, 2)), -0.2),
    "depthwise-3x3-stride2": (GatedConvShape(2, 12, 12, 9, 11, (3, 3), (2, 2), (1, 1, 1, 1), group=12), 0.0),
}
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
HOST = resolve_target("llvm")


def gated_input(shape: GatedConvShape, threshold: float, sparsity: float, seed: int = 0) -> np.ndarray:
    """Standard-normal features shifted so ``sparsity`` of them are <= threshold, chosen per element
    (so each pixel has its own active set), plus crafted pixels: one with every channel on, one with
    every channel off, one exactly at the threshold (off: the gate is strict) and one NaN (off)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape.batch, shape.in_channels, shape.height, shape.width)).astype(np.float32)
    x = x - np.quantile(x, sparsity) + np.float32(threshold) if sparsity < 1 else x - x.max() + np.float32(threshold)
    x[0, :, 0, 0] = np.abs(x[0, :, 0, 0]) + threshold + 0.5
    x[-1, :, -1, -1] = threshold - np.abs(x[-1, :, -1, -1])
    x[0, 0, -1, 0] = threshold
    x[-1, -1, 0, -1] = np.nan
    return x.astype(np.float32)


def reference(
    shape: GatedConvShape,
    threshold: float,
    weight: np.ndarray,
    bias: np.ndarray,
    x: np.ndarray,
    depth_to_space: DepthToSpace | None = None,
) -> np.ndarray:
    """ONNX Runtime on GatedConv's definition: Conv(Where(Greater(x, t), x, 0), W, B) [-> DepthToSpace]."""
    nodes = [
        helper.make_node("Greater", ["x", "t"], ["on"]),
        helper.make_node("Where", ["on", "x", "zero"], ["gated"]),
        helper.make_node(
            "Conv",
            ["gated", "w", "b"],
            ["y"],
            strides=list(shape.stride),
            pads=list(shape.pads),
            dilations=list(shape.dilation),
            group=shape.group,
        ),
    ]
    if depth_to_space is not None:
        nodes[-1].output[0] = "conv"
        nodes.append(
            helper.make_node(
                "DepthToSpace", ["conv"], ["y"], blocksize=depth_to_space.blocksize, mode=depth_to_space.mode
            )
        )
    constants = {"t": np.float32(threshold), "zero": np.float32(0), "w": weight, "b": bias}
    graph = helper.make_graph(
        nodes,
        "gated_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return run_onnxruntime(onnx.ModelProto.FromString(model.SerializeToString()), {"x": x})["y"]


def parameters(shape: GatedConvShape, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape.weight_shape).astype(np.float32), rng.standard_normal(shape.out_channels).astype(
        np.float32
    )


def compile_kernel(func: tvm.tirx.PrimFunc, target) -> tvm.runtime.Module:
    return tvm.compile(tvm.IRModule({"gated_conv": func.with_attr("global_symbol", "gated_conv")}), target=target)


def run_kernel(
    library, shape: GatedConvShape, schedule: GatedConvSchedule, weight, bias, x, device=None, depth_to_space=None
) -> np.ndarray:
    device = device or tvm.cpu()
    y = np.full((depth_to_space or DepthToSpace(1)).output_shape(shape), np.nan, np.float32)
    arguments = [tvm.runtime.tensor(array, device) for array in (x, pack_weight(weight, shape, schedule), bias, y)]
    library["gated_conv"](*arguments)
    return arguments[-1].numpy()


def check_kernel(library, shape: GatedConvShape, schedule: GatedConvSchedule, threshold: float, sparsities) -> None:
    weight, bias = parameters(shape)
    for sparsity in sparsities:
        x = gated_input(shape, threshold, sparsity)
        actual = run_kernel(library, shape, schedule, weight, bias, x)
        assert max_relative_error(actual, reference(shape, threshold, weight, bias, x)) < 1e-4, f"sparsity {sparsity}"


@functools.cache
def host_kernel(case: str):
    shape, threshold = CASES[case]
    schedule = default_schedule(shape, HOST.target)
    return compile_kernel(gated_conv2d(shape, threshold, schedule, HOST.target), HOST.target), schedule


def threads_as_loops(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """The GPU kernel with every thread binding a serial loop: the same logic, runnable on the CPU
    (the kernels use no shared memory or barriers, so the order of threads does not matter)."""
    text, count = re.subn(r'T\.thread_binding\((\d+), thread="[a-zA-Z.]+"\)', r"T.serial(\1)", func.script())
    assert count >= 2
    return tvm.script.from_source(text)


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("case", CASES)
def test_host_kernel_matches_onnxruntime(case, sparsity):
    shape, threshold = CASES[case]
    library, schedule = host_kernel(case)
    check_kernel(library, shape, schedule, threshold, [sparsity])


@pytest.mark.parametrize(
    "schedule",
    [
        GatedConvSchedule(oc_tile=16, ox_tile=1, cin_block=8),
        GatedConvSchedule(oc_tile=48, ox_tile=5, cin_block=64),  # a tile that does not divide M=64
        GatedConvSchedule(oc_tile=16, ox_tile=8, cin_block=1),
        GatedConvSchedule(oc_tile=64, ox_tile=7, cin_block=16),  # a 1.75 KiB accumulator (local scope: no heap)
    ],
    ids=str,
)
def test_every_schedule_is_exact(schedule):
    shape, threshold = GatedConvShape(1, 40, 64, 9, 19, (3, 3), pads=(1, 1, 1, 1)), 0.0
    library = compile_kernel(gated_conv2d(shape, threshold, schedule, HOST.target), HOST.target)
    check_kernel(library, shape, schedule, threshold, [0.0, 0.9])


@pytest.mark.parametrize(
    "shape, depth_to_space",
    [
        (GatedConvShape(1, 24, 64, 13, 15, (3, 3), pads=(1, 1, 1, 1)), DepthToSpace(2)),  # 30 output columns
        (GatedConvShape(2, 13, 48, 7, 9, (3, 3), pads=(1, 1, 1, 1)), DepthToSpace(2, "CRD")),
        (GatedConvShape(1, 40, 36, 9, 11, (1, 1)), DepthToSpace(3)),
    ],
    ids=str,
)
def test_host_kernel_writes_a_fused_depth_to_space(shape, depth_to_space):
    schedule, threshold = default_schedule(shape, HOST.target), 0.1
    library = compile_kernel(
        gated_conv2d(shape, threshold, schedule, HOST.target, depth_to_space=depth_to_space), HOST.target
    )
    weight, bias = parameters(shape)
    for sparsity in (0.0, 0.9):
        x = gated_input(shape, threshold, sparsity)
        actual = run_kernel(library, shape, schedule, weight, bias, x, depth_to_space=depth_to_space)
        assert max_relative_error(actual, reference(shape, threshold, weight, bias, x, depth_to_space)) < 1e-4


def test_host_kernel_adds_a_fused_residual():
    shape, threshold = GatedConvShape(2, 13, 40, 7, 21, (3, 3), pads=(1, 1, 1, 1)), 0.0
    schedule = default_schedule(shape, HOST.target)
    library = compile_kernel(gated_conv2d(shape, threshold, schedule, HOST.target, residual=True), HOST.target)
    weight, bias = parameters(shape)
    x = gated_input(shape, threshold, 0.9)
    skip = np.random.default_rng(2).standard_normal((2, 40, 7, 21)).astype(np.float32)
    y = np.full_like(skip, np.nan)
    arguments = [tvm.runtime.tensor(array) for array in (x, pack_weight(weight, shape, schedule), bias, skip, y)]
    library["gated_conv"](*arguments)
    expected = reference(shape, threshold, weight, bias, x) + skip  # ONNX's Add after the conv
    assert max_relative_error(arguments[-1].numpy(), expected) < 1e-4


def test_fusions_are_refused_where_the_kernel_cannot_write_them():
    shape = GatedConvShape(1, 8, 12, 5, 5, (3, 3))
    for target, reason_shape in (("cuda", shape), ("llvm", dataclasses.replace(shape, out_channels=4))):
        spec = resolve_target(target)
        with pytest.raises(ValueError, match="cannot be fused"):  # a GPU kernel; few outputs (pixel-vectorized)
            gated_conv2d(
                reason_shape,
                0.0,
                default_schedule(reason_shape, spec.target),
                spec.target,
                depth_to_space=DepthToSpace(2),
            )
    with pytest.raises(ValueError, match="cannot be fused"):  # 12 channels are not blocks of 3 x 3
        gated_conv2d(shape, 0.0, default_schedule(shape, HOST.target), HOST.target, depth_to_space=DepthToSpace(3))
    cuda = resolve_target("cuda").target
    with pytest.raises(ValueError, match="residual add cannot be fused"):  # GPU kernels write the conv only
        gated_conv2d(shape, 0.0, default_schedule(shape, cuda), cuda, residual=True)
    with pytest.raises(ValueError, match="residual add cannot be fused"):  # one epilogue at a time
        gated_conv2d(
            shape, 0.0, default_schedule(shape, HOST.target), HOST.target, depth_to_space=DepthToSpace(2), residual=True
        )


def test_few_outputs_vectorize_over_pixels_on_cpus_only():
    shape, threshold = CASES["few-outputs-3x3-stride2-asym-pads-batch2"]  # 3 outputs
    arm, cuda = resolve_target("arm_cpu").target, resolve_target("cuda").target
    assert not few_outputs(shape, arm)  # 3 of NEON's 4 lanes: the sparse kernel
    assert few_outputs(dataclasses.replace(shape, out_channels=2), arm)
    assert not few_outputs(dataclasses.replace(shape, out_channels=1), cuda)
    # The pixel-vectorized kernel walks no bits; the sparse one does.
    assert "T.clz" not in gated_conv2d(shape, threshold, default_schedule(shape, HOST.target), HOST.target).script()
    assert "T.clz" in gated_conv2d(shape, threshold, default_schedule(shape, arm), arm).script()


@pytest.mark.parametrize("target", ["llvm", "arm_cpu", "mali", "cuda"])
def test_schedule_space_is_valid_and_holds_the_default(target):
    spec = resolve_target(target)
    for shape, _ in CASES.values():
        space = schedule_space(shape, spec.target)
        assert default_schedule(shape, spec.target) in space and len(space) == len(set(space)) >= 6
        for schedule in space:
            schedule.validate(spec.target)


@pytest.mark.parametrize("target", ["cuda", "mali"])
@pytest.mark.parametrize(
    "case", ["3x3-stride2-asym-pads-batch2", "3x3-dilation2-two-mask-words", "1x1", "depthwise-3x3-stride2"]
)
def test_gpu_kernel_logic_matches_onnxruntime_with_threads_run_as_loops(case, target):
    shape, threshold = CASES[case]
    gpu_target = resolve_target(target).target
    schedule = default_schedule(shape, gpu_target)
    library = compile_kernel(threads_as_loops(gated_conv2d(shape, threshold, schedule, gpu_target)), HOST.target)
    check_kernel(library, shape, schedule, threshold, [0.0, 0.9, 1.0])


def build_standalone(case: str, target: str) -> tuple[relax.Executable, GatedConvShape, float]:
    shape, threshold = CASES[case]
    spec = resolve_target(target)
    module = standalone_module(shape, threshold, *parameters(shape), default_schedule(shape, spec.target), spec.target)
    return relax.build(module, spec.target), shape, threshold


def test_relax_call_tir_build_runs_and_matches():
    executable, shape, threshold = build_standalone("3x3-stride2-asym-pads-batch2", "llvm")
    x = gated_input(shape, threshold, 0.9)
    actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert max_relative_error(actual, reference(shape, threshold, *parameters(shape), x)) < 1e-4


def test_arm_cpu_build_cross_compiles_to_an_aarch64_library(tmp_path):
    executable, _, _ = build_standalone("3x3", "arm_cpu")
    path = tmp_path / "gated.so"
    executable.export_library(
        str(path), fcompile=tvm.support.cc.cross_compiler(resolve_target("arm_cpu").cross_compiler)
    )
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


def test_arm_cpu_kernel_accumulates_in_neon_registers():
    spec = resolve_target("arm_cpu")
    shape, threshold = CASES["3x3"]
    library = compile_kernel(
        gated_conv2d(shape, threshold, default_schedule(shape, spec.target), spec.target), spec.target
    )
    assembly = library.mod.inspect_source("asm")
    # 40 output channels (oc_tile 40: ten 4-lane vectors) times a multiply-add per weight vector.
    assert len(re.findall(r"fmla\tv\d+\.4s, v\d+\.4s, v\d+\.s\[0\]", assembly)) >= 10


def test_arm_cpu_kernel_runs_on_the_emulated_device_and_matches(emulated_device, tmp_path):
    spec = resolve_target("arm_cpu")
    shape, threshold = CASES["3x3-dilation2-two-mask-words"]
    schedule = default_schedule(shape, spec.target)
    path = tmp_path / "gated_arm.so"
    compile_kernel(gated_conv2d(shape, threshold, schedule, spec.target), spec.target).export_library(
        str(path), fcompile=tvm.support.cc.cross_compiler(spec.cross_compiler)
    )
    session = request_session(RPCAddress.parse(emulated_device.rpc_address))
    session.upload(str(path))
    weight, bias = parameters(shape)
    x = gated_input(shape, threshold, 0.9)
    actual = run_kernel(session.load_module(path.name), shape, schedule, weight, bias, x, session.cpu(0))
    assert max_relative_error(actual, reference(shape, threshold, weight, bias, x)) < 1e-4


@pytest.mark.parametrize("case", ["3x3", "depthwise-3x3-stride2"])
def test_mali_build_holds_the_opencl_kernels(case):
    executable, _, _ = build_standalone(case, "mali")
    kinds = [module.kind for module in _module_tree(executable.mod)]
    assert "opencl" in kinds
    source = "\n".join(module.inspect_source() for module in _module_tree(executable.mod) if module.kind == "opencl")
    assert "__kernel void gated_conv_kernel(" in source
    if case == "3x3":  # compress, then accumulate: two kernels, bits walked with clz
        assert "__kernel void gated_conv_kernel_1(" in source and "clz(" in source


def test_cuda_build_compiles_both_kernels():
    executable, _, _ = build_standalone("3x3", "cuda")
    source = "\n".join(module.inspect_source() for module in _module_tree(executable.mod) if module.kind == "cuda")
    assert "gated_conv_kernel(" in source and "gated_conv_kernel_1(" in source and "__clzll" in source


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("case", CASES)
def test_cuda_kernel_matches_onnxruntime_on_the_gpu(case):
    executable, shape, threshold = build_standalone(case, "cuda")
    vm = relax.VirtualMachine(executable, tvm.cuda(0))
    for sparsity in SPARSITIES:
        x = gated_input(shape, threshold, sparsity)
        actual = vm["main"](tvm.runtime.tensor(x, tvm.cuda(0))).numpy()
        assert max_relative_error(actual, reference(shape, threshold, *parameters(shape), x)) < 1e-4


def test_effective_macs_count_active_inputs_under_each_tap():
    shape, threshold = CASES["3x3-stride2-asym-pads-batch2"]
    x = gated_input(shape, threshold, 0.5)
    active = x > threshold
    expected = 0
    for n, oy, ox, ky, kx in np.ndindex(shape.batch, shape.out_height, shape.out_width, *shape.kernel):
        iy, ix = oy * shape.stride[0] - shape.pads[0] + ky, ox * shape.stride[1] - shape.pads[1] + kx
        if 0 <= iy < shape.height and 0 <= ix < shape.width:
            expected += int(active[n, :, iy, ix].sum()) * shape.out_channels
    assert effective_macs(x, shape, threshold) == expected
    unpadded, _ = CASES["3x3-no-padding"]
    assert (
        effective_macs(np.ones((1, 8, 7, 12), np.float32), unpadded, 0.0) == unpadded.dense_macs == 16 * 5 * 10 * 8 * 9
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GatedConvShape(1, 8, 8, 5, 5, (3, 3), group=2), "group 1 and depthwise"),
        (lambda: GatedConvShape(1, 8, 8, 2, 2, (3, 3)), "empty output"),
        (lambda: GatedConvSchedule(cin_block=24).validate(HOST.target), "power of two"),
        (
            lambda: GatedConvSchedule(oc_tile=6).validate(resolve_target("arm_cpu").target),
            "multiple of the target's 4 vector",
        ),
        (
            lambda: GatedConvSchedule(oc_tile=48, gpu_threads=128).validate(resolve_target("cuda").target),
            "multiple of oc_tile",
        ),
        (lambda: GatedConvSchedule(oc_tile=64, gpu_threads=512).validate(resolve_target("mali").target), "at most 256"),
    ],
)
def test_unsupported_shapes_and_schedules_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
