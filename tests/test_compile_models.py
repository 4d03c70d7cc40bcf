"""Every test model through the default passes and a TVM build for llvm, arm_cpu and mali."""

import functools
import re

import numpy as np
import onnx_ir as ir
import pytest
import tvm
from conftest import MODEL_NAMES, load_model
from onnx import TensorProto, helper, numpy_helper

from edgesparse.backends import compile_model
from edgesparse.backends.relax_import import import_to_relax
from edgesparse.backends.runner import run_vm
from edgesparse.backends.targets import resolve_target
from edgesparse.backends.tvm_build import build, functions_without_kernel, fuse
from edgesparse.passes import EdgesparseError
from edgesparse.passes.onnxruntime_ref import max_relative_error, random_inputs, run_onnxruntime

ELF_MACHINE_AARCH64 = 183


def elf_machine(path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


@functools.cache
def reference(name: str):
    model = load_model(name)
    inputs = random_inputs(model, seed=7)
    return inputs, run_onnxruntime(model, inputs)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_llvm_build_matches_onnxruntime_on_the_original_model(name):
    result = compile_model(load_model(name), "llvm")
    inputs, expected = reference(name)
    actual = result.run(inputs)
    assert actual.keys() == expected.keys()
    for output, value in expected.items():
        assert max_relative_error(actual[output], value) < 1e-4
    assert result.report["macs_after"] == result.report["macs_before"] > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_arm_cpu_build_is_an_aarch64_library(name, tmp_path):
    artefact = compile_model(load_model(name), "arm_cpu").save(tmp_path / "out")
    assert elf_machine(artefact.directory / "model.so") == ELF_MACHINE_AARCH64
    assert artefact.report["target"] == "arm_cpu" and artefact.report["device"] == "arm/rasp4b64"


# How the executable's text shows main: a compiled function, or the bytecode's instructions.
COMPILED_MAIN, BYTECODE_MAIN = "@main num_inputs=1 vm_tir_func", "@main:\n  call "


@pytest.mark.parametrize(
    ("target", "main"), [("llvm", COMPILED_MAIN), ("arm_cpu", COMPILED_MAIN), ("mali", BYTECODE_MAIN)]
)
def test_cpu_builds_compile_main_to_machine_code_and_gpu_builds_keep_bytecode(target, main):
    executable = compile_model(load_model("tiny"), target).build.executable
    assert executable.as_text().startswith(main)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_mali_build_has_an_opencl_kernel_for_every_compute_function(name, tmp_path):
    result = compile_model(load_model(name), "mali")
    assert functions_without_kernel(result.build) == []
    compute_functions = [
        gvar for gvar, func in result.build.lowered.functions_items() if type(func).__name__ == "PrimFunc"
    ]
    assert len(compute_functions) > 5
    artefact = result.save(tmp_path / "out")
    source = (artefact.directory / "model.cl").read_text()
    for gvar in compute_functions:
        assert f"__kernel void {gvar.name_hint}_kernel" in source
    assert elf_machine(artefact.directory / "model.so") == ELF_MACHINE_AARCH64


def test_a_gpu_build_without_schedules_is_caught(monkeypatch):
    """The trap in the TVM notes: unscheduled TIR silently becomes host code. The check must see it."""
    from tvm import relax

    # Mali builds go through the generic GPU backend: give it the CPU legalization, without dlight.
    monkeypatch.setattr(
        relax.backend.gpu_generic.pipeline, "legalize_passes", relax.backend.cpu_generic.legalize_passes
    )
    with pytest.raises(EdgesparseError, match="no GPU kernel for"):
        compile_model(load_model("resnet"), "mali")


def conv_clip_net(low: float | None, high: float | None) -> ir.Model:
    """Conv 3x3 -> Clip(low, high) -> Conv 1x1; an absent bound is an empty input."""
    rng = np.random.default_rng(2)
    bounds = [
        numpy_helper.from_array(np.array(value, np.float32), name)
        for name, value in (("low", low), ("high", high))
        if value is not None
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w0"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node(
                "Clip", ["conv", "low" if low is not None else "", "high" if high is not None else ""], ["clipped"]
            ),
            helper.make_node("Conv", ["clipped", "w1"], ["output"]),
        ],
        "conv_clip_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 8, 8])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w0"),
            numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w1"),
            *bounds,
        ],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize(("low", "high"), [(0.0, 6.0), (None, 0.5), (float("nan"), 0.5), (-0.5, None)])
def test_a_clip_between_nhwc_convs_keeps_their_layout_and_matches_onnxruntime(low, high):
    model, spec = conv_clip_net(low, high), resolve_target("llvm")
    calls = re.findall(r"call_tir\((\w+)", fuse(import_to_relax(model, spec.target), spec, "NHWC")["main"].script())
    # A transpose in (NCHW -> NHWC), the convs, a transpose out: none around the clip, fused into the
    # first conv.
    assert len(calls) == 4 and sum("transpose" in name for name in calls) == 2, calls
    inputs = random_inputs(model, seed=3)
    [actual] = run_vm(build(model, spec, conv_layout="NHWC").executable, tvm.cpu(0), [inputs["input"]])
    assert max_relative_error(actual, run_onnxruntime(model, inputs)["output"]) < 1e-5
