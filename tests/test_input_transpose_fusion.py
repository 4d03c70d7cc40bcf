"""fuse_input_transpose: the transpose before a conv goes into the conv's kernel; nothing else changes."""

import re

import pytest
import tvm
from conftest import load_model
from tvm import relax
from tvm.script import relax as R

from edgesparse.backends.input_transpose_fusion import PATTERN_NAME, fuse_input_transpose
from edgesparse.backends.relax_import import import_to_relax
from edgesparse.backends.runner import run_vm
from edgesparse.backends.targets import resolve_target
from edgesparse.backends.tvm_build import build, fuse
from edgesparse.passes.onnxruntime_ref import max_relative_error, random_inputs, run_onnxruntime

ACTIVATIONS = {
    "relu": relax.op.nn.relu,
    "max0": lambda value: relax.op.maximum(value, relax.const(0.0)),
    "min6": lambda value: relax.op.minimum(value, relax.const(6.0)),
    "sigmoid": relax.op.sigmoid,
}


def conv_module(*, bias: bool = True, activations: tuple[str, ...] = (), second_reader: bool = False) -> tvm.IRModule:
    """permute_dims(x) -> NHWC conv2d [-> add b] [-> activations], as ConvertLayout leaves a first conv;
    with ``second_reader``, another conv reads the same transpose."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((1, 3, 8, 8), "float32"))
    w = relax.Var("w", R.Tensor((4, 3, 3, 3), "float32"))
    b = relax.Var("b", R.Tensor((1, 1, 1, 4), "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            transposed = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            out = bb.emit(relax.op.nn.conv2d(transposed, w, padding=1, data_layout="NHWC", kernel_layout="OHWI"))
            if bias:
                out = bb.emit(relax.op.add(out, b))
            for activation in activations:
                out = bb.emit(ACTIVATIONS[activation](out))
            if second_reader:
                out = bb.emit(
                    relax.op.add(
                        out,
                        bb.emit(relax.op.nn.conv2d(transposed, w, padding=1, data_layout="NHWC", kernel_layout="OHWI")),
                    )
                )
            result = bb.emit_output(out)
        bb.emit_func_output(result)
    return bb.get()


def grouped_ops(mod: tvm.IRModule) -> list[list[str]]:
    """The ops of each function the pass made, in order."""
    return [
        [binding.value.op.name for block in func.body.blocks for binding in block.bindings]
        for _, func in mod.functions_items()
        if isinstance(func, relax.Function) and func.attrs is not None and func.attrs.get("Composite") == PATTERN_NAME
    ]


@pytest.mark.parametrize(
    ("activations", "group"),
    [
        ((), ["add"]),
        (("relu",), ["add", "nn.relu"]),
        (("max0", "min6"), ["add", "maximum", "minimum"]),  # ReLU6 as the importer writes a Clip
        (("sigmoid",), ["add"]),  # not a listed activation: left out, a kernel of its own after the group
    ],
)
def test_the_transpose_conv_bias_and_activations_are_one_group(activations, group):
    mod = fuse_input_transpose()(conv_module(activations=activations))
    assert grouped_ops(mod) == [["relax.permute_dims", "relax.nn.conv2d", *[f"relax.{op}" for op in group]]]


def test_a_transpose_another_op_reads_too_is_left_alone():
    mod = conv_module(activations=("relu",), second_reader=True)
    assert grouped_ops(fuse_input_transpose()(mod)) == []


def test_a_conv_without_bias_is_left_to_fuseops():
    # Grouped with the transpose alone it would lose the elementwise ops FuseOps fuses after it.
    assert grouped_ops(fuse_input_transpose()(conv_module(bias=False, activations=("relu",)))) == []


def test_an_nhwc_build_reads_the_nchw_input_in_its_first_conv_and_matches_onnxruntime():
    model, spec = load_model("tiny"), resolve_target("llvm")
    main = fuse(import_to_relax(model, spec.target), spec, "NHWC")["main"].script()
    first = re.search(r"call_tir\((\w+), \((\w+),", main)
    # The first kernel is the conv, reading the graph's NCHW input: no kernel of its own transposes it.
    assert first and "conv2d" in first[1] and first[2] == "input", main
    inputs = random_inputs(model, seed=5)
    [actual] = run_vm(build(model, spec, conv_layout="NHWC").executable, tvm.cpu(0), list(inputs.values()))
    assert max_relative_error(actual, run_onnxruntime(model, inputs)[model.graph.outputs[0].name]) < 1e-5
