#!/usr/bin/env python3
"""Train a FeatReg net (one set of weights, several sparsity levels), export it, measure it.

    python tools/train_featreg.py --task sr --scale 2 --levels 0.6,0.8,0.9,0.95 -o out/
    python tools/train_featreg.py --task sr --scale 2 --dense -o out-dense/      # the dense baseline
    # the levels fine-tuned from the dense baseline:
    python tools/train_featreg.py --task sr --scale 2 --init out-dense/ --steps 1200 --lr 2e-4 -o out/
    python tools/train_featreg.py --task denoise --sigma 25 --levels 0.6,0.8,0.9,0.95 -o out/
    # a finished run, re-exported with a level between trained ones:
    python tools/train_featreg.py --task sr --scale 2 --export-levels 0.6,0.8,0.85,0.9,0.95 -o out/
    # your own net (a class or function in a file or a package), gated by featreg.attach_gates:
    python tools/train_featreg.py --task sr --model examples/vdsr.py:VDSR --model-args '{"depth": 20}' -o out/
    # on a GPU, your own photos, two processes (data-parallel; NCCL on GPUs, gloo on CPU):
    torchrun --nproc-per-node 2 tools/train_featreg.py --task sr --device cuda --images photos/ -o out/

Writes out/checkpoint.pt (every --checkpoint-every steps; a rerun with the same -o resumes from it),
out/model.onnx (gates in the form the featreg pass reads, every level's thresholds in its metadata) and
out/metrics.json: the controller's check on held-out patches (target vs measured sparsity, per gate), the
test-set figures per level through the featreg pass (as tools/eval_featreg.py prints them), and per level
the featreg + TVM (llvm) build's image against PyTorch's and its latency against the dense build.
Photos: `make data` (Debian wallpapers for training, OpenCV samples for the test set), or --images DIR
(training; every 8th photo held out to calibrate) and --test-images DIR. Under torchrun --batch is the
global batch (split across the processes) and rank 0 writes the files; a checkpoint resumes with any
number of processes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _cli import run_main

from edgesparse.backends.compiler import compile_model
from edgesparse.backends.timing import onnxruntime_latency_ms, tvm_latency_ms
from edgesparse.frontends import distributed
from edgesparse.frontends.featreg.controller import SparsityController
from edgesparse.frontends.featreg.experiments.evaluate import TestPair, featreg_options, with_input_shape
from edgesparse.frontends.featreg.experiments.metrics import to_uint8
from edgesparse.frontends.featreg.experiments.run import Experiment, run
from edgesparse.frontends.featreg.multilevel import TrainConfig
from edgesparse.passes.errors import EdgesparseError


def parse_levels(text: str, option: str = "--levels") -> list[float]:
    try:
        levels = sorted({float(level) for level in text.split(",") if level.strip()})
    except ValueError:
        raise EdgesparseError(f"{option} {text!r}: expected comma-separated fractions, e.g. 0.6,0.8,0.9") from None
    if not levels or not all(0.0 < level < 1.0 for level in levels):
        raise EdgesparseError(f"{option} {text!r}: expected fractions between 0 and 1")
    return levels


def tvm_output_and_latency(
    model, inputs: np.ndarray, level: float | None, *, gated: bool = True, number: int = 3, repeat: int = 3
) -> tuple[np.ndarray, float]:
    """(output, latency in ms, median) of the TVM ``llvm`` build: through ``featreg`` at the level, or
    (``gated=False``) the dense build, gates left as Where + Conv."""
    shaped = with_input_shape(model, inputs)
    result = (
        compile_model(shaped, "llvm", passes="default,featreg", pass_options=featreg_options(level))
        if gated
        else compile_model(shaped, "llvm")
    )
    output = result.run({shaped.graph.inputs[0].name: inputs})[result.report["outputs"][0]]
    return output, tvm_latency_ms(result.build.executable, [inputs], number=number, repeat=repeat)


def tvm_check(model, controller: SparsityController, onnx_model, pair: TestPair) -> dict:
    """Per level: PSNR of PyTorch's image and of the featreg + TVM build's, and its latency against the dense
    TVM build's (gates left as Where + Conv) and ONNX Runtime's."""
    inputs = pair.input
    _, dense_ms = tvm_output_and_latency(onnx_model, inputs, None, gated=False)
    # ONNX Runtime on the model as exported: a second dense reference, with its own tuned conv kernels.
    ort_ms = onnxruntime_latency_ms(with_input_shape(onnx_model, inputs), {"input": inputs}, number=3, repeat=3)
    figures = {"shape": list(inputs.shape), "dense_ms": dense_ms, "ort_dense_ms": ort_ms, "levels": {}}
    for level in controller.levels or [None]:
        if level is not None:
            controller.apply(level)
        with torch.no_grad():
            reference = model(torch.from_numpy(inputs)).numpy()
        output, gated_ms = tvm_output_and_latency(onnx_model, inputs, level)
        psnr_torch, psnr_tvm = pair.score(to_uint8(reference[0]))["psnr"], pair.score(to_uint8(output[0]))["psnr"]
        figures["levels"][str(level)] = {
            "psnr_torch": psnr_torch,
            "psnr_tvm": psnr_tvm,
            "psnr_difference": abs(psnr_torch - psnr_tvm),
            "max_abs_difference": float(np.abs(output - reference).max()),
            "gated_ms": gated_ms,
        }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("sr", "denoise"), required=True)
    parser.add_argument("--scale", type=int, default=2, choices=(2, 3, 4), help="sr: the upscaling factor")
    parser.add_argument("--sigma", type=float, default=25.0, help="denoise: the noise std in 8-bit levels")
    parser.add_argument("--levels", default="0.6,0.8,0.9,0.95", help="the sparsity levels the one model serves")
    parser.add_argument(
        "--export-levels",
        help=(
            "the levels calibrated, measured and exported (default: --levels): a level between trained ones is "
            "served by the same weights, not trained for"
        ),
    )
    parser.add_argument(
        "--dense", action="store_true", help="train the dense baseline instead: ReLU gates, no levels, no penalty"
    )
    parser.add_argument("--width", type=int, default=32, help="channels of the hidden features")
    parser.add_argument("--blocks", type=int, default=4, help="sr: residual blocks")
    parser.add_argument(
        "--no-image-skip",
        action="store_true",
        help=(
            "no bicubic upscale of the input added to the output (sr: EDSR's plain layout) / no learned "
            "smoothing of the input for the noise to be taken from (denoise: DnCNN's plain layout)"
        ),
    )
    parser.add_argument("--depth", type=int, default=10, help="denoise: conv layers")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=48, help="target patch side, in output pixels")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--reg", choices=("hoyer", "l1"), default="hoyer", help="the FeatReg penalty")
    parser.add_argument("--reg-weight", type=float, default=0.01, help="the penalty's weight (0: none)")
    parser.add_argument(
        "--init",
        type=Path,
        help=(
            "start from the weights of another run's directory (e.g. the dense baseline's: sparsity "
            "fine-tuning) or of a model.onnx this tool wrote (e.g. models/featreg-sr-x2.onnx: more training)"
        ),
    )
    parser.add_argument(
        "--freeze-batchnorm",
        action="store_true",
        help="keep the BatchNorm running statistics of --init's model while training levels (denoise)",
    )
    parser.add_argument(
        "--model",
        help=(
            "your net instead of the built-in one: FILE.py:NAME or PACKAGE.MODULE:NAME, a class or function "
            "returning a torch.nn.Module (image in, image out), gated by featreg.attach_gates"
        ),
    )
    parser.add_argument(
        "--model-args", default="{}", help="--model's keyword arguments as JSON, e.g. '{\"depth\": 20}'"
    )
    parser.add_argument("--weights", type=Path, help="--model's dense weights (a torch state dict file) to start from")
    parser.add_argument("--images", type=Path, help="a directory of training photos instead of the packaged ones")
    parser.add_argument("--test-images", type=Path, help="a directory of test photos instead of the packaged ones")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--skip-tvm", action="store_true", help="leave the TVM check and timing out of metrics.json")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine's cores are shared (CI, other runs)

    levels = [] if args.dense else parse_levels(args.levels)
    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as error:
        raise EdgesparseError(f"--model-args {args.model_args!r}: not JSON ({error})") from None
    if not isinstance(model_args, dict):
        raise EdgesparseError(f"--model-args {args.model_args!r}: expected a JSON object of keyword arguments")
    if args.model_args != "{}" and not args.model:
        raise EdgesparseError("--model-args: give --model too")
    if args.weights is not None and not args.model:
        raise EdgesparseError("--weights: the dense weights of --model's net (built-in nets: --init)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgesparseError(f"--device {args.device}: no CUDA device here")
    if args.export_levels and args.dense:
        raise EdgesparseError("--export-levels: a --dense run has no levels")
    experiment = Experiment(
        task=args.task,
        output=args.output,
        scale=args.scale,
        sigma=args.sigma,
        levels=levels,
        export_levels=parse_levels(args.export_levels, "--export-levels") if args.export_levels else None,
        width=args.width,
        blocks=args.blocks,
        depth=args.depth,
        image_skip=not args.no_image_skip,
        patch=args.patch,
        batch=args.batch,
        init=args.init,
        model=args.model,
        model_args=model_args,
        weights=args.weights,
        images=args.images,
        test_images=args.test_images,
        device=args.device,
        train=TrainConfig(
            steps=args.steps,
            lr=args.lr,
            reg_weight=0.0 if args.dense else args.reg_weight,
            reg_kind=args.reg,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
            freeze_batchnorm=args.freeze_batchnorm,
        ),
    )
    metrics = run(
        experiment,
        device_check=None if args.skip_tvm else tvm_check,
        extra_metrics={"args": {key: str(value) for key, value in vars(args).items()}},
    )
    if not distributed.shutdown():
        return 0
    print(
        json.dumps(
            {
                level: {
                    "psnr": figures["model"]["psnr"],
                    "sparsity": figures["sparsity"]["mean"],
                    "macs_effective": figures["macs_effective"],
                }
                for level, figures in metrics["test"].items()
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}/: checkpoint.pt, model.onnx, metrics.json")
    return 0


if __name__ == "__main__":
    run_main(main)
