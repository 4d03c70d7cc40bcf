"""ParallelFallback: untuned CPU kernels run in parallel, with results equal bit for bit."""

import numpy as np
import onnx_ir as ir
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic.pipeline import dataflow_lower_passes, finalize_passes
from tvm.s_tir import dlight
from tvm.s_tir.schedule import ScheduleError

from edgesparse.backends import cpu_fallback_schedule
from edgesparse.backends.compiler import compile_model
from edgesparse.backends.cpu_fallback_schedule import ParallelFallback
from edgesparse.backends.gated_conv import shape_of
from edgesparse.backends.relax_import import import_to_relax
from edgesparse.backends.targets import resolve_target
from edgesparse.backends.tvm_build import fuse
from edgesparse.frontends import load_onnx, set_input_shapes
from edgesparse.passes.onnxruntime_ref import max_relative_error, run_onnxruntime

SR_MODEL = "models/featreg-sr-x2.onnx"  # convs, gates, residual adds, a pixel shuffle, a bicubic resize
HOST = resolve_target("llvm")


def sr_model(size: int = 20) -> ir.Model:
    return set_input_shapes(load_onnx(SR_MODEL), {"input": [1, 3, size, size]})


def primfuncs(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gvar.name_hint: func for gvar, func in mod.functions_items() if isinstance(func, tvm.tirx.PrimFunc)}


def test_every_kernel_of_an_untuned_build_is_parallel_and_results_are_bitwise_equal():
    with HOST.target:
        fused = fuse(import_to_relax(sr_model(), HOST.target), HOST)
        scheduled = dlight.ApplyDefaultSchedule(ParallelFallback())(fused)
    kernels = primfuncs(scheduled)
    ops = {op.rstrip("0123456789") for name in kernels for op in name.split("_")}
    assert {"conv2d", "add", "resize2d", "transpose", "where"} <= ops
    for name, func in kernels.items():
        assert func.attrs["tirx.is_scheduled"] and "T.parallel" in func.script(), name
    x = np.random.default_rng(0).random((1, 3, 20, 20), np.float32)
    outputs = []
    for mod in (fused, scheduled):
        executable = relax.build(
            mod,
            HOST.target,
            relax_pipeline=tvm.transform.Sequential(dataflow_lower_passes(HOST.target) + finalize_passes(HOST.target)),
        )
        outputs.append(relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy())
    assert np.array_equal(*outputs)


def test_gated_kernels_are_left_as_written_and_the_build_matches_onnxruntime():
    model, x = sr_model(24), np.random.default_rng(1).random((1, 3, 24, 24), np.float32)
    result = compile_model(model, "llvm", passes="default,featreg", pass_options={"featreg": {"sparsity": 0.9}})
    kernels = primfuncs(result.build.lowered)
    gated = [func for func in kernels.values() if shape_of(func) is not None]
    assert gated and all("tirx.is_scheduled" not in func.attrs for func in gated)
    assert all(func.attrs.get("tirx.is_scheduled") for func in kernels.values() if shape_of(func) is None)
    assert (
        max_relative_error(
            result.run({"input": x})["output"], run_onnxruntime(result.optimized, {"input": x})["output"]
        )
        < 1e-4
    )


def test_a_kernel_whose_loops_refuse_a_step_keeps_its_serial_loops(monkeypatch):
    def refuse(*_):
        raise ScheduleError("the loops cannot be reordered")

    monkeypatch.setattr(cpu_fallback_schedule, "_parallelize", refuse)
    with HOST.target:
        fused = fuse(import_to_relax(sr_model(), HOST.target), HOST)
        untouched = dlight.ApplyDefaultSchedule(ParallelFallback())(fused)
    for name, func in primfuncs(untouched).items():
        assert "tirx.is_scheduled" not in func.attrs and "T.parallel" not in func.script(), name
