"""The model, target and pass options that compile.py and tune.py share: a tuning only matches a build
made from the same model through the same passes, so both take them the same way."""

from __future__ import annotations

import argparse

import onnx_ir as ir

from edgesparse.backends import TARGET_NAMES
from edgesparse.frontends import load_onnx, set_input_shapes
from edgesparse.frontends.calibration import load_calibration_inputs
from edgesparse.passes import EdgesparseError, expand_pass_names, load_plugin, registered_passes


def parse_shape(text: str) -> tuple[str, list[int]]:
    name, _, dims = text.rpartition("=")
    try:
        shape = [int(dim) for dim in dims.split(",")]
    except ValueError:
        raise EdgesparseError(f"--input-shape {text!r}: expected NAME=D0,D1,... with integer dims") from None
    if any(dim <= 0 for dim in shape):
        raise EdgesparseError(f"--input-shape {text!r}: every dim must be a positive integer")
    return name, shape


# pass -> its options on the command line (argparse dests), each allowed only with that pass in --passes
PASS_FLAGS = {"featreg": ("sparsity", "calibrate", "min_sparsity"), "strip-channels": ("masks", "round_to")}
# --calibrate reads at most this many samples: enough for stable quantiles, few enough to run in seconds.
CALIBRATION_LIMIT = 16


def pass_options(args: argparse.Namespace, model: ir.Model) -> dict:
    """The options each pass in --passes was given; --calibrate's photos or .npz files are read here, shaped
    like ``model``'s inputs, since the featreg pass takes samples, not paths."""
    if args.sparsity is not None and not 0.0 < args.sparsity < 1.0:
        raise EdgesparseError(f"--sparsity {args.sparsity}: give a fraction between 0 and 1 (both excluded)")
    if args.min_sparsity is not None and not 0.0 <= args.min_sparsity <= 1.0:
        raise EdgesparseError(f"--min-sparsity {args.min_sparsity}: give a fraction between 0 and 1")
    options = {}
    for pass_name, flags in PASS_FLAGS.items():
        given = {flag: getattr(args, flag) for flag in flags if getattr(args, flag) is not None}
        if given and pass_name not in expand_pass_names(args.passes):
            named = " and ".join(f"--{flag.replace('_', '-')}" for flag in given)
            raise EdgesparseError(
                f"{named} {'are options' if len(given) > 1 else 'is an option'} of the {pass_name} pass: add it "
                f"with --passes default,{pass_name}"
            )
        if given:
            options[pass_name] = given
    if "calibrate" in options.get("featreg", {}):
        options["featreg"]["calibrate"] = load_calibration_inputs(args.calibrate, model, CALIBRATION_LIMIT)
    return options


def add_model_arguments(parser: argparse.ArgumentParser, targets: tuple[str, ...] = TARGET_NAMES) -> None:
    """The model file, --target/--device, and the pass options (--passes, --plugin, ...)."""
    parser.add_argument("model", help="an .onnx file (opset 13+, older ones are upgraded)")
    parser.add_argument("--target", required=True, help=f"one of {', '.join(targets)}")
    parser.add_argument(
        "--device",
        help=(
            "TVM target tag: an aarch64 board for arm_cpu/mali (default arm/rasp4b64), an sm_XX arch or "
            "nvidia/... tag for cuda"
        ),
    )
    parser.add_argument(
        "--passes", default="default", help="comma-separated pass names; 'default' is the clean-up pipeline"
    )
    parser.add_argument(
        "--plugin", action="append", default=[], help="a module or .py file that registers passes (repeatable)"
    )
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        type=parse_shape,
        help="NAME=D0,D1,... fixes a symbolic input shape (repeatable)",
    )
    parser.add_argument(
        "--sparsity",
        type=float,
        help="featreg: the sparsity level whose thresholds to use (from the model's metadata, or calibrated)",
    )
    parser.add_argument(
        "--calibrate",
        help="featreg: photos or .npz samples (a directory or one .npz) to measure sparsity and calibrate thresholds",
    )
    parser.add_argument(
        "--min-sparsity",
        type=float,
        help=(
            "featreg: a calibrated conv sparser than this takes the gated kernel, others stay dense (default: "
            "the measured break-even, 0.35)"
        ),
    )
    parser.add_argument(
        "--masks", help="strip-channels: a .json or .npz mapping node names to the output channel indices they keep"
    )
    parser.add_argument(
        "--round-to",
        type=int,
        help=(
            "strip-channels: keep the fewest pruned channels needed for every stripped width to be a multiple "
            "of N (the vector width, e.g. 8 or 16; default 1: strip every pruned channel)"
        ),
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="after every pass: ONNX checker + ONNX Runtime comparison with the model before it",
    )
    parser.add_argument("--list-passes", action="store_true", help="print the registered pass names and exit")


def load_model(args: argparse.Namespace) -> ir.Model | None:
    """Loads the --plugin modules, then the model with --input-shape applied; None once --list-passes
    has printed the pass names (plugins included)."""
    for plugin in args.plugin:
        load_plugin(plugin)
    if args.list_passes:
        print("\n".join(registered_passes()))
        return None
    model = load_onnx(args.model)
    return set_input_shapes(model, dict(args.input_shape)) if args.input_shape else model
