import json
import textwrap

import onnx_ir as ir
import pytest
from conftest import load_model, run_tool, save_model

from edgesparse.passes import DEFAULT_PASSES, EdgesparseError, expand_pass_names, register_pass, run_pipeline
from edgesparse.passes.registry import _REGISTRY


@pytest.fixture
def scratch_registry():
    """Passes a test registers are removed again afterwards."""
    before = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(before)


def test_default_expands_in_a_pass_list():
    assert expand_pass_names("default,my-pass") == [*DEFAULT_PASSES, "my-pass"]


def test_unknown_pass_is_a_user_error():
    with pytest.raises(EdgesparseError, match="unknown pass 'no-such-pass'"):
        run_pipeline(load_model("resnet"), "default,no-such-pass")


def test_a_name_cannot_be_registered_twice(scratch_registry):
    register_pass("twice")(lambda: None)
    with pytest.raises(EdgesparseError, match="already registered"):
        register_pass("twice")(lambda: None)


def test_a_registered_python_pass_runs_in_the_pipeline(scratch_registry):
    seen = []

    @register_pass("count-convs")
    class CountConvs(ir.passes.InPlacePass):
        def call(self, model):
            seen.append(sum(node.op_type == "Conv" for node in model.graph))
            return ir.passes.PassResult(model, False)

    run_pipeline(load_model("resnet"), "default,count-convs")
    assert seen == [9]  # stem, 2 per block, 2 strided 1x1 shortcuts


def test_debug_mode_names_a_pass_that_changes_outputs(scratch_registry):
    @register_pass("corrupt-first-weight")
    class CorruptFirstWeight(ir.passes.InPlacePass):
        def call(self, model):
            conv = next(node for node in model.graph if node.op_type == "Conv")
            weight = conv.inputs[1]
            weight.const_value = ir.tensor(weight.const_value.numpy() * 1.5)
            return ir.passes.PassResult(model, True)

    run_pipeline(load_model("resnet"), "default,corrupt-first-weight")  # not checked: runs through
    with pytest.raises(EdgesparseError, match="pass 'corrupt-first-weight' changed output 'output'"):
        run_pipeline(load_model("resnet"), "default,corrupt-first-weight", debug=True)


def test_debug_mode_accepts_the_clean_up_passes():
    model = run_pipeline(load_model("mobilenetv2"), "default", debug=True)
    assert "BatchNormalization" not in {node.op_type for node in model.graph}


PLUGIN = textwrap.dedent(
    '''
    """A user's pass, living outside the edgesparse package."""
    import onnx_ir as ir
    from edgesparse.passes import register_pass
    from edgesparse.passes.report import Note, record


    @register_pass("tag-relus")
    class TagRelus(ir.passes.InPlacePass):
        def call(self, model):
            relus = [node.name for node in model.graph if node.op_type == "Relu"]
            record(model, Note("tagged_relus", relus))
            return ir.passes.PassResult(model, False)
    '''
)


@pytest.mark.slow
def test_user_plugin_pass_runs_from_the_command_line(tmp_path):
    plugin = tmp_path / "my_passes.py"
    plugin.write_text(PLUGIN)
    model = save_model(load_model("resnet"), tmp_path / "resnet.onnx")
    listed = run_tool(
        "compile", "--plugin", plugin, "--list-passes", model, "--target", "llvm", "-o", tmp_path / "unused"
    )
    assert "tag-relus" in listed.stdout.split()
    result = run_tool(
        "compile",
        model,
        "--target",
        "llvm",
        "-o",
        tmp_path / "out",
        "--plugin",
        plugin,
        "--passes",
        "default,tag-relus",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["passes"] == [*DEFAULT_PASSES, "tag-relus"]
    compiled = ir.load(tmp_path / "out" / "model.onnx")
    assert report["tagged_relus"] == [node.name for node in compiled.graph if node.op_type == "Relu"]
    assert len(report["tagged_relus"]) == 7
