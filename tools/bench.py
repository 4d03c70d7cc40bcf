#!/usr/bin/env python3
"""Benchmarks, measured side by side in one run on this host (never part of the tests).

    python tools/bench.py                      # every section
    python tools/bench.py --sections models    # TVM (llvm, untuned) vs ONNX Runtime on the test nets
    python tools/bench.py --sections strip     # masked vs channel-stripped models, TVM and ONNX Runtime

Each section prints a table whose ratios come from timings taken in this same run.
"""

from __future__ import annotations

import argparse
import itertools
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

    rows = []
    for name, model in tqdm(bench_models().items(), desc="models", unit="model"):
        result = compile_model(model, "llvm")
        tvm_ms, ort_ms = latencies_ms(result, random_inputs(result.optimized), args)
        rows.append([name, f"{result.report['macs_after'] / 1e6:.1f}", f"{tvm_ms:.3f}", f"{ort_ms:.3f}", f"{tvm_ms / ort_ms:.2f}"])
    print_table("TVM llvm (untuned) vs ONNX Runtime, batch 1", ["model", "MMACs", "TVM ms", "ORT ms", "TVM/ORT"], rows)


def latencies_ms(result, inputs: dict, args: argparse.Namespace) -> tuple[float, float]:
    """(TVM, ONNX Runtime) latency of a compiled model at the same inputs."""
    from edgesparse.backends.timing import onnxruntime_latency_ms, tvm_latency_ms

    tvm_ms = tvm_latency_ms(result.build.executable, list(inputs.values()), number=args.number, repeat=args.repeat)
    return tvm_ms, onnxruntime_latency_ms(result.optimized, inputs, number=args.number, repeat=args.repeat)


STRIP_MODELS = ("resnet", "mobilenetv2", "unet", "edsr", "rapidocr-cls")
STRIP_RATIOS = (0.3, 0.5, 0.7)


@section("strip")
def strip_section(args: argparse.Namespace) -> None:
    """Masked model vs the same model after strip-channels, at 30/50/70% of channels pruned by random masks
    (drawn per channel group, as a structured pruner prunes): TVM (llvm, untuned) and ONNX Runtime
    latency side by side, beside the speed-up the MACs promise."""
    from edgesparse.backends import compile_model
    from edgesparse.backends.onnxruntime_ref import random_inputs
    from edgesparse.passes.channel_masks import insert_masks, mask_operands, random_masks
    from edgesparse.passes.pipeline import run_pipeline

    models = {name: model for name, model in bench_models().items() if name in STRIP_MODELS}
    rows = []
    for (name, model), ratio in tqdm(list(itertools.product(models.items(), STRIP_RATIOS)), desc="strip", unit="model"):
        masked = run_pipeline(model.clone())
        insert_masks(masked, random_masks(masked, ratio, coupled=True))
        mask_values = [operands[1].const_value.numpy() for node in masked.graph if (operands := mask_operands(node))]
        pruned = 1 - sum(values.sum() for values in mask_values) / sum(values.size for values in mask_values)
        inputs = random_inputs(masked)
        masked_result = compile_model(masked, "llvm", passes="shape-inference")
        stripped_result = compile_model(masked, "llvm", passes="strip-channels")
        (tvm_masked, ort_masked), (tvm_stripped, ort_stripped) = (latencies_ms(result, inputs, args) for result in (masked_result, stripped_result))
        report = stripped_result.report
        rows.append([
            name, f"{ratio:.0%}", f"{pruned:.0%}", f"{report['macs_before'] / 1e6:.2f}", f"{report['macs_after'] / 1e6:.2f}",
            f"{report['macs_before'] / report['macs_after']:.2f}x",
            f"{tvm_masked:.3f}", f"{tvm_stripped:.3f}", f"{tvm_masked / tvm_stripped:.2f}x",
            f"{ort_masked:.3f}", f"{ort_stripped:.3f}", f"{ort_masked / ort_stripped:.2f}x",
        ])  # fmt: skip
    header = ["model", "ratio", "pruned", "MMACs masked", "stripped", "MACs speed-up", "TVM masked ms", "stripped", "speed-up", "ORT masked ms", "stripped", "speed-up"]
    print_table("strip-channels: masked vs stripped, batch 1 (TVM llvm untuned, ONNX Runtime)", header, rows)


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
