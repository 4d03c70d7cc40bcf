import numpy as np
import onnx
import pytest
import torch
from conftest import save_model
from onnx import TensorProto, helper

from edgesparse.frontends import load_onnx, set_input_shapes
from edgesparse.frontends.third_party import rapidocr_classifier_path
from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.frontends.zoo import build_zoo_model
from edgesparse.passes import EdgesparseError
from edgesparse.passes.onnxruntime_ref import run_onnxruntime


def opset11_model() -> onnx.ModelProto:
    """Conv then Squeeze with its axes as an attribute: the opset-11 form that opset 13 changed."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor(
        "w", TensorProto.FLOAT, [4, 2, 3, 3], rng.standard_normal(72).astype(np.float32).tolist()
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("ReduceMean", ["c"], ["m"], name="mean", axes=[2, 3], keepdims=1),
            helper.make_node("Squeeze", ["m"], ["y"], name="squeeze", axes=[2, 3]),
        ],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)


def test_old_opset_is_upgraded_to_13_with_same_outputs(tmp_path):
    old = opset11_model()
    model = load_onnx(save_model(old, tmp_path / "old.onnx"))
    assert model.opset_imports[""] == 13
    squeeze = next(node for node in model.graph if node.op_type == "Squeeze")
    assert len(squeeze.inputs) == 2, "opset 13 Squeeze takes axes as an input"
    assert list(model.graph.outputs[0].shape) == [1, 4]
    x = {"x": np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)}
    np.testing.assert_allclose(run_onnxruntime(model, x)["y"], run_onnxruntime(old, x)["y"], rtol=1e-6)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(EdgesparseError, match="no such file"):
        load_onnx(tmp_path / "absent.onnx")


def test_a_file_that_is_not_onnx_is_a_user_error(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n")
    with pytest.raises(EdgesparseError, match="not an ONNX model"):
        load_onnx(path)


def test_torch_module_exports_with_shapes_and_same_outputs():
    module, example = build_zoo_model("resnet")
    model = from_torch(module, example, input_names=["image"], output_names=["logits"])
    assert [value.name for value in model.graph.inputs] == ["image"]
    assert all(output.shape is not None for node in model.graph for output in node.outputs), (
        "shapes inferred everywhere"
    )
    with torch.no_grad():
        expected = module(example).numpy()
    actual = run_onnxruntime(model, {"image": example.numpy()})["logits"]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.rapidocr
def test_input_shapes_can_be_fixed_for_a_dynamic_model():
    model = load_onnx(rapidocr_classifier_path())
    assert not all(isinstance(dim, int) and dim > 0 for dim in model.graph.inputs[0].shape)
    model = set_input_shapes(model, {"x": [2, 3, 48, 192]})
    assert list(model.graph.inputs[0].shape) == [2, 3, 48, 192]
    conv_outputs = [node.outputs[0].shape for node in model.graph if node.op_type == "Conv"]
    assert all(shape[0] == 2 and all(isinstance(dim, int) for dim in shape) for shape in conv_outputs)
    with pytest.raises(EdgesparseError, match="no input of that name"):
        set_input_shapes(model, {"image": [1, 3, 48, 192]})
