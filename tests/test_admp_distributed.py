"""Data-parallel ADMP: torchrun with two CPU processes (gloo) trains every model as one process does on the
same global batches (gradients averaged, BatchNorm statistics and class-balanced pseudo labels taken over
the global batch)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "admp_ddp_worker.py"


def train(out_dir: Path, processes: int) -> dict:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    completed = subprocess.run(
        [*launcher, str(WORKER), str(out_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return torch.load(out_dir / "result.pt", weights_only=False)


def assert_same_models(one: dict, other: dict) -> None:
    assert one["models"].keys() == other["models"].keys() == {"source_only", "teacher", "prune_then_adapt", "admp"}
    for method, state in one["models"].items():
        for name, value in state.items():
            if value.is_floating_point():
                assert torch.allclose(value, other["models"][method][name], rtol=1e-4, atol=1e-5), (method, name)
            else:
                assert torch.equal(value, other["models"][method][name]), (method, name)
    assert one["metrics"]["target_acc"] == other["metrics"]["target_acc"]
    assert one["metrics"]["kept_channel_ratio"] == other["metrics"]["kept_channel_ratio"] < 1


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return train(tmp_path_factory.mktemp("one"), 1)


@pytest.mark.training
def test_two_processes_train_every_model_as_one_does(tmp_path, one_process):
    assert_same_models(one_process, train(tmp_path, 2))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.training
def test_checkpoints_of_two_processes_resume_in_one(tmp_path, one_process):
    train(tmp_path, 2)
    for name in ("admp.ckpt", "prune_then_adapt.ckpt", "result.pt"):
        (tmp_path / name).unlink()  # the source model and the teacher stay: the run resumes after them
    written = {name: (tmp_path / name).stat().st_mtime_ns for name in ("source.ckpt", "teacher.ckpt")}
    assert_same_models(one_process, train(tmp_path, 1))
    assert written == {name: (tmp_path / name).stat().st_mtime_ns for name in written}  # read, not retrained
