"""The compiled artefact directory and its report.

``DIR/model.onnx``   the graph after the passes
``DIR/model.so``     the TVM library (self-contained; an aarch64 ELF for arm targets)
``DIR/model.cl``     (mali) / ``DIR/model.cu`` (cuda): the generated GPU source, kept for inspection
``DIR/report.json``  target, passes, inputs/outputs, MACs and params before/after, per-node MACs,
                     the functions scheduled from a tuning database

Everything is written into a temporary sibling directory first and swapped in as a whole only when all
of it succeeded, so a failed compile never leaves half an artefact behind, and a reused directory keeps no
file of the artefact before. A directory holding anything else is refused, never emptied.
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
# What Artefact reads from a report.json.
REQUIRED_REPORT_KEYS = ("target", "runtime_device", "inputs", "outputs", "macs_before", "macs_after")


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


ARTEFACT_FILES = frozenset({MODEL_FILE, LIBRARY_FILE, REPORT_FILE, *GPU_SOURCE_FILES.values()})


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Refuses an ``-o`` that cannot become an artefact directory before any work is done: an empty path,
    a path under a file, a file, or a directory holding anything but artefact files (which a compile
    replaces as a whole: a stranger file there may be a user's, so it is refused rather than deleted)."""
    if os.fspath(out_dir) == "":
        raise BackendError("-o '': give the artefact directory's path")
    out_dir = Path(out_dir)
    for parent in reversed(out_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise BackendError(f"-o {out_dir}: {parent} is a file, not a directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise BackendError(f"-o {out_dir}: exists and is not a directory")
    # The new artefact is written beside out_dir, in the nearest directory that exists.
    beside = next((parent for parent in out_dir.parents if parent.exists()), Path("."))
    if not os.access(beside, os.W_OK | os.X_OK):
        raise BackendError(f"-o {out_dir}: cannot write in {beside} (permission denied)")
    if out_dir.is_dir():
        strangers = sorted(
            path.name
            for path in out_dir.iterdir()
            if path.name not in ARTEFACT_FILES or path.is_symlink() or not path.is_file()
        )
        if strangers:
            raise BackendError(
                f"-o {out_dir}: holds {', '.join(strangers)}, which is not an artefact file (a compile replaces the "
                "whole directory): move it away or choose another directory"
            )
    return out_dir


def write_artefact(out_dir: str | os.PathLike, optimized: ir.Model, build: TVMBuild, report: dict) -> Path:
    """Writes a new artefact directory beside ``out_dir`` and swaps it in whole; returns ``out_dir``.

    A failure midway leaves the old directory as it was; a reused directory keeps no stale file (e.g. an old
    ``model.cl`` after an llvm build). The old directory is moved aside and removed only once the new one is
    in place. See :func:`check_output_dir` for what is refused.
    """
    out_dir = check_output_dir(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise BackendError(f"-o {out_dir}: cannot write there ({exc.strerror or exc})") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would become the artefact's
        ir.save(optimized, staging / MODEL_FILE)
        build.export(staging / LIBRARY_FILE)
        if build.spec.is_gpu:
            (staging / GPU_SOURCE_FILES[build.spec.runtime_device]).write_text(build.device_source())
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        _swap_in(staging, out_dir)
    except OSError as exc:
        raise BackendError(f"-o {out_dir}: cannot write the artefact ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _swap_in(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
    old.rmdir()
    os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except OSError:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
        try:
            self.report = json.loads(report_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise BackendError(f"{report_path}: not a valid report ({exc}); compile the artefact again") from None
        missing = [key for key in REQUIRED_REPORT_KEYS if not isinstance(self.report, dict) or key not in self.report]
        if missing:
            raise BackendError(f"{report_path}: no {', '.join(map(repr, missing))} entry; compile the artefact again")

    @property
    def input_names(self) -> list[str]:
        return [entry["name"] for entry in self.report["inputs"]]

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The inputs in graph order, each checked against the compiled shape and dtype."""
        if extra := [name for name in inputs if name not in self.input_names]:
            raise BackendError(
                f"input {', '.join(map(repr, extra))} is not the model's (its inputs: {', '.join(self.input_names)})"
            )
        ordered = []
        for entry in self.report["inputs"]:
            if entry["name"] not in inputs:
                raise BackendError(f"input {entry['name']!r} missing (given: {', '.join(inputs) or 'none'})")
            given = np.asarray(inputs[entry["name"]])
            expected = np.dtype(entry["dtype"])
            # Same kind (float64 data for a float32 input is fine); ints, complex or text are refused.
            if given.dtype.kind != expected.kind:
                raise BackendError(f"input {entry['name']!r} is {given.dtype}, the model takes {expected}")
            array = given.astype(expected)
            if list(array.shape) != entry["shape"]:
                raise BackendError(
                    f"input {entry['name']!r} has shape {list(array.shape)}, the model was compiled for "
                    f"{entry['shape']}"
                )
            ordered.append(array)
        return ordered

    def run(self, inputs: dict[str, np.ndarray], rpc_address: RPCAddress | None = None) -> dict[str, np.ndarray]:
        if rpc_address is None and self.report["target"] != "llvm":
            raise BackendError(
                f"{self.directory}: this artefact is for {self.report['target']} and needs its device: use --rpc "
                "HOST:PORT:KEY"
            )
        outputs = run_library(
            self.directory / LIBRARY_FILE, self.report["runtime_device"], self.check_inputs(inputs), rpc_address
        )
        return dict(zip(self.report["outputs"], outputs))
