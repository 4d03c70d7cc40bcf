import pytest

from edgesparse.backends.targets import resolve_target
from edgesparse.passes import EdgesparseError


def test_arm_cpu_defaults_to_a_raspberry_pi_4_with_neon():
    spec = resolve_target("arm_cpu")
    assert spec.device == "arm/rasp4b64"
    assert str(spec.target.attrs["mtriple"]).startswith("aarch64")
    assert "+neon" in list(spec.target.attrs["mattr"])
    assert spec.cross_compiler == "aarch64-linux-gnu-g++"


def test_arm_cpu_takes_another_aarch64_tag():
    assert resolve_target("arm_cpu", "arm/rk3399").target.attrs["model"] == "rk3399"


def test_mali_is_opencl_with_an_aarch64_host():
    spec = resolve_target("mali", "arm/rk3399")
    assert spec.target.kind.name == "opencl"
    assert "mali" in list(spec.target.keys)
    assert str(spec.target.host.attrs["mtriple"]).startswith("aarch64")
    assert spec.runtime_device == "opencl"


def test_cuda_takes_an_arch():
    spec = resolve_target("cuda", "sm_80")
    assert spec.target.kind.name == "cuda" and spec.target.attrs["arch"] == "sm_80"


@pytest.mark.parametrize(
    "target, device, message",
    [
        ("tpu", None, "unknown target 'tpu'"),
        ("arm_cpu", "arm/no-such-board", "unknown device tag 'arm/no-such-board'"),
        ("arm_cpu", "arm/rasp3b", "not an aarch64 CPU"),  # a 32-bit board
        ("mali", "nvidia/jetson-orin-nano", "not an aarch64 CPU"),
        ("cuda", "gfx90a", "unknown CUDA device"),
        ("llvm", "arm/rasp4b64", "--device is not used"),
    ],
)
def test_bad_targets_are_user_errors(target, device, message):
    with pytest.raises(EdgesparseError, match=message):
        resolve_target(target, device)
