#!/usr/bin/env python3
"""Benchmarks, measured side by side in one run on this host (never part of the tests).

    python tools/bench.py                      # every section
    python tools/bench.py --sections models    # TVM (llvm, untuned) vs ONNX Runtime on the test nets

Each section prints a table whose ratios come from timings taken in this same run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from _cli import run_main
from tqdm import tqdm

from edgesparse.backends.timing import use_all_cores

SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {}


def section(name: str):
    def register(function: Callable[[argparse.Namespace], None]):
        SECTIONS[name] = function
        return function

    return register


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print(f"\n## {title}")
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)))


def bench_models() -> dict:
    """name -> onnx-ir model for the test nets and the real third-party CNN."""
    from edgesparse.frontends.torch_frontend import from_torch
    from edgesparse.frontends.zoo import ZOO, build_zoo_model

    models = {}
    for name in ZOO:
        module, example = build_zoo_model(name)
        models[name] = from_torch(module, example, input_names=["input"])
    from edgesparse.frontends.third_party import rapidocr_classifier

    models["rapidocr-cls"] = rapidocr_classifier()
    return models


@section("models")
def models_section(args: argparse.Namespace) -> None:
    """TVM (llvm, default pipeline, untuned) latency against ONNX Runtime's, per model at batch 1."""
    from edgesparse.backends import compile_model
    from edgesparse.backends.onnxruntime_ref import random_inputs
    from edgesparse.backends.timing import onnxruntime_latency_ms, tvm_latency_ms

    rows = []
    for name, model in tqdm(bench_models().items(), desc="models", unit="model"):
        result = compile_model(model, "llvm")
        inputs = random_inputs(result.optimized)
        tvm_ms = tvm_latency_ms(result.build.executable, list(inputs.values()), number=args.number, repeat=args.repeat)
        ort_ms = onnxruntime_latency_ms(result.optimized, inputs, number=args.number, repeat=args.repeat)
        rows.append([name, f"{result.report['macs_after'] / 1e6:.1f}", f"{tvm_ms:.3f}", f"{ort_ms:.3f}", f"{tvm_ms / ort_ms:.2f}"])
    print_table("TVM llvm (untuned) vs ONNX Runtime, batch 1", ["model", "MMACs", "TVM ms", "ORT ms", "TVM/ORT"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of: {', '.join(SECTIONS)}")
    parser.add_argument("--number", type=int, default=10, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings per figure (the median is shown)")
    args = parser.parse_args()
    threads = use_all_cores()
    print(f"threads: {threads} (TVM_NUM_THREADS and ONNX Runtime intra-op)")
    for name in args.sections.split(","):
        SECTIONS[name](args)
    return 0


if __name__ == "__main__":
    run_main(main)
