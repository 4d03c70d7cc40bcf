"""The one way through: an imported onnx-ir model -> the pass pipeline -> a TVM build for a target.

model = load_onnx("model.onnx")                      # or from_torch(module, example_inputs)
result = compile_model(model, "arm_cpu", passes="default,my-pass")
result.save("build/")                                # model.onnx, model.so, report.json
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import tvm

from edgesparse.backends.artefact import Artefact, make_report, write_artefact
from edgesparse.backends.errors import BackendError
from edgesparse.backends.gated_tuning import GatedScheduleRecords, KernelChoices
from edgesparse.backends.runner import run_vm
from edgesparse.backends.targets import resolve_target
from edgesparse.backends.tvm_build import IMPORTED_CONV_LAYOUT, TVMBuild, build, open_tuning_database, tuned_conv_layout
from edgesparse.passes.pipeline import DEFAULT_PASSES, expand_pass_names, run_pipeline


@dataclasses.dataclass
class CompileResult:
    optimized: ir.Model
    build: TVMBuild
    report: dict

    def save(self, out_dir: str | os.PathLike) -> Artefact:
        return Artefact(write_artefact(out_dir, self.optimized, self.build, self.report))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the build in this process; only host builds (``llvm``) can run here."""
        if self.build.spec.name != "llvm":
            raise BackendError(f"a {self.build.spec.name} build cannot run on this host: save it and use run.py --rpc")
        names = [entry["name"] for entry in self.report["inputs"]]
        outputs = run_vm(self.build.executable, tvm.cpu(0), [inputs[name] for name in names])
        return dict(zip(self.report["outputs"], outputs))


def optimize(
    model: ir.Model,
    passes: Sequence[str] | str = DEFAULT_PASSES,
    *,
    debug: bool = False,
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[ir.Model, list[str]]:
    """The passes run on a copy of ``model`` (left as it was): (the optimized copy, the pass names run)."""
    pass_names = expand_pass_names(passes)
    return run_pipeline(model.clone(), pass_names, debug=debug, pass_options=pass_options), pass_names


def compile_model(
    model: ir.Model,
    target: str = "llvm",
    *,
    device: str | None = None,
    passes: Sequence[str] | str = DEFAULT_PASSES,
    debug: bool = False,
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
    tuning_db: str | os.PathLike | None = None,
) -> CompileResult:
    """Runs the passes on a copy of ``model`` (which is left as it was) and builds the result.

    ``tuning_db``: a directory written by :func:`edgesparse.backends.tuning.tune` (``tools/tune.py``);
    the functions tuned there get their tuned schedules, the gated kernels their fastest knobs, and the
    convs the layout they were tuned in; a gated conv whose workload measured faster dense there
    (``kernel_choice.json``) stays dense. Without it, the featreg pass's ``min_sparsity`` decides.
    """
    spec = resolve_target(target, device)
    database = open_tuning_database(tuning_db) if tuning_db is not None else None  # before the passes: fail early
    gated_schedules = GatedScheduleRecords(tuning_db).best_schedules() if tuning_db is not None else None
    conv_layout = tuned_conv_layout(tuning_db) if tuning_db is not None else IMPORTED_CONV_LAYOUT
    optimized, pass_names = optimize(model, passes, debug=debug, pass_options=pass_options)
    if tuning_db is not None and "featreg" in pass_names:
        # The per-layer choice measured on the target: a gated conv whose tuned dense kernel was faster stays dense.
        dense = KernelChoices(tuning_db).dense_layers(optimized, spec.target)
        if dense:
            options = {name: dict(values) for name, values in (pass_options or {}).items()}
            options.setdefault("featreg", {})["dense_layers"] = dense
            optimized, pass_names = optimize(model, passes, debug=debug, pass_options=options)
    tvm_build = build(optimized, spec, database, gated_schedules, conv_layout)
    return CompileResult(optimized, tvm_build, make_report(model, optimized, pass_names, tvm_build))
