"""The compile targets: what ``--target`` / ``--device`` mean in TVM terms.

- ``llvm``: the host CPU (tests, speed comparisons against ONNX Runtime).
- ``arm_cpu``: aarch64 + NEON; ``--device`` is a TVM target tag of an aarch64 board (default
  ``arm/rasp4b64``); the library is cross-compiled with ``aarch64-linux-gnu-g++``.
- ``mali``: OpenCL kernels (Mali limits: 256 threads a block, no warps) with an aarch64 host whose
  tag ``--device`` picks; cross-compiled like ``arm_cpu``.
- ``cuda``: the same GPU schedules as ``mali``, on CUDA, so that GPU code can be run and checked;
  ``--device`` is a TVM ``nvidia/...`` tag or an ``sm_XX`` arch (default ``sm_90``).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import tvm
from tvm.target import Target

from edgesparse.backends.errors import BackendError

ARM_CROSS_COMPILER = "aarch64-linux-gnu-g++"
DEFAULT_ARM_TAG = "arm/rasp4b64"
DEFAULT_CUDA_ARCH = "sm_90"
TARGET_NAMES = ("llvm", "arm_cpu", "mali", "cuda")


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    device: str | None
    target: Target
    # The TVM runtime device a build runs on: "cpu", "opencl" or "cuda".
    runtime_device: str
    # C++ compiler that links the exported library; None: TVM's default (the host's).
    cross_compiler: str | None

    @property
    def is_gpu(self) -> bool:
        return self.runtime_device != "cpu"


@functools.cache
def _tags() -> frozenset[str]:
    return frozenset(tvm.target.list_tags())


def _aarch64_host(tag: str) -> Target:
    if tag not in _tags():
        raise BackendError(f"unknown device tag {tag!r} (aarch64 examples: arm/rasp4b64, arm/rk3399, arm/pixel2)")
    host = Target(tag)
    if host.kind.name != "llvm" or not str(host.attrs.get("mtriple", "")).startswith("aarch64"):
        raise BackendError(f"device tag {tag!r} is not an aarch64 CPU (mtriple {host.attrs.get('mtriple')!r})")
    return host


def host_target() -> Target:
    return Target.from_device("cpu")


def resolve_target(name: str, device: str | None = None) -> TargetSpec:
    """Turns a target name and optional device into a :class:`TargetSpec`; unknown ones are user errors."""
    if name == "llvm":
        if device is not None:
            raise BackendError("--device is not used with --target llvm (it always builds for this host)")
        return TargetSpec(name, None, host_target(), "cpu", None)
    if name == "arm_cpu":
        device = device or DEFAULT_ARM_TAG
        return TargetSpec(name, device, _aarch64_host(device), "cpu", ARM_CROSS_COMPILER)
    if name == "mali":
        device = device or DEFAULT_ARM_TAG
        target = Target(
            {"kind": "opencl", "device": "mali", "keys": ["mali", "opencl", "gpu"]}, host=_aarch64_host(device)
        )
        return TargetSpec(name, device, target, "opencl", ARM_CROSS_COMPILER)
    if name == "cuda":
        device = device or DEFAULT_CUDA_ARCH
        if device.startswith("sm_"):
            # TVM parses the digits only when it builds ("Compute version parsing error"): check them here.
            if not re.fullmatch(r"sm_\d{2,3}[a-z]?", device):
                raise BackendError(f"--device {device!r}: not a CUDA arch (expected sm_ and digits, e.g. sm_90)")
            target = Target({"kind": "cuda", "arch": device}, host=host_target())
        elif device in _tags() and Target(device).kind.name == "cuda":
            target = Target(device, host=host_target())
        else:
            raise BackendError(f"unknown CUDA device {device!r} (an sm_XX arch or an nvidia/... TVM tag)")
        return TargetSpec(name, device, target, "cuda", None)
    raise BackendError(f"unknown target {name!r} (choose from {', '.join(TARGET_NAMES)})")
