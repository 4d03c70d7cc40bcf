"""Shared test helpers: the example models, the CLI runner and the emulated aarch64 device."""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from edgesparse.backends.emulated_device import EmulatedArmDevice
from edgesparse.frontends.third_party import rapidocr_classifier
from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.frontends.zoo import build_zoo_model

REPO = Path(__file__).resolve().parents[1]


def free_port(count: int = 1) -> int:
    """The first of ``count`` consecutive free loopback ports: devices started by tests never collide
    with a user's running device (make demo) or with another test run."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


# The four styles of test net and one real third-party ONNX CNN.
MODEL_NAMES = ["resnet", "mobilenetv2", "unet", "edsr", "rapidocr-cls"]


@functools.cache
def _load_model(name: str) -> ir.Model:
    if name == "rapidocr-cls":
        return rapidocr_classifier()
    module, example = build_zoo_model(name)
    return from_torch(module, example, input_names=["input"], output_names=["output"])


def load_model(name: str) -> ir.Model:
    """A fresh copy of a named test model (cached import, so each test may change its copy)."""
    return _load_model(name).clone()


def save_model(model: ir.Model | onnx.ModelProto, path: Path) -> Path:
    proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
    onnx.save(proto, path)
    return path


def run_tool(tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``tools/<tool>.py`` as a user would; output captured as text."""
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / f"{tool}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def set_up_device(tracker_port: int, server_port: int) -> EmulatedArmDevice:
    """The qemu aarch64 TVM RPC device (set up by `make test` through tools/device.py setup), not started."""
    device = EmulatedArmDevice(REPO / ".device", tracker_port=tracker_port, server_port=server_port)
    if not device.is_set_up():
        pytest.fail("the emulated aarch64 device is not set up: run `python tools/device.py setup` (make test does)")
    return device


@pytest.fixture(scope="session")
def emulated_device():
    """One emulated server behind a tracker, for the whole session."""
    port = free_port(count=2)  # the tracker's, then the server's
    with set_up_device(port, port + 1).running(n_servers=1) as device:
        yield device
