"""The per-layer choice between the gated and the dense kernel, from a tuning database's measurements
(kernel_choice.json, written by tune()): the decision logic, never wall-clock time."""

import json

import numpy as np
import pytest
from test_featreg_compile import featreg_compile, image_inputs

from edgesparse.backends import compile_model
from edgesparse.backends.gated_tuning import KERNEL_CHOICE_FILE, KernelChoices, choose_kernel, onnx_gated_shape
from edgesparse.backends.gated_tuning import workload_key as gated_workload_key
from edgesparse.backends.targets import resolve_target
from edgesparse.backends.tvm_build import TUNING_DATABASE_FILES
from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.frontends.zoo import build_zoo_model
from edgesparse.passes.featreg import DENSE_FASTER_ON_TARGET
from edgesparse.passes.gated_conv_op import OP_TYPE
from edgesparse.passes.onnxruntime_ref import max_relative_error, run_onnxruntime


@pytest.mark.parametrize(
    ("dense_ms", "gated_ms", "choice"),
    [(1.0, 0.5, "gated"), (0.5, 1.0, "dense"), (1.0, 1.0, "dense"), (None, 2.0, "gated"), (1.0, None, "dense")],
)
def test_the_faster_kernel_is_kept_and_a_failed_gated_kernel_never_wins(dense_ms, gated_ms, choice):
    assert choose_kernel(dense_ms, gated_ms) == choice


@pytest.fixture(scope="module")
def featreg_edsr():
    module, example = build_zoo_model("featreg-edsr")
    return from_torch(module, example, input_names=["input"], output_names=["output"])


def fake_tuning_dir(tmp_path, choices: dict[str, tuple[float | None, float | None]]):
    """A tuning directory with empty MetaSchedule files and the given (dense ms, gated ms) per workload key."""
    for name in TUNING_DATABASE_FILES:
        (tmp_path / name).write_text("")
    records = KernelChoices(tmp_path)
    for key, (dense_ms, gated_ms) in choices.items():
        records.add(key, dense_ms, gated_ms, 0.5)
    records.save()
    return tmp_path


def test_a_database_keeps_dense_the_shapes_measured_faster_dense(featreg_edsr, tmp_path):
    gated = featreg_compile(featreg_edsr, "llvm")
    target = resolve_target("llvm").target
    shapes = {node.name: onnx_gated_shape(node) for node in gated.optimized.graph if node.op_type == OP_TYPE}
    assert shapes and all(shapes.values())
    keys = sorted({gated_workload_key(shape, target) for shape in shapes.values()})
    # The first workload measured faster dense, the others faster gated.
    tuning_dir = fake_tuning_dir(tmp_path, {keys[0]: (1.0, 2.0), **{key: (2.0, 1.0) for key in keys[1:]}})
    assert json.loads((tuning_dir / KERNEL_CHOICE_FILE).read_text())[keys[0]]["choice"] == "dense"
    result = compile_model(
        featreg_edsr,
        "llvm",
        passes="default,featreg",
        pass_options={"featreg": {"min_sparsity": 0.0}},
        tuning_db=tuning_dir,
    )
    layers = {layer["name"]: layer for layer in result.report["layers"]}
    for name, shape in shapes.items():
        dense = gated_workload_key(shape, target) == keys[0]
        assert layers[name]["op"] == ("Conv" if dense else OP_TYPE), name
        assert (layers[name].get("kept_dense_because") == DENSE_FASTER_ON_TARGET) == dense, name
    inputs = image_inputs(featreg_edsr, seed=3)
    expected = run_onnxruntime(featreg_edsr, inputs)["output"]
    assert max_relative_error(result.run(inputs)["output"], expected) <= 1e-4


def test_without_kernel_choices_the_break_even_decides(featreg_edsr, tmp_path):
    tuning_dir = fake_tuning_dir(tmp_path, {})
    options = {"featreg": {"min_sparsity": 0.0}}
    with_db = compile_model(featreg_edsr, "llvm", passes="default,featreg", pass_options=options, tuning_db=tuning_dir)
    without = featreg_compile(featreg_edsr, "llvm")
    assert [layer["op"] for layer in with_db.report["layers"]] == [layer["op"] for layer in without.report["layers"]]
    assert all(layer["op"] == OP_TYPE for layer in without.report["layers"] if not layer.get("kept_dense_because"))
    assert np.isfinite(with_db.report["macs_after"])
