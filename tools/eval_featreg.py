#!/usr/bin/env python3
"""Evaluate an exported FeatReg model on a folder of photos, through the featreg pass, and print JSON.

    python tools/eval_featreg.py out/model.onnx --images DIR --scale 2 --level 0.9
    python tools/eval_featreg.py models/featreg-denoise-s25.onnx --images DIR --sigma 25 --level 0.9

Prints {"model": {"psnr", "ssim"}, "bicubic" (sr) or "noisy" (denoise): {"psnr", "ssim"}, "sparsity":
{"mean", "layers": {gated conv: ...}}, "macs_dense", "macs_effective", ...}: PSNR/SSIM on Y (border crop
= the scale for SR), sparsity measured on these photos, MACs per photo averaged. SR inputs are the photos
downscaled with bicubic; denoise inputs get seeded Gaussian noise. Without --level the model runs at its
exported (lowest-level) thresholds; --scale/--sigma default to what the model was trained for.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from _cli import run_main
from PIL import Image

from edgesparse.frontends import load_onnx
from edgesparse.frontends.calibration import image_files
from edgesparse.frontends.featreg.experiments.data import Degradation, load_photo
from edgesparse.frontends.featreg.experiments.evaluate import check_level, evaluate_onnx, model_task
from edgesparse.passes.errors import EdgesparseError

# The smallest photo side evaluated: SSIM's 7-pixel window after the border crop, at every scale in use.
MIN_SIDE = 16


def photo_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise EdgesparseError(f"--images {directory}: no such directory")
    files = image_files(directory)
    if not files:
        raise EdgesparseError(f"--images {directory}: no PNG or JPEG files in it")
    return files


def read_photo(path: Path) -> np.ndarray:
    try:
        photo = load_photo(path, max_side=None)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise EdgesparseError(f"--images {path}: not an image this tool can read ({exc})") from None
    if min(photo.shape[:2]) < MIN_SIDE:
        height, width = photo.shape[:2]
        raise EdgesparseError(f"--images {path}: {width}x{height} pixels; photos need {MIN_SIDE} or more a side")
    return photo


def finite_or_null(value):
    """``value`` (JSON-like) with every NaN or infinite float replaced by None."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an .onnx file written by tools/train_featreg.py")
    parser.add_argument("--images", type=Path, required=True, help="a folder of PNG/JPEG photos (the clean targets)")
    task = parser.add_mutually_exclusive_group()
    task.add_argument("--scale", type=int, help="evaluate as x-scale super-resolution")
    task.add_argument("--sigma", type=float, help="evaluate as denoising at this noise std (8-bit levels)")
    parser.add_argument("--level", type=float, help="the sparsity level (one of the model's)")
    args = parser.parse_args()

    if args.scale is not None and args.scale < 2:
        raise EdgesparseError(f"--scale {args.scale}: give the super-resolution factor, 2 or more")
    if args.sigma is not None and not args.sigma > 0:
        raise EdgesparseError(f"--sigma {args.sigma}: give the noise std in 8-bit levels, more than 0")
    model = load_onnx(args.model)
    check_level(model, args.level)  # before reading any photo: a wrong level is the cheaper mistake to report
    trained = model_task(model)
    if args.scale is not None and trained.get("scale") not in (None, args.scale):
        raise EdgesparseError(
            f"--scale {args.scale}: {args.model} was trained for x{trained['scale']} super-resolution"
        )
    if args.scale is not None or (args.sigma is None and trained.get("task") == "sr"):
        degradation = Degradation("sr", scale=args.scale or trained.get("scale", 2))
    elif args.sigma is not None or trained.get("task") == "denoise":
        degradation = Degradation("denoise", sigma=args.sigma or trained["sigma"])
    else:
        raise EdgesparseError(f"{args.model} does not record its task: give --scale or --sigma")
    photos = {path.name: read_photo(path) for path in photo_files(args.images)}
    # A flat photo scores an infinite PSNR: JSON has no Infinity, so it is null there.
    print(json.dumps(finite_or_null(evaluate_onnx(model, photos, degradation, args.level)), indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    run_main(main)
