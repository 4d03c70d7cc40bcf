"""strip-channels: stripped models compute what the masked models compute, with fewer channels."""

import functools
import json

import numpy as np
import onnx_ir as ir
import pytest
import torch
from conftest import MODEL_NAMES, load_model, run_tool, save_model
from onnx import helper
from test_channel_deps import build_model, conv, random_weight
from torch import nn

from edgesparse.backends import compile_model
from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.passes import EdgesparseError, run_pipeline
from edgesparse.passes.channel_masks import insert_masks, mask_operands, random_masks
from edgesparse.passes.channel_ops import channel_count
from edgesparse.passes.macs import count_params, total_macs
from edgesparse.passes.onnxruntime_ref import max_relative_error, random_inputs, run_onnxruntime
from edgesparse.passes.report import StrippedChannels, read
from edgesparse.passes.strip_channels import StripChannelsPass
from edgesparse.passes.verify import checker_problem

RTOL = 1e-5
# TVM against ONNX Runtime: different kernels, same tolerance as the rest of the project's checks.
TVM_RTOL = 1e-4


def strip(model: ir.Model, **options) -> ir.Model:
    return run_pipeline(model.clone(), ["strip-channels"], pass_options={"strip-channels": options})


def assert_same_outputs(reference: ir.Model, stripped: ir.Model) -> None:
    assert checker_problem(ir.serde.serialize_model(stripped)) is None
    for seed in (0, 1):
        inputs = random_inputs(reference, seed)
        expected, actual = run_onnxruntime(reference, inputs), run_onnxruntime(stripped, inputs)
        for name, value in expected.items():
            assert max_relative_error(actual[name], value) <= RTOL, name


def strip_report(model: ir.Model) -> StrippedChannels:
    return read(model, StrippedChannels)


def widths(model: ir.Model) -> dict[str, list[int]]:
    """Layer -> [input channels, output channels] after the pass, from its report."""
    return {layer["node"]: [layer["in_channels"][1], layer["out_channels"][1]] for layer in strip_report(model).layers}


@functools.cache
def _cleaned(name: str) -> ir.Model:
    # As compile_model runs it: BatchNormalization folded, so that masks follow the folded convs.
    return run_pipeline(load_model(name))


def cleaned_model(name: str) -> ir.Model:
    return _cleaned(name).clone()


def masked_model(name: str, masks: dict[str, list[int]]) -> ir.Model:
    """A test net with the masks inserted as Mul-by-constant after their layers."""
    model = cleaned_model(name)
    insert_masks(model, masks)
    return model


# ----------------------------------------------------------------------------------- exact counts
def masked_conv_pair(mask: np.ndarray):
    """conv1 (3 -> len(mask) channels, 3x3, padded), Mul by ``mask``, Relu, conv2 (-> 4), on 1x3x8x8."""
    width = len(mask)
    return build_model(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
            helper.make_node("Mul", ["a", "mask"], ["m"]),
            helper.make_node("Relu", ["m"], ["r"]),
            helper.make_node("Conv", ["r", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
        ],
        {"x": [1, 3, 8, 8]},
        ["y"],
        {
            "w1": random_weight(width, 3, 3, 3),
            "b1": random_weight(width),
            "mask": mask.reshape(1, width, 1, 1),
            "w2": random_weight(4, width, 3, 3),
            "b2": random_weight(4),
        },
    )


def test_hand_computed_params_and_macs():
    """3 -> 8 -> 4 channels, 3x3 convs with padding, 5 of the 8 middle channels kept by a mask."""
    model = masked_conv_pair(np.array([1, 0, 1, 1, 0, 1, 0, 1], np.float32))
    assert count_params(model) == 8 * 3 * 9 + 8 + 8 + 4 * 8 * 9 + 4
    assert total_macs(model) == 8 * 64 * 3 * 9 + 4 * 64 * 8 * 9
    stripped = strip(model)
    assert_same_outputs(model, stripped)
    assert count_params(stripped) == 5 * 3 * 9 + 5 + 4 * 5 * 9 + 4  # the spent mask is gone too
    assert total_macs(stripped) == 5 * 64 * 3 * 9 + 4 * 64 * 5 * 9
    assert [node.op_type for node in stripped.graph] == ["Conv", "Relu", "Conv"]
    assert widths(stripped) == {"conv1": [3, 5], "conv2": [5, 4]}
    assert strip_report(stripped).layers[0]["out_channels"] == [8, 5]
    assert sorted(stripped.graph.initializers) == ["b1", "b2", "w1", "w2"]


# ----------------------------------------------------------------------------------- the test nets
ZOO_MASKS = [(0.3, 0, False), (0.7, 1, False), (0.5, 2, True), (0.7, 3, True)]


@pytest.mark.parametrize(
    ("ratio", "seed", "coupled"),
    ZOO_MASKS,
    ids=[f"{r:.0%}-seed{s}-{'coupled' if c else 'per-layer'}" for r, s, c in ZOO_MASKS],
)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_test_nets_stripped_equal_masked(name, ratio, seed, coupled):
    masks = random_masks(cleaned_model(name), ratio, seed, coupled=coupled)
    masked = masked_model(name, masks)
    stripped = strip(masked)
    assert_same_outputs(masked, stripped)
    assert count_params(stripped) < count_params(masked) and total_macs(stripped) < total_macs(masked)
    assert not any(mask_operands(node) and mask_operands(node)[1].const_value.numpy().all() for node in stripped.graph)
    if coupled:
        # Every layer pruned at the same channels as the layers coupled with it: all of them go.
        assert {layer: widths(stripped)[layer][1] for layer in masks} == {
            layer: len(kept) for layer, kept in masks.items()
        }
        assert strip_report(stripped).kept == []
    # A fixed point: what is left has nothing more to strip.
    again = strip(stripped)
    assert count_params(again) == count_params(stripped) and total_macs(again) == total_macs(stripped)


def test_unet_per_layer_masks_remove_every_masked_channel():
    """No residuals: every channel a mask zeroes is 0 after the ReLU, and every layer can do without it."""
    masks = random_masks(cleaned_model("unet"), 0.5, seed=4)
    stripped = strip(masked_model("unet", masks))
    assert {layer: widths(stripped)[layer][1] for layer in masks} == {layer: len(kept) for layer, kept in masks.items()}


def test_mobilenet_hidden_channels_go_where_expansion_or_depthwise_mask_is_zero():
    """expansion -> ReLU6 -> depthwise -> ReLU6 -> projection: a hidden channel is 0 into the projection
    if either conv's mask zeroes it (a depthwise conv of zeros is its bias, masked again or folded)."""
    masks = random_masks(cleaned_model("mobilenetv2"), 0.5, seed=5)
    stripped = strip(masked_model("mobilenetv2", masks))
    for block in (1, 2, 3):
        expansion, depthwise = (
            f"/features/features.{block}/block/block.{index}/block.{index}.0/Conv" for index in (0, 1)
        )
        expected = len(set(masks[expansion]) & set(masks[depthwise]))
        assert widths(stripped)[expansion][1] == widths(stripped)[depthwise][1] == expected, block


def test_depth_to_space_blocks_go_only_whole():
    """EDSR's upsampler: conv to 4 * 32 channels -> PixelShuffle(2) (DepthToSpace CRD) -> 32 channels."""
    upsample = "/upsample/upsample.0/Conv"
    kept = [channel for channel in range(128) if channel not in (4, 5, 6, 7, 9)]  # block 1 whole, one of block 2
    masked = masked_model("edsr", {upsample: kept})
    stripped = strip(masked)
    assert_same_outputs(masked, stripped)
    assert widths(stripped)[upsample][1] == 124
    assert widths(stripped)["/tail/Conv"][0] == 31
    [kept_entry] = strip_report(stripped).kept
    assert kept_entry["reason"] == "read by Conv '/tail/Conv' and not a known constant"
    assert kept_entry["channels"]["/upsample/upsample.1/DepthToSpace_output_0"] == [2]


# ----------------------------------------------------------------------------------- constants, not zeros
class MaskedConv(nn.Module):
    """conv(3 -> 8) with BatchNormalization and a mask (either order) -> ReLU -> heads summed."""

    def __init__(self, mask_then_bn: bool, head_kernels: tuple[int, ...], zero_filters: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.mask_then_bn = mask_then_bn
        # Channels 0-3 pruned: by the mask, or by zero filters (the mask is then all ones).
        self.register_buffer("mask", torch.tensor([float(zero_filters)] * 4 + [1.0] * 4).view(1, 8, 1, 1))
        with torch.no_grad():
            # BN(0) = its shift: +0.5 on even channels (a positive constant after ReLU), -0.5 on odd ones (0).
            self.bn.bias.copy_(torch.tensor([0.5, -0.5] * 4))
            self.bn.running_var.uniform_(0.5, 2.0)
            if zero_filters:
                self.conv.weight[:4] = 0
                self.conv.bias[:4] = 0
        self.heads = nn.ModuleList(nn.Conv2d(8, 4, kernel, padding=kernel // 2) for kernel in head_kernels)

    def forward(self, x):
        masked = self.bn(self.conv(x) * self.mask) if self.mask_then_bn else self.bn(self.conv(x)) * self.mask
        features = torch.relu(masked)
        return sum(head(features) for head in self.heads)


def exported(module: nn.Module) -> ir.Model:
    return from_torch(module, torch.randn(1, 3, 8, 8), input_names=["input"], output_names=["output"])


@pytest.mark.parametrize(
    ("mask_then_bn", "head_kernels", "zero_filters", "conv_width"),
    [
        # BN before the mask (folded into the conv by the exporter): masked channels are 0.
        (False, (1, 3), False, 4),
        # mask before BN: masked channels are BN's shift, 0.5 or 0 after the ReLU. A 1x1 head folds the
        # 0.5s into its bias; a padded 3x3 head cannot (at the borders it reads zero padding).
        (True, (1,), False, 4),
        (True, (1, 3), False, 6),
        # all-zero filters and biases instead of a mask: the same constants, the same decisions.
        (False, (1,), True, 4),
        (False, (3,), True, 6),
    ],
    ids=["bn-then-mask", "mask-then-bn-1x1", "mask-then-bn-3x3", "zero-filters-1x1", "zero-filters-3x3"],
)
def test_exported_torch_models_keep_their_outputs(mask_then_bn, head_kernels, zero_filters, conv_width):
    model = exported(MaskedConv(mask_then_bn, head_kernels, zero_filters))
    assert ("BatchNormalization" in [node.op_type for node in model.graph]) == (mask_then_bn and not zero_filters)
    stripped = strip(model)
    assert_same_outputs(model, stripped)
    [layer] = [node for node in stripped.graph if node.name == "/conv/Conv"]
    assert channel_count(layer.outputs[0]) == conv_width
    if conv_width == 6:
        [kept] = strip_report(stripped).kept
        assert "through zero padding: no bias at the borders" in kept["reason"]


def test_constants_fold_into_an_unpadded_conv_and_a_gemm_without_bias():
    """a's filter 1 is all zero: channel 1 is ReLU(0.7) everywhere, which a valid 3x3 conv folds into its
    bias; that conv's filter 2 is all zero too: its channel 2 is its bias, folded through the pooling
    into a Gemm (alpha 0.5, transB) that has no bias yet."""
    conv_weight, valid_weight = random_weight(4, 3, 1, 1), random_weight(4, 4, 3, 3)
    conv_weight[1] = valid_weight[2] = 0
    model = build_model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["a"], name="conv"),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("Conv", ["r", "wv", "bv"], ["v"], name="valid"),
            helper.make_node("GlobalAveragePool", ["v"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"]),
            helper.make_node("Gemm", ["features", "g"], ["y"], name="gemm", alpha=0.5, transB=1),
        ],
        {"x": [1, 3, 6, 6]},
        ["y"],
        {
            "w": conv_weight,
            "b": np.array([0.1, 0.7, -0.2, 0.3], np.float32),
            "wv": valid_weight,
            "bv": random_weight(4),
            "g": random_weight(5, 4),
        },
    )
    stripped = strip(model)
    assert_same_outputs(model, stripped)
    assert widths(stripped) == {"conv": [3, 3], "valid": [3, 3], "gemm": [3, 5]}
    [gemm] = [node for node in stripped.graph if node.op_type == "Gemm"]
    assert len(gemm.inputs) == 3  # the folded constant is its new bias


# ----------------------------------------------------------------------------------- offsets, refusals
def test_split_concat_slice_offsets_are_rewritten():
    """a (6) -> Split [2, 4] -> Concat(second, first) -> Slice [1, 5) -> conv: masked a0 and a3; a1 and
    a2 are sliced off (dead); a0 stays anyway, or the first Split part would have no channels left."""
    mask = np.array([0, 1, 1, 0, 1, 1], np.float32).reshape(1, 6, 1, 1)
    model = build_model(
        [
            conv("x", "w", "a"),
            helper.make_node("Mul", ["a", "mask"], ["m"]),
            helper.make_node("Split", ["m", "sizes"], ["s0", "s1"], axis=1),
            helper.make_node("Concat", ["s1", "s0"], ["c"], axis=1),
            helper.make_node("Slice", ["c", "starts", "ends", "axes"], ["t"], name="slice"),
            conv("t", "w2", "y"),
        ],
        {"x": [1, 3, 4, 4]},
        ["y"],
        {
            "w": random_weight(6, 3, 1, 1),
            "mask": mask,
            "sizes": np.array([2, 4], np.int64),
            "starts": np.array([1], np.int64),
            "ends": np.array([5], np.int64),
            "axes": np.array([1], np.int64),
            "w2": random_weight(2, 4, 3, 3),
        },
    )
    stripped = strip(model)
    assert_same_outputs(model, stripped)
    values = {output.name: output for node in stripped.graph for output in node.outputs}
    assert {name: channel_count(values[name]) for name in ("a", "s0", "s1", "c", "t")} == {
        "a": 3,
        "s0": 1,
        "s1": 2,
        "c": 3,
        "t": 3,
    }
    split, slice_ = (node for node in stripped.graph if node.op_type in ("Split", "Slice"))
    assert split.inputs[1].const_value.numpy().tolist() == [1, 2]
    assert (slice_.inputs[1].const_value.numpy().tolist(), slice_.inputs[2].const_value.numpy().tolist()) == ([0], [3])
    assert strip_report(stripped).kept[0]["reason"] == "removing them would leave 's0' without channels"


def shared_weight_model() -> ir.Model:
    """Two convs reading one weight, masked alike and added: without the sharing, channels 1 and 3 would go."""
    mask = np.array([1, 0, 1, 0], np.float32).reshape(1, 4, 1, 1)
    return build_model(
        [
            conv("x", "w", "a"),
            conv("x", "w", "b"),
            helper.make_node("Mul", ["a", "mask"], ["m"]),
            helper.make_node("Mul", ["b", "mask_b"], ["mb"]),
            helper.make_node("Add", ["m", "mb"], ["s"]),
            conv("s", "w2", "y"),
        ],
        {"x": [1, 3, 4, 4]},
        ["y"],
        {"w": random_weight(4, 3, 1, 1), "mask": mask, "mask_b": mask.copy(), "w2": random_weight(2, 4, 1, 1)},
    )


def mixing_reshape_model() -> ir.Model:
    return build_model(
        [
            conv("x", "w", "a"),
            helper.make_node("Mul", ["a", "mask"], ["m"]),
            helper.make_node("Reshape", ["m", "target"], ["r"], name="r"),
            helper.make_node("Relu", ["r"], ["y"]),
        ],
        {"x": [1, 3, 4, 4]},
        ["y"],
        {
            "w": random_weight(4, 3, 1, 1),
            "mask": np.array([1, 0, 1, 0], np.float32).reshape(1, 4, 1, 1),
            "target": np.array([1, 2, 32], np.int64),
        },
    )


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (shared_weight_model, "weight 'w' is shared by Conv 'a', Conv 'b'"),
        (mixing_reshape_model, "Reshape 'r': it reshapes [1, 4, 4, 4] to [1, 2, 32], mixing channels with other axes"),
    ],
    ids=["shared-weight", "reshape-mixing-channels"],
)
def test_what_cannot_be_proven_safe_is_left_unchanged_with_its_reason(model, reason):
    model = model()
    before = ir.serde.serialize_model(model).graph
    result = StripChannelsPass()(model)
    assert not result.modified
    assert ir.serde.serialize_model(result.model).graph == before
    assert [entry["reason"] for entry in strip_report(result.model).kept] == [reason]


# ----------------------------------------------------------------------------------- mask files
def write_masks(path, masks: dict[str, list[int]]):
    if path.suffix == ".npz":
        np.savez(path, **{name: np.array(kept, dtype=np.int64) for name, kept in masks.items()})
    else:
        path.write_text(json.dumps(masks))
    return path


def test_debug_mode_checks_a_mask_file_against_the_masked_model(tmp_path):
    """Masks beside the model change its outputs by design: --debug compares with the masked model."""
    masks = random_masks(cleaned_model("resnet"), 0.5, seed=6)
    path = write_masks(tmp_path / "masks.json", masks)
    stripped = run_pipeline(
        cleaned_model("resnet"), "strip-channels", debug=True, pass_options={"strip-channels": {"masks": path}}
    )
    assert_same_outputs(masked_model("resnet", masks), stripped)


def test_nothing_to_strip_and_a_mask_keeping_no_channel_are_warned_about(tmp_path):
    with pytest.warns(UserWarning, match="strip-channels found no masked channel"):
        run_pipeline(cleaned_model("resnet"), "strip-channels")
    first_block = "/stages/stages.0/body/body.0/body.0.0/Conv"
    path = write_masks(tmp_path / "masks.json", {first_block: []})
    with pytest.warns(UserWarning, match="keeps none of its 16 channels"):
        run_pipeline(cleaned_model("resnet"), "strip-channels", pass_options={"strip-channels": {"masks": path}})


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_mask_file_gives_what_the_same_masks_in_the_graph_give(tmp_path, suffix):
    masks = random_masks(cleaned_model("resnet"), 0.5, seed=6)
    path = write_masks(tmp_path / f"masks{suffix}", masks)
    result = compile_model(
        cleaned_model("resnet"), "llvm", passes="strip-channels", pass_options={"strip-channels": {"masks": path}}
    )
    masked = masked_model("resnet", masks)
    assert_same_outputs(masked, result.optimized)
    inputs = random_inputs(masked)
    assert max_relative_error(result.run(inputs)["output"], run_onnxruntime(masked, inputs)["output"]) <= TVM_RTOL
    report = result.report
    assert report["macs_after"] < report["macs_before"] and report["params_after"] < report["params_before"]
    layers = {layer["node"]: layer for layer in report[StrippedChannels.KEY]["layers"]}
    first_block = "/stages/stages.0/body/body.0/body.0.0/Conv"
    assert layers[first_block]["out_channels"] == [16, len(masks[first_block])]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"no-such-conv": [0]}, "masks: no node or node output named 'no-such-conv' (layers: /stem/stem.0/Conv,"),
        (
            {"/stem/stem.0/Conv": [3, 16]},
            "masks: '/stem/stem.0/Conv' has 16 output channels; its kept indices must be distinct and in [0, "
            "16), got [3, 16]",
        ),
        (
            {"/stem/stem.0/Conv": [[0, 1]]},
            "must be a list of kept channel indices, not an array of shape [1, 2] and type int64",
        ),
        (
            {"/stem/stem.0/Conv": [True, False]},
            "must be a list of kept channel indices, not an array of shape [2] and type bool",
        ),
        ([0, 1], "expected a mapping of node names to kept channel indices"),
        ({"/head/Gemm": [0]}, "masks: '/head/Gemm' produces the graph output 'output', which keeps its width"),
    ],
    ids=["unknown-node", "index-out-of-range", "2-d", "boolean", "not-a-mapping", "graph-output"],
)
def test_bad_mask_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "masks.json"
    path.write_text(json.dumps(content))
    with pytest.raises(EdgesparseError, match="masks") as error:
        strip(cleaned_model("resnet"), masks=path)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_compile_tool_masks_option(tmp_path):
    model_path = save_model(load_model("resnet"), tmp_path / "resnet.onnx")
    masks = random_masks(cleaned_model("resnet"), 0.5, seed=7)
    good = run_tool(
        "compile",
        model_path,
        "--target",
        "llvm",
        "--passes",
        "default,strip-channels",
        "--masks",
        write_masks(tmp_path / "m.npz", masks),
        "-o",
        tmp_path / "out",
    )
    assert good.returncode == 0, good.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["macs_after"] < report["macs_before"] and report[StrippedChannels.KEY]["layers"]
    bad = run_tool(
        "compile",
        model_path,
        "--target",
        "llvm",
        "--passes",
        "default,strip-channels",
        "--masks",
        write_masks(tmp_path / "bad.json", {"/stem/stem.0/Conv": [99]}),
        "-o",
        tmp_path / "bad",
    )
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("error: masks: '/stem/stem.0/Conv' has 16 output channels")
        and bad.stderr.count("\n") == 1
    )
    without_pass = run_tool(
        "compile", model_path, "--target", "llvm", "--masks", tmp_path / "m.npz", "-o", tmp_path / "bad"
    )
    assert without_pass.returncode == 2 and "--masks is an option of the strip-channels pass" in without_pass.stderr


# ----------------------------------------------------------------------------------- TVM builds
@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stripped_nets_compile_for_every_target(name):
    masked = masked_model(name, random_masks(cleaned_model(name), 0.5, seed=8, coupled=True))
    host = compile_model(masked, "llvm", passes="strip-channels")
    assert host.report["macs_after"] < host.report["macs_before"]
    inputs = random_inputs(masked)
    expected = run_onnxruntime(masked, inputs)
    for output, value in host.run(inputs).items():
        assert max_relative_error(value, expected[output]) <= TVM_RTOL
    for target in ("arm_cpu", "mali"):
        assert compile_model(masked, target, passes="strip-channels").report["macs_after"] == host.report["macs_after"]


# ----------------------------------------------------------------------------------- round_to
def channel_widths(model: ir.Model) -> dict[str, int]:
    """Tensor name -> channels, for every node output with a static channel axis."""
    return {
        output.name: width
        for node in model.graph
        for output in node.outputs
        if (width := channel_count(output)) is not None
    }


def test_round_to_keeps_the_first_masked_channels_hand_computed():
    """16 channels, 5 kept by the mask: round_to=4 keeps 8, the 5 and the first 3 masked ones (indices 1, 2, 4)."""
    mask = np.zeros(16, np.float32)
    mask[[0, 3, 7, 9, 12]] = 1
    model = masked_conv_pair(mask)
    assert widths(strip(model)) == widths(strip(model, round_to=1)) == {"conv1": [3, 5], "conv2": [5, 4]}
    for round_to, width in ((4, 8), (8, 8), (3, 6), (5, 5), (16, 16)):
        stripped = strip(model, round_to=round_to)
        assert widths(stripped) == {"conv1": [3, width], "conv2": [width, 4]}, round_to
        assert_same_outputs(model, stripped)
    # The kept-back channels still carry their zero in the mask, which therefore stays.
    stripped = strip(model, round_to=4)
    [mask_node] = [node for node in stripped.graph if mask_operands(node)]
    assert mask_operands(mask_node)[1].const_value.numpy().ravel().tolist() == [1, 0, 0, 1, 0, 1, 1, 1]
    assert any(entry["reason"].startswith("round_to=4") for entry in strip_report(stripped).kept)


ROUND_TO_CASES = [(0.5, 2, True), (0.7, 3, True), (0.5, 0, False)]


@pytest.mark.parametrize("round_to", [4, 8])
@pytest.mark.parametrize(("ratio", "seed", "coupled"), ROUND_TO_CASES)
@pytest.mark.parametrize("name", ["resnet", "mobilenetv2", "unet", "edsr"])
def test_round_to_widths_are_multiples_and_outputs_equal(name, ratio, seed, coupled, round_to):
    masked = masked_model(name, random_masks(cleaned_model(name), ratio, seed, coupled=coupled))
    full = strip(masked)
    rounded = strip(masked, round_to=round_to)
    assert_same_outputs(masked, rounded)
    before, after, fully = channel_widths(masked), channel_widths(rounded), channel_widths(full)
    for name_, width in after.items():
        if name_ in before and width != before[name_]:
            assert width % round_to == 0, (name_, before[name_], width)
            # At least as wide as with every pruned channel stripped (a spent mask's output is gone there).
            assert width >= fully.get(name_, 0)
    assert total_macs(full) <= total_macs(rounded) <= total_macs(masked)


def test_round_to_edsr_coupled_widths_are_the_rounded_up_kept_counts():
    """Coupled masks on the EDSR net: each 64-channel layer keeps its stripped width rounded up to N, no
    more. (The upsampling conv's 128 channels go by DepthToSpace blocks of 4 and its width follows the
    rounding of the 32-channel tensor after the DepthToSpace: at least the rounded-up width.)"""
    masked = masked_model("edsr", random_masks(cleaned_model("edsr"), 0.6, seed=1, coupled=True))
    full = {layer["node"]: layer["out_channels"] for layer in strip_report(strip(masked)).layers}
    for round_to in (1, 8, 16):
        stripped = strip(masked, round_to=round_to)
        assert_same_outputs(masked, stripped)
        for layer, (original, width) in full.items():
            rounded_up = min(-(-width // round_to) * round_to, original)
            if original == 64:
                assert widths(stripped)[layer][1] == rounded_up, (layer, round_to)
            else:
                assert rounded_up <= widths(stripped)[layer][1] <= original, (layer, round_to)


@pytest.mark.parametrize("round_to", [0, -8, 2.5, True])
def test_round_to_must_be_a_positive_integer(round_to):
    with pytest.raises(EdgesparseError, match="round_to"):
        strip(cleaned_model("resnet"), round_to=round_to)


def test_compile_tool_round_to_is_an_option_of_strip_channels(tmp_path):
    model_path = save_model(load_model("resnet"), tmp_path / "resnet.onnx")
    without_pass = run_tool("compile", model_path, "--target", "llvm", "--round-to", "8", "-o", tmp_path / "bad")
    assert without_pass.returncode == 2 and "--round-to" in without_pass.stderr
    assert "option" in without_pass.stderr and "strip-channels" in without_pass.stderr
