#!/usr/bin/env python3
"""Write one of the built-in example CNNs (seeded random weights) as an ONNX file.

python tools/zoo.py tiny -o build/tiny.onnx
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import onnx_ir as ir
from _cli import check_output_path, run_main

from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.frontends.zoo import ZOO, build_zoo_model
from edgesparse.passes.errors import EdgesparseError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(ZOO))
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    output = check_output_path(args.output, directory=False)
    module, example = build_zoo_model(args.name, args.seed)
    model = from_torch(module, example, input_names=["input"], output_names=["output"])
    # Written beside its name first: an interrupted write leaves no partial file.
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".onnx", dir=output.parent)
    except OSError as exc:
        raise EdgesparseError(f"-o {output}: cannot write there ({exc.strerror or exc})") from None
    os.close(handle)
    try:
        ir.save(model, staging)
        os.replace(staging, output)
    except OSError as exc:
        raise EdgesparseError(f"-o {output}: cannot write it ({exc.strerror or exc})") from None
    finally:
        Path(staging).unlink(missing_ok=True)
    print(f"wrote {output} ({args.name}, input {list(example.shape)})")
    return 0


if __name__ == "__main__":
    run_main(main)
