"""Shared test helpers: the example models, the CLI runner and the emulated aarch64 device.

Markers (registered in pyproject.toml): ``device``, ``tuning``, ``training`` and ``slow`` keep a test out
of ``make test-fast``; ``device`` and ``rapidocr`` also name a resource. A test whose resource is missing
is skipped with the reason, except under ``EDGESPARSE_REQUIRE_ALL=1`` (``make test``, CI): there it fails,
so that CI never passes by skipping. Every user of the ``emulated_device`` fixture is marked ``device``
here; the rapidocr test model's parameter carries ``rapidocr`` (see ``MODEL_NAMES``)."""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import onnx
import onnx_ir as ir
import pytest

from edgesparse.backends.emulated_device import EmulatedArmDevice
from edgesparse.frontends.third_party import rapidocr_classifier
from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.frontends.zoo import build_zoo_model

REPO = Path(__file__).resolve().parents[1]
REQUIRE_ALL = os.environ.get("EDGESPARSE_REQUIRE_ALL") == "1"


def resource_missing(reason: str) -> NoReturn:
    """Skips the test with ``reason``; fails it instead under EDGESPARSE_REQUIRE_ALL=1 (make test, CI)."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (EDGESPARSE_REQUIRE_ALL=1: a missing resource fails the test)", pytrace=False)
    pytest.skip(reason)


@functools.cache
def _device_is_set_up() -> bool:
    return EmulatedArmDevice(REPO / ".device").is_set_up()


# Marker -> (is the resource there, why the test cannot run without it).
RESOURCES = {
    "device": (
        _device_is_set_up,
        "the emulated aarch64 device is not set up: run `python tools/device.py setup` (make test does)",
    ),
    "rapidocr": (
        lambda: importlib.util.find_spec("rapidocr_onnxruntime") is not None,
        "rapidocr-onnxruntime is not installed: pip install -e '.[test]' (make install does)",
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "emulated_device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Checks each resource the test's markers name before any of its fixtures run."""
    for marker, (present, reason) in RESOURCES.items():
        if item.get_closest_marker(marker) and not present():
            resource_missing(reason)


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


# The four styles of test net and one real third-party ONNX CNN (from the rapidocr-onnxruntime package;
# the biggest, slowest to compile: make test-fast leaves it to make test).
MODEL_NAMES = [
    "resnet",
    "mobilenetv2",
    "unet",
    "edsr",
    pytest.param("rapidocr-cls", marks=[pytest.mark.rapidocr, pytest.mark.slow]),
]


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
        resource_missing(RESOURCES["device"][1])
    return device


@pytest.fixture(scope="session")
def emulated_device():
    """One emulated server behind a tracker, for the whole session."""
    port = free_port(count=2)  # the tracker's, then the server's
    with set_up_device(port, port + 1).running(n_servers=1) as device:
        yield device
