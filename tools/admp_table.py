#!/usr/bin/env python3
"""The README's ADMP table: every pair and ratio trained (or resumed), stripped, compiled and timed.

    python tools/admp_table.py -o build/admp/table        # the README's table (resumes from build/admp/table/)
    python tools/admp_table.py --pairs mnist:sklearn-digits --ratios 0.6 --epochs 2 -o build/admp/quick

Per pair, the source model and teacher are trained once (<out>/<pair>/) and shared by the ratios
(<out>/<pair>/r<percent>/, each a tools/train_admp.py output directory). For each run: the target
accuracies, the student after ``default,strip-channels`` (params, MACs) against the unpruned teacher,
and TVM llvm latency of both (batch 1, one thread: the machine is shared), timed after all the
training, the builds in turns (``edgesparse.backends.timing.interleaved_latencies_ms``), the median per build.
Writes <out>/table.md and <out>/table.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from _cli import run_main

from edgesparse.backends import CompileResult, compile_model
from edgesparse.backends.timing import interleaved_latencies_ms, tvm_timer
from edgesparse.frontends.admp.experiments.run import METHODS, Config, Experiment
from edgesparse.passes.errors import EdgesparseError

HEADER = ["pair", "pruned", *METHODS, "kept ch.", "params", "MACs", "llvm ms"]


def parse_pair(text: str) -> tuple[str, str]:
    source, colon, target = text.partition(":")
    if not colon:
        raise EdgesparseError(f"--pairs {text!r}: expected SOURCE:TARGET")
    return source, target


def compiled(path: Path) -> CompileResult:
    """An ONNX file through the default passes and strip-channels, built for llvm."""
    return compile_model(ir.load(path), "llvm", passes="default,strip-channels")


def measure(config: Config, out: Path, shared: Path) -> tuple[dict, list[CompileResult]]:
    """The run's table entry (latency still to come) and its (teacher, student) builds."""
    metrics = Experiment(config, out, shared).run()
    builds = [compiled(out / "teacher.onnx"), compiled(out / "student.onnx")]
    entry = {
        "source": config.source,
        "target": config.target,
        "ratio": config.ratio,
        "target_acc": metrics["target_acc"],
        "kept_channel_ratio": metrics["kept_channel_ratio"],
        "params": [build.report["params_after"] for build in builds],
        "macs": [build.report["macs_after"] for build in builds],
    }
    return entry, builds


def time_builds(builds: list[CompileResult]) -> list[float]:
    """Each build's median latency (ms), the builds timed in turns (backends.timing's interleaving)."""
    timers = [
        tvm_timer(build.build.executable, [np.zeros(build.report["inputs"][0]["shape"], np.float32)], number=20)
        for build in builds
    ]
    return interleaved_latencies_ms(timers)


def row(entry: dict) -> list[str]:
    before_after = lambda pair, form: f"{form(pair[0])} -> {form(pair[1])}"  # noqa: E731
    return [
        f"{entry['source']} -> {entry['target']}",
        f"{entry['ratio']:.0%}",
        *(f"{entry['target_acc'][method]:.1%}" for method in METHODS),
        f"{entry['kept_channel_ratio']:.1%}",
        before_after(entry["params"], "{:,}".format),
        before_after(entry["macs"], lambda macs: f"{macs / 1e6:.2f}M"),
        before_after(entry["llvm_ms"], "{:.3f}".format),
    ]


def markdown(entries: list[dict]) -> str:
    lines = [HEADER, ["---"] * len(HEADER), *map(row, entries)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pairs", default="mnist:sklearn-digits,sklearn-digits:mnist", help="comma-separated SOURCE:TARGET pairs"
    )
    parser.add_argument("--ratios", default="0.3,0.5,0.6,0.7", help="comma-separated pruned fractions")
    parser.add_argument("--epochs", type=int, help="override Config.epochs (and admp-epochs) for a quick table")
    parser.add_argument("-o", "--output", required=True, help="directory of the runs and the table")
    args = parser.parse_args()

    torch.set_num_threads(1)
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    overrides = {"epochs": args.epochs, "admp_epochs": args.epochs} if args.epochs else {}
    # Every configuration checked before the first one trains.
    configs = [
        Config(*parse_pair(pair), ratio=float(ratio), **overrides)
        for pair in args.pairs.split(",")
        for ratio in args.ratios.split(",")
    ]
    out = Path(args.output)
    entries, builds = [], []
    for config in configs:
        shared = out / f"{config.source}-{config.target}"
        entry, pair = measure(config, shared / f"r{round(config.ratio * 100)}", shared)
        entries.append(entry)
        builds.extend(pair)
    # Timed after all the training, together.
    timings = iter(time_builds(builds))
    for entry in entries:
        entry["llvm_ms"] = [next(timings), next(timings)]
    (out / "table.json").write_text(json.dumps(entries, indent=2) + "\n")
    (out / "table.md").write_text(markdown(entries))
    print(markdown(entries), end="")
    return 0


if __name__ == "__main__":
    run_main(main)
