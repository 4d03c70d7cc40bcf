#!/usr/bin/env python3
"""Write one of the built-in example CNNs (seeded random weights) as an ONNX file.

python tools/zoo.py tiny -o build/tiny.onnx
"""

from __future__ import annotations

import argparse

import onnx_ir as ir
from _cli import check_output_path, run_main, write_file

from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.frontends.zoo import ZOO, build_zoo_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(ZOO))
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    output = check_output_path(args.output, directory=False)
    module, example = build_zoo_model(args.name, args.seed)
    model = from_torch(module, example, input_names=["input"], output_names=["output"])
    write_file(output, lambda staging: ir.save(model, staging), ".onnx")
    print(f"wrote {output} ({args.name}, input {list(example.shape)})")
    return 0


if __name__ == "__main__":
    run_main(main)
