"""ONNX (onnx-ir) -> Relax -> a compiled TVM library for a :class:`TargetSpec`.

The library is self-contained (weights are Relax constants inside it) and its ``main`` takes the
graph's inputs in graph order, so any TVM user can run it with ``relax.VirtualMachine``.
GPU builds (``mali``, ``cuda``) are checked to have every compute function bound to GPU threads:
an unscheduled kernel would otherwise silently become host code.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import onnx_ir as ir
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
from tvm.support import cc

from edgesparse.backends.onnxruntime_ref import input_specs, to_proto
from edgesparse.backends.targets import TargetSpec
from edgesparse.passes.errors import EdgesparseError


@dataclasses.dataclass
class TVMBuild:
    spec: TargetSpec
    # The module after the Relax pipeline (fused, scheduled PrimFuncs), before codegen.
    lowered: tvm.IRModule
    executable: relax.Executable

    def export(self, path: str | os.PathLike) -> None:
        """Writes the shared library; for arm targets an aarch64 ELF linked by the cross compiler."""
        fcompile = cc.cross_compiler(self.spec.cross_compiler) if self.spec.cross_compiler else None
        self.executable.export_library(os.fspath(path), fcompile=fcompile)

    def device_source(self) -> str:
        """The generated OpenCL/CUDA source of a GPU build ("" for CPU builds)."""
        return "\n".join(module.inspect_source() for module in _module_tree(self.executable.mod) if module.kind in ("opencl", "cuda"))


def _module_tree(module: tvm.runtime.Module):
    yield module
    for child in module.imports:
        yield from _module_tree(child)


def check_supported_ops(model: ir.Model) -> None:
    """Names the first node whose op TVM's ONNX importer has no converter for."""
    supported = _get_convert_map()
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or (node.op_type not in supported and node.op_type != "Constant"):
            domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
            raise EdgesparseError(f"unsupported op {domain}{node.op_type} in node {node.name!r}: TVM's ONNX importer has no converter for it")


def import_to_relax(model: ir.Model) -> tvm.IRModule:
    check_supported_ops(model)
    specs = input_specs(model)
    with warnings.catch_warnings():
        # from_onnx runs the ONNX checker itself and turns its complaints into warnings.
        warnings.simplefilter("ignore")
        return from_onnx(
            to_proto(model),
            shape_dict={name: list(shape) for name, shape, _ in specs},
            dtype_dict={name: str(dtype) for name, _, dtype in specs},
        )


def lower(mod: tvm.IRModule, spec: TargetSpec) -> tvm.IRModule:
    """The target's default Relax pipeline: fusion and legalization; on GPU also dlight schedules."""
    with spec.target:
        return relax.get_default_pipeline(spec.target)(mod)


def functions_without_kernel(build: TVMBuild) -> list[str]:
    """PrimFuncs of a GPU build with no kernel in the device code: left unscheduled, they became host code."""
    source = build.device_source()
    return [
        gvar.name_hint
        for gvar, func in build.lowered.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and f"{gvar.name_hint}_kernel" not in source
    ]


def build(model: ir.Model, spec: TargetSpec) -> TVMBuild:
    lowered = lower(import_to_relax(model), spec)
    result = TVMBuild(spec, lowered, relax.build(lowered, spec.target, relax_pipeline=None))
    if spec.is_gpu and (missing := functions_without_kernel(result)):
        raise EdgesparseError(f"{spec.name}: no GPU kernel for {', '.join(missing)} (unscheduled, they would run as host code)")
    return result
