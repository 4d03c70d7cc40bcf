"""tools/admp_table.py: seeds averaged from their own runs, the students stripped, and a second call resumes."""

import json
import statistics

import onnx_ir as ir
import pytest
from conftest import run_tool

from edgesparse.backends.compiler import optimize
from edgesparse.passes.macs import count_params

SETTINGS = [
    "--pairs", "mnist:sklearn-digits", "--ratios", "0.6", "--seeds", "0,1", "--width", "8", "--strip-round-to", "4",
    "--epochs", "1", "--admp-epochs", "1", "--finetune-epochs", "1", "--source-limit", "200", "--target-limit", "200",
]  # fmt: skip


@pytest.mark.training
def test_table_averages_the_seeds_strips_the_students_and_resumes(tmp_path):
    first = run_tool("admp_table", *SETTINGS, "-o", tmp_path, timeout=900)
    assert first.returncode == 0, first.stderr
    [entry] = json.loads((tmp_path / "table.json").read_text())
    assert entry["seeds"] == [0, 1] and entry["model"] == "residual-cnn"
    runs = [tmp_path / "residual-cnn" / f"s{seed}" / "mnist-sklearn-digits" / "r60" for seed in (0, 1)]
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
    assert [each["config"]["seed"] for each in metrics] == [0, 1]
    for method, accuracies in entry["target_acc"].items():
        assert accuracies == [each["target_acc"][method] for each in metrics]
    admp = [100 * each["target_acc"]["admp"] for each in metrics]
    row = next(line for line in first.stdout.splitlines() if "mnist -> sklearn-digits" in line)
    assert f"{statistics.fmean(admp):.1f} ± {statistics.stdev(admp):.1f}%" in row
    (params_masked, params_stripped), (macs_masked, macs_stripped) = entry["params"], entry["macs"]
    assert params_stripped < params_masked and macs_stripped < macs_masked
    assert all(ms > 0 for ms in entry["ort_ms"])
    # --strip-round-to 4 reached the pass: unrounded, the students would have fewer parameters left.
    unrounded = [count_params(optimize(ir.load(run / "student.onnx"), "default,strip-channels")[0]) for run in runs]
    assert entry["strip_round_to"] == 4 and statistics.fmean(unrounded) < params_stripped

    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    stamps = [path.stat().st_mtime_ns for path in checkpoints]
    again = run_tool("admp_table", *SETTINGS, "-o", tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr
    assert [path.stat().st_mtime_ns for path in checkpoints] == stamps  # every stage resumed, none retrained
    [resumed] = json.loads((tmp_path / "table.json").read_text())
    assert resumed["target_acc"] == entry["target_acc"]

    # Another ratio in the same directory: its row joins the table, the first one stays as it was.
    other = [arg if arg != "0.6" else "0.5" for arg in SETTINGS]
    assert run_tool("admp_table", *other, "-o", tmp_path, timeout=900).returncode == 0
    first_row, second_row = json.loads((tmp_path / "table.json").read_text())
    assert first_row == resumed and second_row["ratio"] == 0.5
    assert len((tmp_path / "table.md").read_text().splitlines()) == 4  # header, rule, two rows


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--seeds", "0,x"], "error: --seeds"), (["--strip-round-to", "0"], "error: strip-channels: round_to")],
)
def test_bad_setting_is_one_error_line_before_any_training(tmp_path, args, message):
    result = run_tool("admp_table", *args, "-o", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())
