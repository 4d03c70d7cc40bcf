"""`pip install edgesparse` without the `train` extra compiles and runs models: the command-line tools of
the compile path run with the extra's packages made unimportable."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

TRAIN_EXTRA = ("sklearn", "skimage", "mlxtend", "matplotlib")

# Installed as sitecustomize: every import of a train-extra package fails as if it were not installed.
BLOCKER = f"""
import importlib.abc, sys

class TrainExtraMissing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAIN_EXTRA!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (the train extra is not installed)")
        return None

sys.meta_path.insert(0, TrainExtraMissing())
"""


def run_without_train_extra(tmp_path, tool: str, *args) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / f"{tool}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )


def test_the_blocker_blocks(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import skimage\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    result = subprocess.run(
        [sys.executable, str(probe)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)}
    )
    assert result.returncode != 0 and "the train extra is not installed" in result.stderr


@pytest.mark.slow
def test_compile_and_run_need_no_train_extra(tmp_path):
    model = tmp_path / "tiny.onnx"
    steps = [
        ("zoo", "tiny", "-o", model),
        ("compile", model, "--target", "llvm", "-o", tmp_path / "llvm"),
        ("run", tmp_path / "llvm", "--check"),
    ]
    for step in steps:
        result = run_without_train_extra(tmp_path, *step)
        assert result.returncode == 0, f"{step[0]}: {result.stderr}"
    assert "max relative difference" in result.stdout
