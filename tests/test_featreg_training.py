"""FeatReg training side, CI size: a tiny net, a few steps, skimage.data photos (no apt data needed)."""

import json

import numpy as np
import pytest
import torch
from conftest import run_tool
from PIL import Image

from edgesparse.backends import compile_model
from edgesparse.frontends.featreg.controller import SparsityController
from edgesparse.frontends.featreg.experiments.data import Degradation, PatchSampler, package_files, skimage_photo
from edgesparse.frontends.featreg.experiments.metrics import psnr_y, ssim_y
from edgesparse.frontends.featreg.export import export_onnx, load_onnx_weights, save_onnx
from edgesparse.frontends.featreg.gate import gates_in_call_order
from edgesparse.frontends.featreg.multilevel import TrainConfig, train
from edgesparse.frontends.featreg.nets import build_net
from edgesparse.frontends.featreg.regularizer import FeatureRegularizer
from edgesparse.frontends.onnx_frontend import set_input_shapes
from edgesparse.passes.errors import EdgesparseError
from edgesparse.passes.featreg import LEVELS_METADATA_KEY
from edgesparse.passes.onnxruntime_ref import max_relative_error

LEVELS = [0.5, 0.9]
PATCH = 24
SR = Degradation("sr", scale=2)


@pytest.fixture(scope="module")
def photos():
    """(training photos, held-out photos)."""
    return [skimage_photo("astronaut", 96), skimage_photo("coffee", 96)], [
        skimage_photo("chelsea", 96),
        skimage_photo("rocket", 96),
    ]


def tiny_training(photos, tmp_path, levels, reg_weight, steps=30, checkpoint_every=None):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_net("sr", scale=2, width=8, blocks=1)
    controller = SparsityController(gates_in_call_order(model, torch.rand(1, 3, 12, 12)), levels)
    sampler = PatchSampler(photos[0], SR, PATCH, batch=8, seed=0)
    train(
        model,
        controller,
        sampler,
        TrainConfig(steps=steps, lr=2e-3, reg_weight=reg_weight, checkpoint_every=checkpoint_every or steps),
        tmp_path,
        progress=False,
    )
    return model, controller


def held_out(photos, seed):
    return PatchSampler(photos[1], SR, PATCH, batch=32, seed=seed).sample()[0]


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory):
    return tiny_training(photos, tmp_path_factory.mktemp("train"), LEVELS, reg_weight=0.05)


def penalty_on(model, controller, inputs):
    regularizer = FeatureRegularizer(controller.gates)
    controller.apply(LEVELS[0])
    with torch.no_grad():
        model(inputs)
    value = float(regularizer.penalty())
    regularizer.remove()
    return value


def test_the_regularizer_lowers_the_sparsity_penalty(photos, trained, tmp_path):
    plain = tiny_training(photos, tmp_path, LEVELS, reg_weight=0.0)
    inputs = held_out(photos, seed=1)
    assert penalty_on(*trained, inputs) < penalty_on(*plain, inputs) - 0.01


@pytest.mark.parametrize("level", LEVELS)
def test_the_controller_hits_the_target_on_held_out_patches(photos, trained, level):
    model, controller = trained
    controller.calibrate(model, held_out(photos, seed=1), level)
    measured = controller.measure(model, held_out(photos, seed=2), level)
    assert len(measured) == 5
    assert np.mean(list(measured.values())) == pytest.approx(level, abs=0.03)


def test_a_level_between_the_trained_ones_is_calibrated_and_exported(photos, trained):
    model, controller = trained
    between = controller.with_levels([*LEVELS, 0.7])
    for level in between.levels:
        between.calibrate(model, held_out(photos, seed=1), level)
    measured = between.measure(model, held_out(photos, seed=2), 0.7)
    assert np.mean(list(measured.values())) == pytest.approx(0.7, abs=0.03)
    exported = export_onnx(model, between, {"task": "sr", "scale": 2})
    assert sorted(json.loads(exported.metadata_props[LEVELS_METADATA_KEY])) == ["0.5", "0.7", "0.9"]


def test_training_resumes_from_its_checkpoint(photos, tmp_path, monkeypatch):
    once, _ = tiny_training(photos, tmp_path / "once", LEVELS, reg_weight=0.05, steps=8, checkpoint_every=2)
    sample = PatchSampler.sample
    calls = []

    def interrupted(sampler):
        calls.append(1)
        if len(calls) > 5:  # in step 6, after the checkpoint at step 4
            raise KeyboardInterrupt
        return sample(sampler)

    monkeypatch.setattr(PatchSampler, "sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_training(photos, tmp_path / "twice", LEVELS, reg_weight=0.05, steps=8, checkpoint_every=2)
    monkeypatch.setattr(PatchSampler, "sample", sample)
    resumed, _ = tiny_training(photos, tmp_path / "twice", LEVELS, reg_weight=0.05, steps=8, checkpoint_every=2)
    for name, value in once.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[name]), name


@pytest.fixture(scope="module")
def exported(photos, trained, tmp_path_factory):
    model, controller = trained
    for level in LEVELS:
        controller.calibrate(model, held_out(photos, seed=1), level)
    onnx_model = export_onnx(model, controller, {"task": "sr", "scale": 2})
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    save_onnx(onnx_model, path)
    return onnx_model, path


def test_export_featreg_llvm_build_matches_pytorch(photos, trained, exported):
    model, controller = trained
    onnx_model, _ = exported
    assert sorted(float(level) for level in json.loads(onnx_model.metadata_props[LEVELS_METADATA_KEY])) == LEVELS
    inputs = held_out(photos, seed=3)[:1]
    shaped = set_input_shapes(onnx_model.clone(), {"input": list(inputs.shape)})
    result = compile_model(
        shaped, "llvm", passes="default,featreg", pass_options={"featreg": {"sparsity": 0.9, "min_sparsity": 0.0}}
    )
    assert [layer["op"] for layer in result.report["layers"]] == ["GatedConv"] * 5
    controller.apply(0.9)
    with torch.no_grad():
        expected = model(inputs).numpy()
    assert max_relative_error(result.run({"input": inputs.numpy()})["output"], expected) < 1e-4


def test_an_exported_model_loads_back_into_its_net_for_more_training(trained, exported):
    model, _ = trained
    _, path = exported
    reloaded = build_net("sr", scale=2, width=8, blocks=1)
    load_onnx_weights(reloaded, path)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, reloaded.get_parameter(name)), name
    with pytest.raises(EdgesparseError, match="shape"):
        load_onnx_weights(build_net("sr", scale=2, width=16, blocks=1), path)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    for name in ("rocket", "chelsea"):
        Image.fromarray(skimage_photo(name, 40)).save(directory / f"{name}.png")
    return directory


def test_eval_cli_prints_the_figures(exported, image_dir):
    _, path = exported
    run = run_tool("eval_featreg", path, "--images", image_dir, "--scale", "2", "--level", "0.9")
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    assert {"model", "bicubic", "sparsity", "macs_dense", "macs_effective"} <= set(figures)
    assert {"psnr", "ssim"} == set(figures["model"]) == set(figures["bicubic"])
    assert len(figures["sparsity"]["layers"]) == 5
    assert figures["sparsity"]["mean"] == pytest.approx(0.9, abs=0.1)
    assert figures["macs_effective"] < 0.3 * figures["macs_dense"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "no/such/folder", "--level", "0.9"], "no such directory"),
        (["--level", "0.7"], "not among the model's levels"),
    ],
    ids=["missing-folder", "unknown-level"],
)
def test_eval_cli_bad_input_is_a_one_line_error(exported, image_dir, args, message):
    _, path = exported
    run = run_tool("eval_featreg", path, *(["--images", image_dir] if "--images" not in args else []), *args)
    assert run.returncode == 2
    assert run.stderr.startswith("error:") and message in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_missing_apt_data_says_to_run_make_data():
    with pytest.raises(EdgesparseError, match="make data"):
        package_files("edgesparse-no-such-package")


def test_metrics_crop_the_border_and_rank_a_closer_image_higher():
    reference = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    close, far = reference.copy(), reference.copy()
    close[8:24, 8:24] ^= 4
    far[8:24, 8:24] ^= 32
    assert psnr_y(close, reference, 2) > psnr_y(far, reference, 2)
    assert ssim_y(close, reference, 2) > ssim_y(far, reference, 2)
    edge = reference.copy()
    edge[:2] = 0  # only the cropped border differs
    with np.errstate(divide="ignore"):
        assert psnr_y(edge, reference, 2) == np.inf


@pytest.mark.parametrize("freeze", [True, False])
def test_sparsity_fine_tuning_keeps_batchnorm_statistics_when_frozen(photos, tmp_path, freeze):
    torch.manual_seed(0)
    model = build_net("denoise", width=8, depth=4)
    controller = SparsityController(gates_in_call_order(model, torch.rand(1, 3, 12, 12)), LEVELS)
    batchnorms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    before = [
        (norm.running_mean.clone(), norm.running_var.clone(), norm.weight.detach().clone()) for norm in batchnorms
    ]
    sampler = PatchSampler(photos[0], Degradation("denoise"), PATCH, batch=4, seed=0)
    train(model, controller, sampler, TrainConfig(steps=3, lr=1e-2, freeze_batchnorm=freeze), tmp_path, progress=False)
    for norm, (mean, var, weight) in zip(batchnorms, before):
        assert torch.equal(norm.running_mean, mean) == freeze and torch.equal(norm.running_var, var) == freeze
        assert not torch.equal(norm.weight, weight)  # the affine parameters train either way


def test_denoiser_with_smoothing_skip_exports_and_builds_like_pytorch():
    torch.manual_seed(0)
    model = build_net("denoise", width=8, depth=4).eval()
    assert torch.allclose(model.smoothing.weight.sum(dim=(1, 2, 3)), torch.ones(3))  # a normalized Gaussian at first
    controller = SparsityController(gates_in_call_order(model, torch.rand(1, 3, 12, 12)), [0.8])
    inputs = torch.rand(1, 3, 16, 16)
    controller.calibrate(model, torch.rand(4, 3, 16, 16), 0.8)
    shaped = set_input_shapes(
        export_onnx(model, controller, {"task": "denoise", "sigma": 25.0}), {"input": list(inputs.shape)}
    )
    result = compile_model(
        shaped, "llvm", passes="default,featreg", pass_options={"featreg": {"sparsity": 0.8, "min_sparsity": 0.0}}
    )
    # the gated hidden convs and the last one become GatedConv; the smoothing and the first conv read the image
    assert [layer["op"] for layer in result.report["layers"]] == ["GatedConv"] * 3
    with torch.no_grad():
        expected = model(inputs).numpy()
    assert max_relative_error(result.run({"input": inputs.numpy()})["output"], expected) < 1e-4
