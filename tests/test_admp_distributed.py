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


@pytest.mark.training
def test_two_processes_train_every_model_as_one_does(tmp_path):
    one, two = train(tmp_path / "one", 1), train(tmp_path / "two", 2)
    assert one["models"].keys() == two["models"].keys() == {"source_only", "teacher", "prune_then_adapt", "admp"}
    for method, state in one["models"].items():
        for name, value in state.items():
            if value.is_floating_point():
                assert torch.allclose(value, two["models"][method][name], rtol=1e-4, atol=1e-5), (method, name)
            else:
                assert torch.equal(value, two["models"][method][name]), (method, name)
    assert one["metrics"]["target_acc"] == two["metrics"]["target_acc"]
    assert one["metrics"]["kept_channel_ratio"] == two["metrics"]["kept_channel_ratio"] < 1
    assert not (tmp_path / "two" / "source.ckpt.tmp").exists()
