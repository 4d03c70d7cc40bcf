#!/usr/bin/env python3
"""Run a compiled artefact directory on this host or on a device through an RPC tracker.

python tools/run.py build/ --inputs x.npz -o y.npz
python tools/run.py build/ --rpc 127.0.0.1:9190:arm64-qemu --check
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np
from _cli import check_output_path, run_main, set_tvm_threads, write_file

from edgesparse.backends import Artefact
from edgesparse.backends.artefact import MODEL_FILE
from edgesparse.backends.rpc import RPCAddress
from edgesparse.frontends import load_onnx
from edgesparse.passes import EdgesparseError
from edgesparse.passes.onnxruntime_ref import max_relative_error, random_inputs, run_onnxruntime


def load_inputs(path: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise EdgesparseError(f"--inputs {path}: no such file")
    try:
        loaded = np.load(path)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise EdgesparseError(
                f"--inputs {path}: a .npy holds one unnamed array; give an .npz (np.savez(path, NAME=array))"
            )
        with loaded as archive:
            arrays = dict(archive)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise EdgesparseError(f"--inputs {path}: not an .npz archive ({exc})") from None
    # np.savez(path, array) names its one array arr_0: accept that for a one-input model.
    if len(arrays) == 1 and len(input_names) == 1 and input_names[0] not in arrays:
        return {input_names[0]: next(iter(arrays.values()))}
    return arrays


def compare(actual: np.ndarray, expected: np.ndarray) -> str:
    """The max relative difference to ONNX Runtime; where NaN or Inf are in either, whether they agree."""
    finite_actual, finite_expected = np.isfinite(actual), np.isfinite(expected)
    if not np.array_equal(finite_actual, finite_expected):
        return (
            f"the outputs disagree: {int((~finite_actual).sum())} NaN/Inf values here, "
            f"{int((~finite_expected).sum())} in ONNX Runtime's"
        )
    both = finite_actual & finite_expected
    if not both.any():
        return "none: every value is NaN or Inf, in ONNX Runtime's output too"
    error = max_relative_error(actual[both], expected[both])
    note = f" (over the finite values; {int((~both).sum())} NaN/Inf in both)" if not both.all() else ""
    return f"{error:.3g}{note}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artefact", help="a directory written by tools/compile.py")
    parser.add_argument(
        "--inputs", type=Path, help=".npz with one array per model input, by input name (default: seeded random inputs)"
    )
    parser.add_argument("-o", "--output", type=Path, help=".npz to write the outputs to, by output name")
    parser.add_argument(
        "--rpc",
        type=RPCAddress.parse,
        help="HOST:PORT:KEY of an RPC tracker and device key (default: run on this host)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with ONNX Runtime on the artefact's model.onnx and print the max relative error",
    )
    args = parser.parse_args()

    if args.output is not None:
        check_output_path(args.output, directory=False)  # before the work
    set_tvm_threads()
    artefact = Artefact(args.artefact)
    inputs = load_inputs(args.inputs, artefact.input_names) if args.inputs else None
    model = load_onnx(artefact.directory / MODEL_FILE) if args.check or inputs is None else None
    if inputs is None:
        inputs = random_inputs(model)
    artefact.check_inputs(inputs)  # named, shaped and typed as compiled: before anything runs
    for name, value in inputs.items():
        if np.asarray(value).dtype.kind in "fc" and not np.all(np.isfinite(value)):
            print(
                f"warning: input {name!r} holds NaN or Inf: the outputs may too, and TVM and ONNX Runtime "
                "may disagree on them",
                file=sys.stderr,
            )
    outputs = artefact.run(inputs, args.rpc)
    where = f"device {args.rpc}" if args.rpc else "this host"
    for name, value in outputs.items():
        print(f"output {name}: shape {list(value.shape)} on {where}")
    if args.check:
        reference = run_onnxruntime(model, inputs)
        for name, value in outputs.items():
            print(f"max relative difference to ONNX Runtime, {name}: {compare(value, reference[name])}")
    report = artefact.report
    print(f"MACs {report['macs_after']:,} (before passes {report['macs_before']:,})")
    if args.output:
        write_file(args.output, lambda staging: np.savez(staging, **outputs), ".npz")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    run_main(main)
