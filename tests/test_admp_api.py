"""ADMP on a user's own net: attach_masks finds the groups strip-channels couples, fit trains, export writes
masks that strip-channels removes exactly; torchvision's ResNet-18 and MobileNetV2 through the same path."""

import numpy as np
import onnx_ir as ir
import pytest
import torch
from torch import nn

from edgesparse.backends import compile_model
from edgesparse.backends.rpc import RPCAddress
from edgesparse.frontends import admp
from edgesparse.frontends.admp.admm import keep_count
from edgesparse.frontends.admp.backbones import mobilenet_v2, resnet18, with_classes
from edgesparse.frontends.admp.experiments.nets import mobilenet_v2_imagenet_weights
from edgesparse.frontends.admp.groups import mask_groups
from edgesparse.frontends.admp.losses import class_balance, pseudo_label
from edgesparse.frontends.admp.masks import set_mode
from edgesparse.frontends.errors import FrontendError
from edgesparse.passes import run_pipeline
from edgesparse.passes.channel_deps import analyze_channels
from edgesparse.passes.channel_masks import mask_operands
from edgesparse.passes.channel_ops import channel_slots
from edgesparse.passes.onnxruntime_ref import max_relative_error, run_onnxruntime


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class TwoStageNet(nn.Module):
    """Two residual stages, a concatenation of two branches, a depthwise conv; a conv head (its channels
    reach the graph output, so it is not masked)."""

    def __init__(self):
        super().__init__()
        self.stem, self.res1a, self.res1b = conv_bn(3, 8), conv_bn(8, 8), conv_bn(8, 8)
        self.down, self.res2a, self.res2b = conv_bn(8, 16, stride=2), conv_bn(16, 16), conv_bn(16, 16)
        self.branch_a, self.branch_b = conv_bn(16, 8, kernel=1), conv_bn(16, 8)
        self.expand, self.depthwise, self.project = conv_bn(16, 24, 1), conv_bn(24, 24, groups=24), conv_bn(24, 12, 1)
        self.head = nn.Conv2d(12, 10, 1)

    def forward(self, x):
        relu = torch.relu
        x = relu(self.stem(x))
        x = relu(x + self.res1b(relu(self.res1a(x))))
        x = relu(self.down(x))
        x = relu(x + self.res2b(relu(self.res2a(x))))
        x = torch.cat([relu(self.branch_a(x)), relu(self.branch_b(x))], 1)
        x = relu(self.project(relu(self.depthwise(relu(self.expand(x))))))
        return self.head(x).mean((2, 3))


EXPECTED_GROUPS = {
    frozenset({"stem.0", "res1b.0"}),
    frozenset({"res1a.0"}),
    frozenset({"down.0", "res2b.0"}),
    frozenset({"res2a.0"}),
    frozenset({"branch_a.0"}),
    frozenset({"branch_b.0"}),
    frozenset({"expand.0", "depthwise.0"}),
    frozenset({"project.0"}),
}
SIZE = 12


def digits_like(count: int, seed: int, channels: int = 3, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable random images: class k brightens row band k."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    images = torch.rand(count, channels, size, size, generator=generator) * 0.3
    for index, label in enumerate(labels):
        images[index, :, int(label) * size // 10] += 1
    return images, labels


def onnx_groups(model: ir.Model) -> dict[str, list[int]]:
    """Conv node's module (its export scope) -> the strip-channels group of each output channel."""
    model = run_pipeline(model, "default")
    deps = analyze_channels(model)
    number = {slot: index for index, group in enumerate(deps.groups()) for slot in group}
    pinned = {number[slot] for slot in deps.pins if slot in number}
    return {
        node.name.split("/")[1] + ".0": [
            None if number[s] in pinned else number[s] for s in channel_slots(node.outputs[0])
        ]
        for node in model.graph
        if node.op_type == "Conv"
    }


def test_attach_masks_finds_the_groups_strip_channels_couples():
    torch.manual_seed(0)
    net = TwoStageNet()
    groups = admp.attach_masks(net, torch.zeros(1, 3, SIZE, SIZE), round_to=4)
    assert {frozenset(group.convs) for group in groups} == EXPECTED_GROUPS
    # The same grouping, read off the exported graph by strip-channels' own analysis.
    channels = onnx_groups(admp.export(net, torch.zeros(1, 3, SIZE, SIZE), "/dev/null"))
    for group in groups:
        first, *others = group.convs
        assert all(channels[conv] == channels[first] for conv in others)
        assert None not in channels[first] and len(set(channels[first])) == group.channels
    assert all(component is None for component in channels["head.0"])  # reaches the graph output
    assert "head" not in {conv for group in groups for conv in group.convs}
    all_components = [set(channels[group.convs[0]]) for group in groups]
    assert sum(map(len, all_components)) == len(set().union(*all_components))  # groups never overlap


@pytest.mark.training
def test_fit_export_strip_removes_every_masked_channel_and_keeps_the_outputs(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = TwoStageNet()
    example = torch.zeros(1, 3, SIZE, SIZE)
    groups = admp.attach_masks(net, example, round_to=4)
    source, target = digits_like(96, 0), digits_like(64, 1)
    settings = dict(epochs=1, admp_epochs=1, finetune_epochs=1, batch_size=16, admm_every=2)
    result = admp.fit(net, source=source, target=target[0], test=target, ratio=0.6, out_dir=tmp_path, **settings)
    assert set(result.metrics["target_acc"]) == {"source_only", "teacher", "prune_then_adapt", "admp"}
    masks = mask_groups(net)
    for group in groups:
        kept = int(masks[group.name].hard.sum())
        assert kept == keep_count(group.channels, 0.6, 4) and kept % 4 == 0
    # Resumes: every stage is done, the same student comes back.
    again = TwoStageNet()
    admp.attach_masks(again, example, round_to=4)
    admp.fit(again, source=source, target=target[0], test=target, ratio=0.6, out_dir=tmp_path, **settings)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))

    masked = admp.export(net, example, tmp_path / "student.onnx", input_names=["input"], output_names=["logits"])
    stripped = run_pipeline(ir.load(tmp_path / "student.onnx"), "default,strip-channels")
    assert not any(mask_operands(node) for node in stripped.graph)  # every mask spent
    widths = {
        node.name.split("/")[1] + ".0": node.outputs[0].shape[1] for node in stripped.graph if node.op_type == "Conv"
    }
    for group in groups:
        for conv in group.convs:
            assert widths[conv] == int(masks[group.name].hard.sum()), conv
    images = digits_like(4, 2)[0].numpy()[:1]
    expected = run_onnxruntime(masked, {"input": images})["logits"]
    assert max_relative_error(run_onnxruntime(stripped, {"input": images})["logits"], expected) < 1e-5
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(torch.from_numpy(images)).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_balanced_pseudo_labels_weigh_each_class_alike_and_class_balance_sees_a_collapse():
    logits = torch.zeros(4, 3)
    labeller = torch.tensor([[9.0, 0, 0], [9.0, 0, 0], [9.0, 0, 0], [0, 9.0, 0]])
    plain, balanced = pseudo_label(logits, labeller, 0.5), pseudo_label(logits, labeller, 0.5, balanced=True)
    assert plain == pytest.approx(balanced)  # same total weight, spread evenly over the classes present
    assert class_balance(labeller) < 0.6 and class_balance(torch.eye(3)) == pytest.approx(1.0)


def test_torchvision_weights_load_strictly():
    net = mobilenet_v2()
    net.load_state_dict(torch.load(mobilenet_v2_imagenet_weights()), strict=True)
    assert sum(parameter.numel() for parameter in net.parameters()) == 3_504_872
    assert sum(parameter.numel() for parameter in resnet18().parameters()) == 11_689_512


@pytest.mark.training
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_backbone_fit_export_strip_runs_on_the_arm_device(name, tmp_path, emulated_device):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    size = 32
    net = resnet18() if name == "resnet18" else mobilenet_v2()
    if name == "mobilenet_v2":
        net.load_state_dict(torch.load(mobilenet_v2_imagenet_weights()), strict=True)
    with_classes(net, 10)
    example = torch.zeros(1, 3, size, size)
    groups = admp.attach_masks(net, example, round_to=8)
    assert len(groups) == (12 if name == "resnet18" else 25)
    source, target = digits_like(32, 0, size=size), digits_like(32, 1, size=size)
    settings = dict(epochs=1, admp_epochs=1, finetune_epochs=1, batch_size=16, admm_every=1)
    admp.fit(net, source=source, target=target[0], ratio=0.5, out_dir=tmp_path / "run", **settings)
    model = admp.export(net, example, tmp_path / "student.onnx", input_names=["input"], output_names=["logits"])
    result = compile_model(ir.load(tmp_path / "student.onnx"), "arm_cpu", passes="default,strip-channels")
    assert result.report["params_after"] < 0.6 * result.report["params_before"]
    assert not any(mask_operands(node) for node in result.optimized.graph)
    images = digits_like(2, 3, size=size)[0].numpy()[:1]
    actual = result.save(tmp_path / "arm").run({"input": images}, RPCAddress.parse(emulated_device.rpc_address))
    assert max_relative_error(actual["logits"], run_onnxruntime(model, {"input": images})["logits"]) < 1e-4
    set_mode(net, "hard")


def test_round_to_keeps_a_multiple_of_n_channels():
    assert [keep_count(64, 0.6, n) for n in (1, 8, 16)] == [26, 24, 32]
    assert keep_count(8, 0.9, 4) == 4 and keep_count(3, 0.5, 8) == 3  # never none; all when fewer than N


def test_fit_refuses_a_round_to_other_than_the_masks_attached_with(tmp_path):
    net = TwoStageNet()
    admp.attach_masks(net, torch.zeros(1, 3, SIZE, SIZE), round_to=2)
    images = torch.rand(8, 3, SIZE, SIZE)
    with pytest.raises(FrontendError, match="attached with round_to 2"):
        admp.fit(net, source=(images, torch.zeros(8, dtype=torch.long)), target=images, out_dir=tmp_path, round_to=4)
