"""ONNX (onnx-ir) -> Relax -> a compiled TVM library for a :class:`TargetSpec`.

The library is self-contained (weights are Relax constants inside it) and its ``main`` takes the
graph's inputs in graph order, so any TVM user can run it with ``relax.VirtualMachine``.
GPU builds (``mali``, ``cuda``) are checked to have every compute function bound to GPU threads:
an unscheduled kernel would otherwise silently become host code. Given a MetaSchedule database
(written by backends/tuning.py), the fused functions found there get their tuned schedules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

import onnx_ir as ir
import tvm
from tvm import relax
from tvm.s_tir import dlight
from tvm.s_tir import meta_schedule as ms
from tvm.support import cc

from edgesparse.backends.cpu_fallback_schedule import ParallelFallback
from edgesparse.backends.errors import BackendError
from edgesparse.backends.gated_conv import GatedConvSchedule, shape_of
from edgesparse.backends.input_transpose_fusion import fuse_input_transpose
from edgesparse.backends.relax_import import import_to_relax
from edgesparse.backends.targets import TargetSpec

# What ms.database.JSONDatabase(work_dir=...) reads and writes.
TUNING_DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
# The conv2d data layout a tuning directory's records were tuned in, beside MetaSchedule's files; a
# directory without it was tuned in the imported NCHW layout.
CONV_LAYOUT_FILE = "conv_layout.json"
# conv2d data layout -> the kernel layout it goes with (a CPU build prepacks tuned weights anyway).
CONV_KERNEL_LAYOUTS = {"NCHW": "OIHW", "NHWC": "OHWI"}
IMPORTED_CONV_LAYOUT = "NCHW"


@dataclasses.dataclass
class TVMBuild:
    spec: TargetSpec
    # The module after the Relax pipeline (fused, scheduled PrimFuncs), before codegen.
    lowered: tvm.IRModule
    executable: relax.Executable
    # PrimFuncs whose schedules came from a tuning database.
    tuned_functions: list[str]
    # The data layout its conv2d ops ran in (the tuning database's).
    conv_layout: str

    def export(self, path: str | os.PathLike) -> None:
        """Writes the shared library; for arm targets an aarch64 ELF linked by the cross compiler."""
        export_library(self.executable, path, self.spec.cross_compiler)

    def device_source(self) -> str:
        """The generated OpenCL/CUDA source of a GPU build ("" for CPU builds)."""
        return "\n".join(
            module.inspect_source() for module in _module_tree(self.executable.mod) if module.kind in ("opencl", "cuda")
        )


def export_library(module: tvm.runtime.Module, path: str | os.PathLike, cross_compiler: str | None) -> None:
    """Links ``module`` into a shared library, with ``cross_compiler`` when given (else the host's)."""
    module.export_library(os.fspath(path), fcompile=cc.cross_compiler(cross_compiler) if cross_compiler else None)


def _module_tree(module: tvm.runtime.Module):
    yield module
    for child in module.imports:
        yield from _module_tree(child)


# The Relax backend whose default pipeline relax.get_default_pipeline gives each target kind here. Its
# stages are taken from the backend itself: TVM 0.27's relax.pipeline.dataflow_lower_passes fails for
# llvm and cuda (their packages do not export it).
_BACKENDS = {
    "llvm": relax.backend.cpu_generic.pipeline,
    "opencl": relax.backend.gpu_generic.pipeline,
    "cuda": relax.backend.cuda.pipeline,
}


def _pipeline_halves(
    target: tvm.target.Target, conv_layout: str = IMPORTED_CONV_LAYOUT
) -> tuple[list[tvm.transform.Pass], list[tvm.transform.Pass]]:
    """The target's default Relax pipeline, cut right after FuseTIR: there the fused PrimFuncs exist and
    are not scheduled yet (GPU dlight rules come later), which is what MetaSchedule tunes and matches.
    With another ``conv_layout`` than the imported NCHW, the convs are converted to it first (the
    layout spreads through the elementwise ops after them; transposes go where it stops), and a
    transpose that only a conv reads goes into the conv's kernel (fuse_input_transpose)."""
    backend = _BACKENDS[target.kind.name]
    legalize = backend.legalize_passes(target)
    cut = 1 + next(i for i, one_pass in enumerate(legalize) if one_pass.info.name == "FuseTIR")
    first = backend.library_dispatch_passes(target) + legalize[:cut]
    if conv_layout != IMPORTED_CONV_LAYOUT:
        first = [
            relax.transform.ConvertLayout({"relax.nn.conv2d": [conv_layout, CONV_KERNEL_LAYOUTS[conv_layout]]}),
            fuse_input_transpose(),
        ] + first
    second = legalize[cut:] + backend.dataflow_lower_passes(target) + backend.finalize_passes(target)
    if target.kind.name == "llvm":
        # CPU weight prepacking, as relax.pipeline.static_shape_tuning_pipeline does it: the fused
        # PrimFuncs mark their constant operands (the weights) layout-free, so a tuned schedule may store
        # them in the layout its loops read (MetaSchedule's RewriteLayout postproc); once the database is
        # applied, each relayout becomes a function of its own that FoldConstant runs at build time. The
        # library's interface does not change: the weights stay constants inside it.
        first = first + [relax.transform.AttachAttrLayoutFreeBuffers()]
        # Then every kernel still unscheduled (untuned) gets a parallel schedule instead of TVM's one
        # serial loop nest (backends/cpu_fallback_schedule.py).
        fallback = dlight.ApplyDefaultSchedule(ParallelFallback())
        second = [_split_weight_prepack, relax.transform.FoldConstant(), fallback] + second
    return first, second


@tvm.transform.module_pass(opt_level=0, name="SplitWeightPrepack")
def _split_weight_prepack(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """relax.transform.SplitLayoutRewritePreproc on all but the gated kernels, which it cannot walk
    (hand-scheduled loops, no blocks) and which have no layout rewrite to split."""
    kernels = {
        gvar: func
        for gvar, func in mod.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and shape_of(func) is not None
    }
    others = tvm.IRModule(
        {gvar: func for gvar, func in mod.functions_items() if gvar not in kernels}, mod.attrs, mod.global_infos
    )
    split = relax.transform.SplitLayoutRewritePreproc()(others)
    for gvar, func in kernels.items():
        split[gvar] = func
    return split


def _exec_mode(spec: TargetSpec) -> str:
    """CPU builds compile ``main`` itself to machine code ("compiled"): the bytecode interpreter's cost
    per instruction (allocations, calls) can outweigh a tuned small net's kernels (docs/benchmarks.md).
    GPU builds keep the bytecode: the compiled form is not checked on a GPU."""
    return "bytecode" if spec.is_gpu else "compiled"


def fuse(mod: tvm.IRModule, spec: TargetSpec, conv_layout: str = IMPORTED_CONV_LAYOUT) -> tvm.IRModule:
    """The first half of the default pipeline: legalized, fused PrimFuncs, none scheduled (tuning tasks)."""
    with spec.target:
        return tvm.transform.Sequential(_pipeline_halves(spec.target, conv_layout)[0])(mod)


def open_tuning_database(directory: str | os.PathLike) -> ms.Database:
    """The MetaSchedule JSON database that tuning wrote into ``directory``."""
    missing = [name for name in TUNING_DATABASE_FILES if not (Path(directory) / name).is_file()]
    if missing:
        raise BackendError(f"tuning database {directory}: no {' or '.join(missing)} there (tools/tune.py writes them)")
    try:
        return ms.database.JSONDatabase(work_dir=os.fspath(directory), allow_missing=False)
    except Exception as exc:  # noqa: BLE001  (MetaSchedule parses in C++: "Cannot tokenize", ...)
        first_line = (str(exc).strip().splitlines() or [""])[-1]
        raise BackendError(
            f"--tuning-db {directory}: not a MetaSchedule database tools/tune.py wrote ({first_line})"
        ) from None


def tuned_conv_layout(directory: str | os.PathLike, default: str = IMPORTED_CONV_LAYOUT) -> str:
    """The conv2d data layout the tuning directory's records were tuned in (a build must use it too);
    ``default`` where none is recorded (before this record existed, tunings were NCHW)."""
    path = Path(directory) / CONV_LAYOUT_FILE
    if not path.is_file():
        return default
    try:
        layout = json.loads(path.read_text())["conv2d"]
    except (ValueError, TypeError, KeyError):
        raise BackendError(f'{path}: not a conv layout record (expected {{"conv2d": "NHWC"}} or "NCHW")') from None
    if layout not in CONV_KERNEL_LAYOUTS:
        raise BackendError(f"{path}: unknown conv2d layout {layout!r} (known: {', '.join(CONV_KERNEL_LAYOUTS)})")
    return layout


def record_conv_layout(directory: str | os.PathLike, layout: str) -> None:
    (Path(directory) / CONV_LAYOUT_FILE).write_text(json.dumps({"conv2d": layout}) + "\n")


def lower(
    mod: tvm.IRModule, spec: TargetSpec, tuning_db: ms.Database | None = None, conv_layout: str = IMPORTED_CONV_LAYOUT
) -> tuple[tvm.IRModule, list[str]]:
    """The target's default Relax pipeline: fusion and legalization; on GPU also dlight schedules.

    With ``tuning_db``, the fused PrimFuncs found in it get their tuned schedules and the others go on
    as without it (``conv_layout``: the one it was tuned in). Returns the lowered module and the names
    of the PrimFuncs scheduled from the database.
    """
    first, second = _pipeline_halves(spec.target, conv_layout)
    with spec.target, tuning_db if tuning_db is not None else contextlib.nullcontext():
        fused = tvm.transform.Sequential(first)(mod)
        # made here: the pass takes the current target and database when it is made
        tuned = relax.transform.MetaScheduleApplyDatabase()(fused) if tuning_db is not None else fused
        return tvm.transform.Sequential(second)(tuned), sorted(_scheduled(tuned) - _scheduled(fused))


def _scheduled(mod: tvm.IRModule) -> set[str]:
    return {
        gvar.name_hint
        for gvar, func in mod.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs.get("tirx.is_scheduled", False)
    }


def functions_without_kernel(build: TVMBuild) -> list[str]:
    """PrimFuncs of a GPU build with no kernel in the device code: left unscheduled, they became host code."""
    source = build.device_source()
    return [
        gvar.name_hint
        for gvar, func in build.lowered.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and f"{gvar.name_hint}_kernel" not in source
    ]


def build(
    model: ir.Model,
    spec: TargetSpec,
    tuning_db: ms.Database | None = None,
    gated_schedules: Mapping[str, GatedConvSchedule] | None = None,
    conv_layout: str = IMPORTED_CONV_LAYOUT,
) -> TVMBuild:
    """``tuning_db``: MetaSchedule's records; ``gated_schedules``: tuned gated kernel knobs by workload;
    ``conv_layout``: the conv2d data layout the records were tuned in."""
    lowered, tuned = lower(import_to_relax(model, spec.target, gated_schedules), spec, tuning_db, conv_layout)
    result = TVMBuild(
        spec,
        lowered,
        relax.build(lowered, spec.target, relax_pipeline=None, exec_mode=_exec_mode(spec)),
        tuned,
        conv_layout,
    )
    if spec.is_gpu and (missing := functions_without_kernel(result)):
        raise BackendError(
            f"{spec.name}: no GPU kernel for {', '.join(missing)} (unscheduled, they would run as host code)"
        )
    return result
