#!/usr/bin/env python3
"""Write one of the built-in example CNNs (seeded random weights) as an ONNX file.

python tools/zoo.py tiny -o build/tiny.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx_ir as ir
from _cli import run_main

from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.frontends.zoo import ZOO, build_zoo_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(ZOO))
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    module, example = build_zoo_model(args.name, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    ir.save(from_torch(module, example, input_names=["input"], output_names=["output"]), args.output)
    print(f"wrote {args.output} ({args.name}, input {list(example.shape)})")
    return 0


if __name__ == "__main__":
    run_main(main)
