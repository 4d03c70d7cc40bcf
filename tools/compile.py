#!/usr/bin/env python3
"""Compile an ONNX model: passes, then a TVM build for a target, written as an artefact directory.

python tools/compile.py model.onnx --target arm_cpu -o build/
python tools/compile.py model.onnx --target llvm --passes default,my-pass --plugin my_passes.py -o build/
python tools/compile.py model.onnx --target llvm --passes default,strip-channels --masks masks.json -o build/
python tools/compile.py model.onnx --target arm_cpu --tuning-db tuning/ -o build/    # after tools/tune.py
"""

from __future__ import annotations

import argparse

from _cli import run_main
from _model_args import add_model_arguments, load_model, pass_options

from edgesparse.backends import compile_model
from edgesparse.backends.artefact import check_output_dir
from edgesparse.passes.report import FeatRegSummary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="artefact directory (model.onnx, model.so, report.json)")
    parser.add_argument(
        "--tuning-db",
        help="a tuning directory written by tools/tune.py: the functions tuned there get their tuned schedules",
    )
    args = parser.parse_args()

    check_output_dir(args.output)  # before the work: a path that cannot be written is refused at once
    model = load_model(args)
    if model is None:
        return 0
    result = compile_model(
        model,
        args.target,
        device=args.device,
        passes=args.passes,
        debug=args.debug,
        pass_options=pass_options(args, model),
        tuning_db=args.tuning_db,
    )
    artefact = result.save(args.output)
    report = result.report
    print(f"target {report['target']}" + (f" ({report['device']})" if report["device"] else ""))
    print(f"passes {', '.join(report['passes'])}")
    effective = f" ({report['macs_effective']:,} effective)" if report["macs_effective"] is not None else ""
    print(
        f"MACs {report['macs_before']:,} -> {report['macs_after']:,}{effective}; params {report['params_before']:,} "
        f"-> {report['params_after']:,}"
    )
    if (featreg := report.get(FeatRegSummary.KEY)) is not None:
        print(f"featreg: {featreg['gated_convs']} convs read a gate, {featreg['rewritten']} became GatedConv")
    if args.tuning_db:
        print(
            f"tuned schedules from {args.tuning_db}: {len(report['tuned_functions'])} functions "
            f"({', '.join(report['tuned_functions']) or 'none matched'}), convs in {report['conv_layout']}"
        )
    print(f"wrote {artefact.directory}/: {', '.join(sorted(path.name for path in artefact.directory.iterdir()))}")
    return 0


if __name__ == "__main__":
    run_main(main)
