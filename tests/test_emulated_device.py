"""arm_cpu builds run on the emulated aarch64 device (qemu-user TVM RPC server) through the tracker."""

import gc
import time

import numpy as np
import pytest
from conftest import load_model, run_tool, save_model

from edgesparse.backends import compile_model
from edgesparse.backends.rpc import RPCAddress
from edgesparse.passes.onnxruntime_ref import max_relative_error, random_inputs, run_onnxruntime

pytestmark = pytest.mark.device


@pytest.mark.parametrize("name", ["mobilenetv2", "edsr"])
def test_arm_cpu_build_runs_on_the_device_and_matches_onnxruntime(name, emulated_device, tmp_path):
    model = load_model(name)
    artefact = compile_model(model, "arm_cpu").save(tmp_path / "build")
    inputs = random_inputs(model, seed=11)
    actual = artefact.run(inputs, RPCAddress.parse(emulated_device.rpc_address))
    expected = run_onnxruntime(model, inputs)
    assert max_relative_error(actual["output"], expected["output"]) < 1e-4


def test_a_finished_run_gives_the_device_back(emulated_device, tmp_path):
    """The device serves one session at a time: a run that kept its session alive (say, in a reference
    cycle that only Python's cycle collector frees) would block every later request."""
    model = load_model("resnet")
    artefact = compile_model(model, "arm_cpu").save(tmp_path / "build")
    gc.disable()  # the session must be released by the run itself, not by a collection that may not come
    try:
        artefact.run(random_inputs(model, seed=3), RPCAddress.parse(emulated_device.rpc_address))
        free = [emulated_device.status()["servers_free"]]
        while free[-1] == 0 and len(free) < 60:  # the server re-registers with the tracker after the session
            time.sleep(0.5)
            free.append(emulated_device.status()["servers_free"])
    finally:
        gc.enable()
    assert free[-1] == 1


def test_run_tool_on_the_device(emulated_device, tmp_path):
    model = save_model(load_model("resnet"), tmp_path / "resnet.onnx")
    assert run_tool("compile", model, "--target", "arm_cpu", "-o", tmp_path / "build").returncode == 0
    result = run_tool(
        "run", tmp_path / "build", "--rpc", emulated_device.rpc_address, "--check", "-o", tmp_path / "y.npz"
    )
    assert result.returncode == 0, result.stderr
    assert f"on device {emulated_device.rpc_address}" in result.stdout
    error = float(result.stdout.split("max relative difference to ONNX Runtime, output: ")[1].split()[0])
    assert error < 1e-4
    with np.load(tmp_path / "y.npz") as outputs:
        assert outputs["output"].shape == (1, 10)


def test_a_key_no_device_serves_is_named(emulated_device, tmp_path):
    model = save_model(load_model("resnet"), tmp_path / "resnet.onnx")
    assert run_tool("compile", model, "--target", "arm_cpu", "-o", tmp_path / "build").returncode == 0
    tracker = emulated_device.rpc_address.rsplit(":", 1)[0]
    result = run_tool("run", tmp_path / "build", "--rpc", f"{tracker}:pixel-farm")
    assert result.returncode == 2
    assert "has no device with key 'pixel-farm' (keys: arm64-qemu)" in result.stderr
