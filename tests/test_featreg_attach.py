"""featreg.attach_gates on nets the library did not write: gates placed in the traced graph, trained with
featreg.fit, exported with featreg.export, and compiled with the featreg pass like the built-in nets."""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_tool
from PIL import Image
from torch import nn
from torch.nn import functional as F

from edgesparse.backends import compile_model
from edgesparse.frontends import featreg
from edgesparse.frontends.featreg.experiments.data import Degradation, PatchSampler, skimage_photo
from edgesparse.frontends.featreg.experiments.run import load_model_factory
from edgesparse.frontends.onnx_frontend import set_input_shapes
from edgesparse.passes.featreg import LEVELS_METADATA_KEY
from edgesparse.passes.onnxruntime_ref import max_relative_error

LEVELS = (0.5, 0.9)


class BranchyNet(nn.Module):
    """A user's ReLU net: one feature read by two convs, a concatenation, a residual add, a ReLU module
    called twice, functional ReLUs (F.relu, torch.relu, Tensor.relu)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.act = nn.ReLU()
        self.left = nn.Conv2d(width, width, 3, padding=1)
        self.right = nn.Conv2d(width, width, 1)
        self.fuse = nn.Conv2d(2 * width, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        features = self.head(x)
        hidden = self.act(features)  # read by two convs: one gate
        left, right = F.relu(self.left(hidden)), self.act(self.right(hidden))
        fused = self.fuse(torch.cat([left, right], dim=1))  # never negative: a gate in front is exact
        return x + self.tail(torch.relu(features + fused).relu())  # residual add


class PReLUNet(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.head, self.act = nn.Conv2d(3, width, 3, padding=1), nn.PReLU(width)
        self.body, self.tail = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(F.leaky_relu(self.body(self.act(self.head(x))), 0.1))


class Untraceable(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x  # data-dependent: fx cannot trace it


class PartlyTraceable(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.head, self.odd = nn.Conv2d(3, width, 3, padding=1), Untraceable(width)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(nn.functional.relu(self.odd(self.head(x))))


def example():
    return torch.rand(1, 3, 16, 16)


def test_a_relu_net_is_gated_exactly_one_gate_per_feature():
    torch.manual_seed(0)
    net = BranchyNet()
    report = featreg.attach_gates(net, example())
    gated = {feature.gate: feature for feature in report.gated}
    assert sorted(conv for feature in report.gated for conv in feature.convs) == ["fuse", "left", "right", "tail"]
    assert [s.conv for s in report.skipped] == ["head"] and "network's input" in report.skipped[0].reason
    (shared,) = [feature for feature in gated.values() if feature.convs == ["left", "right"]]
    assert "ReLU" in shared.placement
    assert not report.dense_model_changes and report.max_change == 0.0
    assert report.forward_replaced  # functional ReLUs: the traced graph becomes the forward
    assert sum(isinstance(module, featreg.ThresholdGate) for module in net.modules()) == 3


def test_relu_modules_become_gates_under_their_own_names_and_keep_the_forward():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3))
    report = featreg.attach_gates(net, example())
    assert report.gates == ["1", "3"] and not report.forward_replaced and "forward" not in vars(net)
    assert sorted(net.state_dict()) == sorted(
        ["0.weight", "0.bias", "1.threshold", "2.weight", "2.bias", "3.threshold", "4.weight", "4.bias"]
    )


def test_a_prelu_net_gets_its_gates_after_the_activations_and_the_report_says_so():
    net = PReLUNet()
    report = featreg.attach_gates(net, example())
    placements = {feature.convs[0]: feature.placement for feature in report.gated}
    assert placements["body"].startswith("after PReLU act") and placements["tail"].startswith("after leaky_relu")
    assert report.dense_model_changes and report.max_change > 0
    assert "dense model changes" in str(report)


def test_convs_inside_an_untraceable_submodule_are_listed_with_the_reason():
    report = featreg.attach_gates(PartlyTraceable(), example())
    assert report.gates and [feature.convs for feature in report.gated] == [["tail"]]
    reasons = {skipped.conv: skipped.reason for skipped in report.skipped}
    assert "cannot trace" in reasons["odd.conv"] and "network's input" in reasons["head"]


def batches(photo_names, count, seed):
    sampler = PatchSampler([skimage_photo(name, 96) for name in photo_names], Degradation("denoise"), 16, 8, seed)
    return [sampler.sample() for _ in range(count)]


@pytest.mark.slow
def test_a_gated_user_net_trains_exports_and_compiles_to_gated_convs_at_each_level(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = BranchyNet()
    report = featreg.attach_gates(net, example())
    featreg.fit(net, batches(["astronaut", "coffee"], 3, 0), levels=LEVELS, steps=4, out_dir=tmp_path / "run",
                lr=2e-3, progress=False)  # fmt: skip
    calibration = batches(["chelsea"], 2, 1)
    onnx_model = featreg.export(net, example(), tmp_path / "model.onnx", calibration=calibration)
    assert sorted(float(level) for level in json.loads(onnx_model.metadata_props[LEVELS_METADATA_KEY])) == list(LEVELS)
    inputs = batches(["rocket"], 1, 2)[0][0][:1]
    shaped = set_input_shapes(onnx_model, {"input": list(inputs.shape)})
    gated_convs = sorted(conv for feature in report.gated for conv in feature.convs)
    for level in LEVELS:
        result = compile_model(
            shaped, "llvm", passes="default,featreg", pass_options={"featreg": {"sparsity": level, "min_sparsity": 0}}
        )
        assert [layer["op"] for layer in result.report["layers"]] == ["GatedConv"] * len(gated_convs)
        featreg.set_level(net, example(), calibration, level)
        with torch.no_grad():
            expected = net(inputs).numpy()
        assert max_relative_error(result.run({"input": inputs.numpy()})["output"], expected) < 1e-4, level


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_examples_are_gated_as_their_activations_say():
    vdsr = load_model_factory(f"{EXAMPLES / 'vdsr.py'}:VDSR")(width=8)
    report = featreg.attach_gates(vdsr, example())
    assert len(report.gated) == 19 and not report.dense_model_changes and not report.forward_replaced
    assert [skipped.conv for skipped in report.skipped] == ["input"]
    fsrcnn = load_model_factory(f"{EXAMPLES / 'fsrcnn.py'}:FSRCNN")(d=8, s=4, m=2)
    report = featreg.attach_gates(fsrcnn, example())
    assert len(report.gated) == 4 and all("after PReLU" in feature.placement for feature in report.gated)
    assert {skipped.conv: skipped.reason for skipped in report.skipped}["last_part"].startswith("ConvTranspose2d")


@pytest.fixture(scope="module")
def photo_dirs(tmp_path_factory):
    train, test = tmp_path_factory.mktemp("train"), tmp_path_factory.mktemp("test")
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(skimage_photo(name, 96)).save(train / f"{name}.png")
    Image.fromarray(skimage_photo("rocket", 64)).save(test / "rocket.png")
    return train, test


@pytest.mark.training
def test_the_cli_trains_a_users_net_from_a_file_on_a_photo_directory(photo_dirs, tmp_path):
    train, test = photo_dirs
    args = ["--task", "sr", "--model", f"{EXAMPLES / 'fsrcnn.py'}:FSRCNN", "--model-args", '{"d": 8, "s": 4, "m": 1}']
    args += ["--images", train, "--test-images", test, "--steps", "3", "--batch", "4", "--patch", "24"]
    run = run_tool("train_featreg", *args, "--levels", "0.5,0.9", "--skip-tvm", "-o", tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "after PReLU" in run.stdout and "last_part: ConvTranspose2d" in run.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert sorted(metrics["test"]) == ["0.5", "0.9"] and metrics["gates"][0].startswith("3 gates")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no/such/file.py:Net"], "no such file"),
        (["--model", "examples/vdsr.py:NoSuchNet"], "no class or function NoSuchNet"),
        (["--model-args", "{oops"], "not JSON"),
    ],
    ids=["missing-file", "missing-name", "bad-json"],
)
def test_cli_bad_model_is_a_one_line_error(photo_dirs, args, message, tmp_path):
    train, test = photo_dirs
    run = run_tool("train_featreg", "--task", "sr", "--images", train, "--test-images", test, *args, "-o", tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error:") and message in run.stderr and len(run.stderr.strip().splitlines()) == 1
