"""The compiled artefact directory and its report.

``DIR/model.onnx``   the graph after the passes
``DIR/model.so``     the TVM library (self-contained; an aarch64 ELF for arm targets)
``DIR/model.cl``     (mali) / ``DIR/model.cu`` (cuda): the generated GPU source, kept for inspection
``DIR/report.json``  target, passes, inputs/outputs, MACs and params before/after, per-node MACs,
                     the functions scheduled from a tuning database

Everything is written into a temporary sibling directory first and moved into place only when all of
it succeeded, so a failed compile never leaves half an artefact behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgesparse.backends.errors import BackendError
from edgesparse.backends.rpc import RPCAddress
from edgesparse.backends.runner import run_library
from edgesparse.backends.tvm_build import TVMBuild
from edgesparse.passes.macs import count_macs, count_params
from edgesparse.passes.onnxruntime_ref import input_specs
from edgesparse.passes.report import GatedLayers, read, recorded_reports

MODEL_FILE = "model.onnx"
LIBRARY_FILE = "model.so"
REPORT_FILE = "report.json"
GPU_SOURCE_FILES = {"opencl": "model.cl", "cuda": "model.cu"}


def make_report(original: ir.Model, optimized: ir.Model, pass_names: list[str], build: TVMBuild) -> dict:
    nodes = count_macs(optimized)
    macs_after = sum(entry.macs for entry in nodes)
    gated = read(optimized, GatedLayers)
    return {
        "target": build.spec.name,
        "device": build.spec.device,
        "tvm_target": str(build.spec.target),
        "runtime_device": build.spec.runtime_device,
        "passes": pass_names,
        "inputs": [
            {"name": name, "shape": list(shape), "dtype": str(dtype)} for name, shape, dtype in input_specs(optimized)
        ],
        "outputs": [value.name for value in optimized.graph.outputs],
        "macs_before": sum(entry.macs for entry in count_macs(original)),
        "macs_after": macs_after,
        "macs_effective": gated.effective_macs(macs_after) if gated is not None else None,
        "params_before": count_params(original),
        "params_after": count_params(optimized),
        "nodes": [{"name": entry.name, "op_type": entry.op_type, "macs": entry.macs} for entry in nodes],
        "tuned_functions": build.tuned_functions,
        "conv_layout": build.conv_layout,
        **recorded_reports(optimized),
    }


def write_artefact(out_dir: str | os.PathLike, optimized: ir.Model, build: TVMBuild, report: dict) -> Path:
    """Writes the artefact files atomically (per directory); returns ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BackendError(f"-o {out_dir}: exists and is not a directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        ir.save(optimized, staging / MODEL_FILE)
        build.export(staging / LIBRARY_FILE)
        if build.spec.is_gpu:
            (staging / GPU_SOURCE_FILES[build.spec.runtime_device]).write_text(build.device_source())
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if out_dir.exists():
            for item in staging.iterdir():
                os.replace(item, out_dir / item.name)
            staging.rmdir()
        else:
            os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


class Artefact:
    """A compiled artefact directory, read back for running."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        report_path = self.directory / REPORT_FILE
        if not report_path.is_file() or not (self.directory / LIBRARY_FILE).is_file():
            raise BackendError(
                f"{self.directory}: not a compiled artefact (needs {REPORT_FILE} and {LIBRARY_FILE}; make one "
                "with tools/compile.py)"
            )
        self.report = json.loads(report_path.read_text())

    @property
    def input_names(self) -> list[str]:
        return [entry["name"] for entry in self.report["inputs"]]

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The inputs in graph order, each checked against the compiled shape."""
        ordered = []
        for entry in self.report["inputs"]:
            if entry["name"] not in inputs:
                raise BackendError(f"input {entry['name']!r} missing (given: {', '.join(inputs) or 'none'})")
            array = np.asarray(inputs[entry["name"]], dtype=entry["dtype"])
            if list(array.shape) != entry["shape"]:
                raise BackendError(
                    f"input {entry['name']!r} has shape {list(array.shape)}, the model was compiled for "
                    f"{entry['shape']}"
                )
            ordered.append(array)
        return ordered

    def run(self, inputs: dict[str, np.ndarray], rpc_address: RPCAddress | None = None) -> dict[str, np.ndarray]:
        outputs = run_library(
            self.directory / LIBRARY_FILE, self.report["runtime_device"], self.check_inputs(inputs), rpc_address
        )
        return dict(zip(self.report["outputs"], outputs))
