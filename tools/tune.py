#!/usr/bin/env python3
"""Tune an ONNX model's operators with MetaSchedule, measured on a board through a TVM RPC tracker
(or on this host), into a database directory that compile.py --tuning-db builds with.

    python tools/tune.py model.onnx --target arm_cpu --rpc 127.0.0.1:9190:arm64-qemu --trials 200 -o tuning/
    python tools/tune.py model.onnx --target llvm --trials 500 -o tuning/          # measured on this host
    python tools/compile.py model.onnx --target arm_cpu --tuning-db tuning/ -o build/

Give the same passes and options as to compile.py: tuning matches the functions of that build. Run it
again to resume: the trials the database already holds are not measured again.
"""

from __future__ import annotations

import argparse
import json

from _cli import check_output_path, run_main
from _model_args import add_model_arguments, load_model, pass_options

from edgesparse.backends.rpc import RPCAddress
from edgesparse.backends.targets import resolve_target
from edgesparse.backends.tuning import SESSION_TIMEOUT_S, TUNABLE_TARGETS, tune


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, TUNABLE_TARGETS)
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="tuning directory: the MetaSchedule database (kept and resumed) and its logs",
    )
    parser.add_argument(
        "--trials",
        type=int,
        required=True,
        help="candidates to measure in all: a search round per task, the rest by the tasks' measured time per run",
    )
    parser.add_argument(
        "--rpc",
        type=RPCAddress.parse,
        help="HOST:PORT:KEY of the RPC tracker and the board's key (default: measure on this host)",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=SESSION_TIMEOUT_S,
        help="seconds one candidate may take on the board (upload, load, runs)",
    )
    args = parser.parse_args()

    check_output_path(args.output, directory=True)  # before the work
    model = load_model(args)
    if model is None:
        return 0
    spec = resolve_target(args.target, args.device)
    summary = tune(
        model,
        spec,
        args.output,
        args.trials,
        args.rpc,
        passes=args.passes,
        debug=args.debug,
        pass_options=pass_options(args, model),
        session_timeout_s=args.session_timeout,
    )
    where = f"device {args.rpc}" if args.rpc else "this host"
    print(
        f"measured {summary.measured} candidates on {where} ({summary.failed} failed), tuned for "
        f"{summary.target.attrs['num-cores']} cores, convs in {summary.conv_layout}"
    )
    for task in summary.tasks:
        best = f"{task.best_ms:.4f} ms" if task.best_ms is not None else "no successful candidate"
        rate = f" ({task.gflops:.0f} GFLOP/s)" if task.gflops is not None else ""
        calls = f", {task.calls} calls a run" if task.calls > 1 else ""
        print(f"  {task.name}: {task.trials} trials, best {best}{rate}{calls}")
    for key, choice in summary.kernel_choices.items():
        shape = json.loads(key)
        times = ", ".join(
            f"{kind} {choice[f'{kind}_ms']:.4f} ms" if choice[f"{kind}_ms"] is not None else f"{kind} failed"
            for kind in ("dense", "gated")
        )
        print(
            f"  gated conv {shape['in_channels']}->{shape['out_channels']} on {shape['height']}x{shape['width']} "
            f"at sparsity {choice['sparsity']:.2f}: tuned {times}: builds keep it {choice['choice']}"
        )
    if (model_ms := summary.model_ms()) is not None:
        print(f"the tasks' best times, each timed alone, add up to {model_ms:.4f} ms a model run")
    print(f"database: {summary.work_dir}/ (build with: compile.py ... --tuning-db {summary.work_dir})")
    return 0


if __name__ == "__main__":
    run_main(main)
