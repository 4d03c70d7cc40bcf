import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from edgesparse.frontends.onnx_frontend import proto_to_ir
from edgesparse.passes import create_pass
from edgesparse.passes.onnxruntime_ref import random_inputs, run_onnxruntime

RNG = np.random.default_rng(0)


def tensor(name: str, shape) -> "TensorProto":
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def batchnorm_params(prefix: str, channels: int) -> list:
    return [
        numpy_helper.from_array(RNG.uniform(0.5, 1.5, channels).astype(np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(RNG.uniform(-0.5, 0.5, channels).astype(np.float32), f"{prefix}_bias"),
        numpy_helper.from_array(RNG.uniform(-0.5, 0.5, channels).astype(np.float32), f"{prefix}_mean"),
        numpy_helper.from_array(RNG.uniform(0.5, 2.0, channels).astype(np.float32), f"{prefix}_var"),
    ]


def make_model(nodes, initializers, x_shape=(1, 3, 8, 8), extra_inputs=()) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    return proto_to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def assert_same_outputs(before: ir.Model, after: ir.Model, rtol=1e-5):
    inputs = random_inputs(before, seed=3)
    expected, actual = run_onnxruntime(before, inputs), run_onnxruntime(after, inputs)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=1e-5)


def bn_node(source: str, prefix: str, output: str):
    return helper.make_node(
        "BatchNormalization",
        [source, *(f"{prefix}_{p}" for p in ("scale", "bias", "mean", "var"))],
        [output],
        name=prefix,
    )


def test_fold_batchnorm_removes_bn_and_keeps_outputs():
    model = make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]), bn_node("c", "bn", "y")],
        [tensor("w", (4, 3, 3, 3)), tensor("b", (4,)), *batchnorm_params("bn", 4)],
    )
    after = create_pass("fold-batchnorm")(model.clone()).model
    assert op_types(after) == ["Conv"]
    assert_same_outputs(model, after)


def test_fold_batchnorm_refuses_a_weight_shared_by_two_convs():
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
            bn_node("c1", "bn1", "n1"),
            helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2"),
            bn_node("c2", "bn2", "n2"),
            helper.make_node("Add", ["n1", "n2"], ["y"], name="add"),
        ],
        [tensor("w", (4, 3, 1, 1)), *batchnorm_params("bn1", 4), *batchnorm_params("bn2", 4)],
    )
    after = create_pass("fold-batchnorm")(model.clone()).model
    assert op_types(after).count("BatchNormalization") == 2
    assert_same_outputs(model, after)


def test_lift_constants_moves_constant_node_weights_to_initializers():
    weight = tensor("w_value", (4, 3, 1, 1))
    model = make_model(
        [
            helper.make_node("Constant", [], ["w"], name="weight", value=weight),
            helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        ],
        [],
    )
    after = create_pass("lift-constants")(model.clone()).model
    assert op_types(after) == ["Conv"]
    np.testing.assert_array_equal(after.graph.initializers["w"].const_value.numpy(), numpy_helper.to_array(weight))
    assert_same_outputs(model, after)


def test_remove_unused_drops_dead_nodes_unused_initializers_and_initializer_inputs():
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
            helper.make_node("Relu", ["x"], ["dead"], name="dead_relu"),
        ],
        [tensor("w", (4, 3, 1, 1)), tensor("unused", (7,))],
        # An old-style model that also lists its weight as a graph input.
        extra_inputs=[helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 1, 1])],
    )
    assert [value.name for value in model.graph.inputs] == ["x", "w"]
    after = create_pass("remove-unused")(model.clone()).model
    assert op_types(after) == ["Conv"]
    assert set(after.graph.initializers) == {"w"}
    assert [value.name for value in after.graph.inputs] == ["x"]


def test_fold_constants_folds_a_shape_computation_into_a_constant():
    model = make_model(
        [
            helper.make_node("Shape", ["x"], ["shape"], name="shape"),
            helper.make_node("Slice", ["shape", "zero", "two"], ["batch_channels"], name="slice"),
            helper.make_node("Concat", ["batch_channels", "minus_one"], ["target"], name="concat", axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
        ],
        [
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([2], np.int64), "two"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        ],
    )
    after = create_pass("remove-unused")(create_pass("fold-constants")(model.clone()).model).model
    assert op_types(after) == ["Reshape"]
    assert after.graph.node(0).inputs[1].const_value.numpy().tolist() == [1, 3, -1]
    assert_same_outputs(model, after)


def test_shape_inference_fills_in_intermediate_shapes():
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", strides=[2, 2]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        [tensor("w", (4, 3, 3, 3))],
    )
    for node in model.graph:
        node.outputs[0].shape = None
    after = create_pass("shape-inference")(model).model
    assert list(after.graph.node(0).outputs[0].shape) == [1, 4, 3, 3]
    assert list(after.graph.outputs[0].shape) == [1, 4, 3, 3]
