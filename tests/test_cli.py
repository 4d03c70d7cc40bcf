"""The command-line tools as a user meets them: the happy path, and one-line errors for bad input."""

import numpy as np
import pytest
from conftest import free_port, run_tool, save_model
from onnx import TensorProto, helper

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


def unsupported_op_model(path):
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Det", ["r"], ["y"], name="determinant"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    return save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def bad_compile_cases(tmp_path, tiny_onnx):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello\n")
    return {
        "missing file": (["compile", tmp_path / "absent.onnx", "--target", "llvm"], "absent.onnx: no such file"),
        "not onnx": (["compile", not_onnx, "--target", "llvm"], "not an ONNX model"),
        "unsupported op": (
            ["compile", unsupported_op_model(tmp_path / "det.onnx"), "--target", "llvm"],
            "unsupported op Det in node 'determinant'",
        ),
        "unknown target": (["compile", tiny_onnx, "--target", "tpu"], "unknown target 'tpu'"),
        "unknown device tag": (
            ["compile", tiny_onnx, "--target", "arm_cpu", "--device", "arm/nope"],
            "unknown device tag 'arm/nope'",
        ),
        "unknown pass": (["compile", tiny_onnx, "--target", "llvm", "--passes", "default,nope"], "unknown pass 'nope'"),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["missing file", "not onnx", "unsupported op", "unknown target", "unknown device tag", "unknown pass"]
)
def test_bad_compile_input_is_one_error_line_and_no_output(case, tmp_path, tiny_onnx):
    args, message = bad_compile_cases(tmp_path, tiny_onnx)[case]
    out_dir = tmp_path / "build"
    result = run_tool(*args, "-o", out_dir)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out_dir.exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".build")], (
        "no staging directory left behind"
    )


@pytest.mark.slow
def test_a_failed_compile_leaves_an_existing_artefact_untouched(tmp_path, tiny_onnx):
    out_dir = tmp_path / "build"
    assert run_tool("compile", tiny_onnx, "--target", "llvm", "-o", out_dir).returncode == 0
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    result = run_tool("compile", unsupported_op_model(tmp_path / "det.onnx"), "--target", "llvm", "-o", out_dir)
    assert result.returncode == 2
    assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before


@pytest.mark.slow
def test_unreachable_tracker_is_one_error_line(tmp_path, tiny_onnx):
    assert run_tool("compile", tiny_onnx, "--target", "arm_cpu", "-o", tmp_path / "build").returncode == 0
    result = run_tool(
        "run", tmp_path / "build", "--rpc", f"127.0.0.1:{free_port()}:arm64-qemu", "-o", tmp_path / "y.npz"
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: RPC tracker at 127.0.0.1:") and "does not answer" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "y.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--inputs", "absent.npz"], "--inputs absent.npz: no such file"),
        (["--rpc", "localhost:notaport"], "expected HOST:PORT:KEY"),
    ],
)
def test_bad_run_input_is_one_error_line(args, message, tmp_path, tiny_onnx):
    assert run_tool("compile", tiny_onnx, "--target", "llvm", "-o", tmp_path / "build").returncode == 0
    result = run_tool("run", tmp_path / "build", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
