"""ONNX (onnx-ir) -> Relax -> a compiled TVM library for a :class:`TargetSpec`.

The library is self-contained (weights are Relax constants inside it) and its ``main`` takes the
graph's inputs in graph order, so any TVM user can run it with ``relax.VirtualMachine``.
GPU builds (``mali``, ``cuda``) are checked to have every compute function bound to GPU threads:
an unscheduled kernel would otherwise silently become host code.
"""

from __future__ import annotations

import dataclasses
import os

import onnx_ir as ir
import tvm
from tvm import relax
from tvm.support import cc

from edgesparse.backends.relax_import import import_to_relax
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
    lowered = lower(import_to_relax(model, spec.target), spec)
    result = TVMBuild(spec, lowered, relax.build(lowered, spec.target, relax_pipeline=None))
    if spec.is_gpu and (missing := functions_without_kernel(result)):
        raise EdgesparseError(f"{spec.name}: no GPU kernel for {', '.join(missing)} (unscheduled, they would run as host code)")
    return result
