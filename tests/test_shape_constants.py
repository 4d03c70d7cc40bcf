"""Shape-like inputs computed from constants (issue 26): a CNN whose Pad, Reshape, Resize, Slice and Expand
take their pads / shape / sizes / starts and ends from constant subgraphs (Cast, Concat, Reshape of
constants) compiles for llvm and matches ONNX Runtime, whether the constants are Constant nodes or
initializers listed as graph inputs (as exporters write them with ``keep_initializers_as_inputs``)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesparse.backends import compile_model
from edgesparse.frontends.onnx_frontend import proto_to_ir
from edgesparse.passes.onnxruntime_ref import max_relative_error, random_inputs, run_onnxruntime
from edgesparse.passes.pipeline import run_pipeline

SHAPE_CONSUMERS = {"Pad": 1, "Reshape": 1, "Resize": 3, "Slice": 1, "Expand": 1}


def shape_constant_cnn(*, initializers_as_inputs: bool) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(3->4) -> Pad(pads = Cast(Concat(a, b))) [1,4,10,10] -> Reshape(shape = Reshape of a
    [2,2] constant) [1,2,20,10] -> Resize(sizes = Concat(const, Cast(const))) [1,2,40,20] -> Slice(starts/ends
    = Concat of constants) [1,2,32,16] -> Expand(shape = Cast(const)) [2,2,32,16] -> Relu."""
    rng = np.random.default_rng(0)
    constants = {
        "pads_a": np.array([0, 0, 1, 1], np.float32),
        "pads_b": np.array([0, 0, 1, 1], np.float32),
        "shape_2d": np.array([[1, 2], [20, 10]], np.int64),
        "flat": np.array([4], np.int64),
        "batch_chan": np.array([1, 2], np.int64),
        "hw": np.array([40.0, 20.0], np.float32),
        "starts_a": np.array([4], np.int64),
        "starts_b": np.array([2], np.int64),
        "ends_a": np.array([36], np.int64),
        "ends_b": np.array([18], np.int64),
        "axes": np.array([2, 3], np.int64),
        "expand_f": np.array([2, 1, 1, 1], np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["pads_a", "pads_b"], ["pads_f"], name="pads_concat", axis=0),
        helper.make_node("Cast", ["pads_f"], ["pads"], name="pads_cast", to=TensorProto.INT64),
        helper.make_node("Pad", ["c", "pads"], ["p"], name="pad"),
        helper.make_node("Reshape", ["shape_2d", "flat"], ["new_shape"], name="shape_reshape"),
        helper.make_node("Reshape", ["p", "new_shape"], ["r"], name="reshape"),
        helper.make_node("Cast", ["hw"], ["hw_i"], name="hw_cast", to=TensorProto.INT64),
        helper.make_node("Concat", ["batch_chan", "hw_i"], ["sizes"], name="sizes_concat", axis=0),
        helper.make_node("Resize", ["r", "", "", "sizes"], ["z"], name="resize", mode="nearest"),
        helper.make_node("Concat", ["starts_a", "starts_b"], ["starts"], name="starts_concat", axis=0),
        helper.make_node("Concat", ["ends_a", "ends_b"], ["ends"], name="ends_concat", axis=0),
        helper.make_node("Slice", ["z", "starts", "ends", "axes"], ["s"], name="slice"),
        helper.make_node("Cast", ["expand_f"], ["expand_shape"], name="expand_cast", to=TensorProto.INT64),
        helper.make_node("Expand", ["s", "expand_shape"], ["e"], name="expand"),
        helper.make_node("Relu", ["e"], ["y"], name="relu"),
    ]
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    initializers = [weight]
    if initializers_as_inputs:
        for name, value in constants.items():
            initializers.append(numpy_helper.from_array(value, name))
            inputs.append(
                helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            )
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]))
    else:
        constant_nodes = [
            helper.make_node(
                "Constant", [], [name], name=f"{name}_constant", value=numpy_helper.from_array(value, name)
            )
            for name, value in constants.items()
        ]
        nodes = constant_nodes + nodes
    graph = helper.make_graph(
        nodes,
        "shape_constants",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 32, 16])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("initializers_as_inputs", [False, True], ids=["constant-nodes", "initializers-as-inputs"])
def test_shape_inputs_from_constant_subgraphs_fold_and_compile(initializers_as_inputs):
    model = proto_to_ir(shape_constant_cnn(initializers_as_inputs=initializers_as_inputs))
    cleaned = run_pipeline(model.clone(), "default")
    for node in cleaned.graph:
        if (index := SHAPE_CONSUMERS.get(node.op_type)) is not None:
            assert node.inputs[index].const_value is not None, f"{node.name}'s shape input was not folded"
    assert [value.name for value in cleaned.graph.inputs] == ["x"]

    inputs = {"x": random_inputs(model)["x"]}
    expected = run_onnxruntime(model, inputs)["y"]
    result = compile_model(model, "llvm")
    actual = result.run(inputs)["y"]
    assert actual.shape == (2, 2, 32, 16)
    assert max_relative_error(actual, expected) < 1e-5
