"""The cuda target: GPU schedules (the same dlight rules as mali) built here, run where a GPU exists."""

import pytest
import tvm
from conftest import load_model

from edgesparse.backends import compile_model
from edgesparse.backends.tvm_build import functions_without_kernel
from edgesparse.passes.onnxruntime_ref import max_relative_error, random_inputs, run_onnxruntime


def test_cuda_build_has_a_kernel_for_every_compute_function():
    result = compile_model(load_model("unet"), "cuda")
    assert functions_without_kernel(result.build) == []
    assert result.build.device_source().count("__global__") > 5


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("name", ["resnet", "mobilenetv2", "unet", "edsr"])
def test_cuda_build_matches_onnxruntime_on_the_gpu(name, tmp_path):
    model = load_model(name)
    artefact = compile_model(model, "cuda").save(tmp_path / "build")
    inputs = random_inputs(model, seed=5)
    actual, expected = artefact.run(inputs), run_onnxruntime(model, inputs)
    assert max_relative_error(actual["output"], expected["output"]) < 1e-4
