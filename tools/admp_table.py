#!/usr/bin/env python3
"""ADMP tables: every model, pair, ratio and seed trained (or resumed), stripped, and timed masked vs stripped.

    python tools/admp_table.py -o build/admp/table            # residual-cnn on both digit pairs (resumes)
    python tools/admp_table.py --model resnet18 --size 32 --pairs mnist:mnist-m --ratios 0.6 -o build/admp/mnist-m
    python tools/admp_table.py --model mobilenet_v2 --weights imagenet --size 32 --pairs mnist:mnist-m \\
        --ratios 0.3,0.5,0.6,0.7 -o build/admp/mnist-m
    python tools/admp_table.py --pairs mnist:sklearn-digits --ratios 0.6 --seeds 0 --epochs 2 -o build/admp/quick

Per seed and pair, the source model and teacher are trained once (<out>/<model>/s<seed>/<source>-<target>/)
and shared by the ratios (.../r<percent>/, each a tools/train_admp.py output directory: the same command
resumes, and a train_admp.py run with the same settings and directories is reused). Every other
``Config`` field is an option, as in train_admp.py.

Per pair and ratio, over the seeds: each method's held-out target accuracy (mean ± sample sd); the kept
channels; the student's params and MACs masked (default passes) and after ``default,strip-channels``
(with ``--strip-round-to``); and
ONNX Runtime's latency of the masked and the stripped student (batch 1, --threads threads, the two timed
in turns, medians, averaged over the seeds), timed after all the training. Writes <out>/table.md and
<out>/table.json (keeping the rows of earlier calls for other models, pairs or ratios) and prints them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from _cli import run_main
from tqdm import tqdm
from train_admp import add_config_arguments

from edgesparse.backends.compiler import optimize
from edgesparse.backends.timing import interleaved_latencies_ms, onnxruntime_timer
from edgesparse.frontends.admp.experiments.run import METHODS, Config, Experiment
from edgesparse.passes import create_pass
from edgesparse.passes.errors import EdgesparseError
from edgesparse.passes.macs import count_params, total_macs

HEADER = [
    "model",
    "pair",
    "pruned",
    "seeds",
    *METHODS,
    "kept ch.",
    "round_to",
    "params",
    "MACs",
    "ORT ms",
    "ORT speed-up",
]


def parse_pair(text: str) -> tuple[str, str]:
    source, colon, target = text.partition(":")
    if not colon:
        raise EdgesparseError(f"--pairs {text!r}: expected SOURCE:TARGET")
    return source, target


def run_dirs(out: Path, config: Config) -> tuple[Path, Path]:
    """(the run's directory, the directory its source model and teacher are shared in)."""
    model = re.sub(r"[^\w.-]+", "_", config.model)  # FILE.py:NAME as one path component
    shared = out / model / f"s{config.seed}" / f"{config.source}-{config.target}"
    return shared / f"r{round(config.ratio * 100)}", shared


def measure(config: Config, out: Path, round_to: int) -> tuple[dict, list[ir.Model]]:
    """One seed's entry and its (masked, stripped) students, stripped with ``round_to``."""
    run, shared = run_dirs(out, config)
    metrics = Experiment(config, run, shared).run()
    student = ir.load(run / "student.onnx")
    masked, _ = optimize(student, "default")
    stripped, _ = optimize(student, "default,strip-channels", pass_options={"strip-channels": {"round_to": round_to}})
    entry = {
        "target_acc": metrics["target_acc"],
        "kept_channel_ratio": metrics["kept_channel_ratio"],
        "params": [count_params(masked), count_params(stripped)],
        "macs": [total_macs(masked), total_macs(stripped)],
    }
    return entry, [masked, stripped]


def ort_latencies(models: list[ir.Model]) -> list[float]:
    """Each model's median ONNX Runtime latency (ms) at batch 1, all timed in turns."""
    timers = []
    for model in models:
        image = model.graph.inputs[0]
        shape = [size if isinstance(size, int) else 1 for size in image.shape]  # a symbolic batch: 1
        timers.append(onnxruntime_timer(model, {image.name: np.zeros(shape, np.float32)}, number=20))
    return interleaved_latencies_ms(timers)


def mean_sd(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.1f}{unit}"
    return f"{mean:.1f} ± {statistics.stdev(values) * scale:.1f}{unit}"


def summarize(config: Config, seeds: list[dict], round_to: int) -> dict:
    """The seeds of one (model, pair, ratio) as one table entry."""
    first = seeds[0]
    return {
        "model": config.model,
        "source": config.source,
        "target": config.target,
        "ratio": config.ratio,
        "seeds": [each["seed"] for each in seeds],
        "target_acc": {method: [each["target_acc"][method] for each in seeds] for method in METHODS},
        "kept_channel_ratio": [each["kept_channel_ratio"] for each in seeds],
        "strip_round_to": round_to,
        # Architecture and ratio fix the masked size; the stripped one can differ by seed (pinned groups).
        "params": [first["params"][0], statistics.fmean(each["params"][1] for each in seeds)],
        "macs": [first["macs"][0], statistics.fmean(each["macs"][1] for each in seeds)],
        "ort_ms": [statistics.fmean(each["ort_ms"][k] for each in seeds) for k in (0, 1)],
        "runs": seeds,
    }


def merged(table: Path, entries: list[dict]) -> list[dict]:
    """The rows of an earlier call's table (another --model, pair or ratio in the same directory), with
    ``entries`` in place of those they measure again."""
    key = lambda entry: (entry["model"], entry["source"], entry["target"], entry["ratio"])  # noqa: E731
    measured = {key(entry) for entry in entries}
    earlier = json.loads(table.read_text()) if table.exists() else []
    # Rows of an older admp_table (other fields) are measured again by calling it again, not kept.
    current = [entry for entry in earlier if entry.keys() == entries[0].keys()]
    return [entry for entry in current if key(entry) not in measured] + entries


def row(entry: dict) -> list[str]:
    masked_ms, stripped_ms = entry["ort_ms"]
    return [
        entry["model"],
        f"{entry['source']} -> {entry['target']}",
        f"{entry['ratio']:.0%}",
        str(len(entry["seeds"])),
        *(mean_sd(entry["target_acc"][method], 100, "%") for method in METHODS),
        mean_sd(entry["kept_channel_ratio"], 100, "%"),
        str(entry["strip_round_to"]),
        f"{entry['params'][0]:,} -> {round(entry['params'][1]):,}",
        f"{entry['macs'][0] / 1e6:.2f}M -> {entry['macs'][1] / 1e6:.2f}M",
        f"{masked_ms:.3f} -> {stripped_ms:.3f}",
        f"{masked_ms / stripped_ms:.2f}x",
    ]


def markdown(entries: list[dict]) -> str:
    lines = [HEADER, ["---"] * len(HEADER), *map(row, entries)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, skip=("source", "target", "ratio", "seed"))
    parser.add_argument(
        "--pairs", default="mnist:sklearn-digits,sklearn-digits:mnist", help="comma-separated SOURCE:TARGET pairs"
    )
    parser.add_argument("--ratios", default="0.3,0.5,0.6,0.7", help="comma-separated pruned fractions")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (mean and spread over them)")
    parser.add_argument(
        "--strip-round-to", type=int, default=1, help="strip-channels' round_to for the stripped students (default 1)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default 1)")
    parser.add_argument("-o", "--output", required=True, help="directory of the runs and the table")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # the thread count onnxruntime_timer uses
    settings = {
        field.name: getattr(args, field.name) for field in dataclasses.fields(Config) if hasattr(args, field.name)
    }
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
        ratios = [float(ratio) for ratio in args.ratios.split(",")]
    except ValueError as exc:
        raise EdgesparseError(f"--seeds/--ratios: {exc}") from None
    # Every setting is checked (Config's and strip-channels' own checks) before the first run trains.
    create_pass("strip-channels", round_to=args.strip_round_to)
    groups = [
        [Config(*parse_pair(pair), ratio=ratio, seed=seed, **settings) for seed in seeds]
        for pair in args.pairs.split(",")
        for ratio in ratios
    ]
    out = Path(args.output)
    measured = []
    for configs in tqdm(groups, desc="table", unit="pair-ratio"):
        measured.append([(config, *measure(config, out, args.strip_round_to)) for config in configs])
    # Timed after all the training, each seed's masked and stripped student in turns.
    entries = []
    for runs in measured:
        seeds = []
        for config, entry, models in runs:
            seeds.append({**entry, "seed": config.seed, "ort_ms": ort_latencies(models)})
        entries.append(summarize(runs[0][0], seeds, args.strip_round_to))
    out.mkdir(parents=True, exist_ok=True)
    entries = merged(out / "table.json", entries)
    (out / "table.json").write_text(json.dumps(entries, indent=2) + "\n")
    (out / "table.md").write_text(markdown(entries))
    print(markdown(entries), end="")
    return 0


if __name__ == "__main__":
    run_main(main)
