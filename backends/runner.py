"""Runs a compiled library with TVM's VirtualMachine, on this host or on a device over RPC.

One code path for both: ``set_input`` / ``invoke_stateful`` / ``get_outputs``, because over RPC a
tuple result of ``vm["main"](...)`` cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

from edgesparse.backends.errors import BackendError
from edgesparse.backends.rpc import RPCAddress, request_session

_DEVICES = {"cpu": "cpu", "opencl": "cl", "cuda": "cuda"}


def _device(session, runtime_device: str):
    """``session`` is the ``tvm`` module for local devices or an RPC session for remote ones."""
    return getattr(session, _DEVICES[runtime_device])(0)


def run_vm(library: tvm.runtime.Module, device, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    vm = VirtualMachine(library, device)
    vm.set_input("main", *[tvm.runtime.tensor(array, device) for array in inputs])
    vm.invoke_stateful("main")
    # Not vm.get_outputs: its recursive closure makes a reference cycle through the VM, so over RPC the
    # session (and the device, which serves one session at a time) stays held until Python's cycle
    # collector happens to run. The VM module's own functions leave nothing behind.
    arity = vm.module["get_output_arity"]("main")
    if arity == -1:  # a single tensor, not a tuple
        return [vm.module["get_output"]("main").numpy()]
    return [vm.module["get_output"]("main", i).numpy() for i in range(arity)]


def run_library(
    library_path: str | os.PathLike,
    runtime_device: str,
    inputs: Sequence[np.ndarray],
    rpc_address: RPCAddress | None = None,
) -> list[np.ndarray]:
    """Runs ``main`` of the exported library on the inputs (in graph order); returns outputs in order."""
    if rpc_address is None:
        try:
            library = tvm.runtime.load_module(os.fspath(library_path))
        except Exception as exc:  # noqa: BLE001  (TVM raises its own error types from C++)
            first_line = (str(exc).strip().splitlines() or [""])[-1]
            raise BackendError(f"{library_path}: not a library this host can load ({first_line})") from None
        return run_vm(library, _device(tvm, runtime_device), inputs)
    session = request_session(rpc_address)
    session.upload(os.fspath(library_path))
    library = session.load_module(Path(library_path).name)
    return run_vm(library, _device(session, runtime_device), inputs)
