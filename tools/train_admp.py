#!/usr/bin/env python3
"""Prune a digit CNN for an unlabelled target domain with ADMP, next to its baselines.

    python tools/train_admp.py --source mnist --target sklearn-digits --ratio 0.6 -o build/admp/run/
    python tools/train_admp.py --source sklearn-digits --target mnist --ratio 0.5 --no-adversarial -o build/admp/abl/
    python tools/train_admp.py --model mobilenet_v2 --weights imagenet --size 32 --source mnist --target mnist-m \
        --ratio 0.6 -o build/admp/mbv2/
    torchrun --nproc-per-node 2 tools/train_admp.py --model resnet18 --size 32 --source mnist --target mnist-m \
        --device cuda -o build/admp/r18/
    python tools/compile.py build/admp/run/student.onnx --target arm_cpu --passes default,strip-channels -o build/arm/

Writes student.onnx (the ADMP student, hard masks as per-channel Mul constants for strip-channels),
teacher.onnx (the unpruned adapted teacher) and metrics.json (target accuracy of source_only, teacher,
prune_then_adapt and admp; kept_channel_ratio). Every stage is checkpointed in the output directory
(the source model and teacher in --shared-dir, if given): run the same command again to resume.
Under torchrun every process trains on its share of each global batch (--batch-size, which the number
of processes must divide), with BatchNorm statistics over the global batch, so N processes train as one
does (CPU or one GPU each); a checkpoint resumes with any number of them. Rank 0 writes the files.
Domains: mnist, mnist-m (MNIST blended with photos; needs `make data`), opencv-digits (needs `make data`),
sklearn-digits. --model: the project's residual-cnn, torchvision's resnet18 or mobilenet_v2 (kept in
edgesparse.frontends.admp.backbones with torchvision's parameter names), or your own FILE.py:NAME.
The method: frontends/admp/__init__.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import torch
from _cli import run_main

from edgesparse.frontends import distributed
from edgesparse.frontends.admp.experiments.run import METHODS, Config, Experiment
from edgesparse.passes import EdgesparseError

HELP = {
    "source": "labelled source domain: mnist, opencv-digits or sklearn-digits",
    "target": "unlabelled target domain (same choices)",
    "ratio": "fraction of the channels pruned, in (0, 1)",
    "source_limit": "at most this many source images",
    "target_limit": "at most this many target images (split into unlabelled training and held-out test images)",
    "mmd": "weight of an MMD feature-alignment term in every adaptation (0: off)",
    "epochs": "epochs of source training and of each adaptation",
    "model": "the net: residual-cnn (default), resnet18, mobilenet_v2 (torchvision's) or FILE.py:NAME",
    "weights": "a state dict loaded strictly into --model before its head is sized (imagenet: MobileNetV2's)",
    "recolour": "give the labelled source images random colours (a grayscale source for an RGB target)",
    "round_to": "every channel group keeps a multiple of this many channels (widths vectorized kernels like; "
    "default 1)",
    "collapse": "stop self-training, one epoch rolled back, when the target's class balance falls below this "
    "fraction of the source model's (0: never)",
}


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One option per Config field but ``skip``; booleans get --NAME / --no-NAME (the pieces of ADMP to
    switch off)."""
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=field.default, help=HELP.get(field.name)
            )
        elif field.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, help=HELP.get(field.name))
        else:
            if kind is str or str in typing.get_args(kind):
                convert = str
            else:
                convert = float if float in typing.get_args(kind) or kind is float else int
            parser.add_argument(
                flag, type=convert, default=field.default, help=HELP.get(field.name, f"default {field.default}")
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument(
        "-o", "--output", required=True, help="output directory (checkpoints, ONNX models, metrics.json)"
    )
    parser.add_argument(
        "--shared-dir",
        help=(
            "where the source model and teacher are checkpointed, for runs that differ only in ADMP settings "
            "(default: --output)"
        ),
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machines are shared)")
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda, cuda:1...)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = Config(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Config)})
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise EdgesparseError(f"--device {args.device!r}: not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EdgesparseError(f"--device {args.device}: this torch build has no CUDA device")
    metrics = Experiment(config, args.output, args.shared_dir, device=device).run()
    if not distributed.shutdown():
        return 0
    print(
        f"{config.source} -> {config.target}, {config.ratio:.0%} of the channels pruned (kept "
        f"{metrics['kept_channel_ratio']:.1%})"
    )
    for method in METHODS:
        print(f"  {method:<17} target accuracy {metrics['target_acc'][method]:.2%}")
    print(f"wrote {args.output}/: student.onnx, teacher.onnx, metrics.json")
    return 0


if __name__ == "__main__":
    run_main(main)
