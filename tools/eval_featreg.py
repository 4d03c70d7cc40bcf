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
from pathlib import Path

from _cli import run_main

from edgesparse.frontends import load_onnx
from edgesparse.frontends.calibration import image_files
from edgesparse.frontends.featreg.experiments.data import Degradation, load_photo
from edgesparse.frontends.featreg.experiments.evaluate import check_level, evaluate_onnx, model_task
from edgesparse.passes.errors import EdgesparseError


def photo_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise EdgesparseError(f"--images {directory}: no such directory")
    files = image_files(directory)
    if not files:
        raise EdgesparseError(f"--images {directory}: no PNG or JPEG files in it")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an .onnx file written by tools/train_featreg.py")
    parser.add_argument("--images", type=Path, required=True, help="a folder of PNG/JPEG photos (the clean targets)")
    task = parser.add_mutually_exclusive_group()
    task.add_argument("--scale", type=int, help="evaluate as x-scale super-resolution")
    task.add_argument("--sigma", type=float, help="evaluate as denoising at this noise std (8-bit levels)")
    parser.add_argument("--level", type=float, help="the sparsity level (one of the model's)")
    args = parser.parse_args()

    model = load_onnx(args.model)
    check_level(model, args.level)  # before reading any photo: a wrong level is the cheaper mistake to report
    trained = model_task(model)
    if args.scale is not None or (args.sigma is None and trained.get("task") == "sr"):
        degradation = Degradation("sr", scale=args.scale or trained.get("scale", 2))
    elif args.sigma is not None or trained.get("task") == "denoise":
        degradation = Degradation("denoise", sigma=args.sigma or trained["sigma"])
    else:
        raise EdgesparseError(f"{args.model} does not record its task: give --scale or --sigma")
    photos = {path.name: load_photo(path, max_side=None) for path in photo_files(args.images)}
    print(json.dumps(evaluate_onnx(model, photos, degradation, args.level), indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
