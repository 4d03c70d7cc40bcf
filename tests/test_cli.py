"""The command-line tools as a user meets them: the happy path (bad input: tests/test_bad_inputs.py)."""

import numpy as np
import pytest
from conftest import run_tool

from edgesparse.frontends import load_onnx
from edgesparse.passes.onnxruntime_ref import max_relative_error, run_onnxruntime


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    result = run_tool("zoo", "tiny", "-o", path)
    assert result.returncode == 0, result.stderr
    return path


def test_compile_then_run_on_the_host(tiny_onnx, tmp_path):
    compiled = run_tool("compile", tiny_onnx, "--target", "llvm", "-o", tmp_path / "build")
    assert compiled.returncode == 0, compiled.stderr
    assert "MACs 1,622,336 -> 1,622,336" in compiled.stdout
    assert sorted(path.name for path in (tmp_path / "build").iterdir()) == ["model.onnx", "model.so", "report.json"]

    inputs = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    np.savez(tmp_path / "x.npz", **inputs)
    ran = run_tool("run", tmp_path / "build", "--inputs", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert ran.returncode == 0, ran.stderr
    with np.load(tmp_path / "y.npz") as outputs:
        assert list(outputs) == ["output"]
        expected = run_onnxruntime(load_onnx(tiny_onnx), inputs)["output"]
        assert max_relative_error(outputs["output"], expected) < 1e-4


# The bad-input cases (one error line, exit 2, output untouched) are one table in tests/test_bad_inputs.py.
