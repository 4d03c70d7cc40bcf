"""Data-parallel FeatReg training: torchrun with two CPU processes (gloo) equals one process on the same
global batch, and a checkpoint resumes with another number of processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "featreg_ddp_worker.py"
STEPS = 4


def run(out_dir: Path, processes: int, *args) -> subprocess.CompletedProcess:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return subprocess.run(
        [*launcher, str(WORKER), str(out_dir), str(STEPS), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def result(out_dir: Path) -> dict:
    return torch.load(out_dir / "result.pt", weights_only=False)


def assert_same(one: dict, other: dict) -> None:
    for name, value in one["model"].items():
        assert torch.allclose(value, other["model"][name], rtol=1e-4, atol=1e-5), name
    for level, thresholds in one["controller"].items():
        assert torch.allclose(torch.tensor(thresholds), torch.tensor(other["controller"][level]), atol=1e-5), level


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("one")
    completed = run(out_dir, 1)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return result(out_dir)


@pytest.mark.training
def test_two_processes_equal_one_on_the_same_global_batch(tmp_path, one_process):
    completed = run(tmp_path, 2)
    assert completed.returncode == 0, completed.stderr[-3000:]
    two = result(tmp_path)
    assert_same(one_process, two)
    assert all(any(threshold != 0 for threshold in thresholds) for thresholds in two["controller"].values())


@pytest.mark.training
def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path, one_process):
    cut = run(tmp_path, 2, 2)  # cut off after step 2; the checkpoint of step 2 stays
    assert cut.returncode != 0 and (tmp_path / "checkpoint.pt").exists()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2
    resumed = run(tmp_path, 1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(one_process, result(tmp_path))
