"""The channel analyses on small hand-built graphs: which channels are coupled, pinned, contracted, constant."""

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesparse.frontends.onnx_frontend import proto_to_ir
from edgesparse.passes.channel_constants import channel_constants
from edgesparse.passes.channel_deps import ChannelGraph, analyze_channels
from edgesparse.passes.channel_ops import Slot

RNG = np.random.default_rng(0)


def random_weight(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def build_model(
    nodes: list, inputs: dict[str, list[int]], outputs: list[str], weights: dict[str, np.ndarray]
) -> ir.Model:
    """A float model (opset 17) from onnx.helper nodes, with shapes inferred; ``weights`` become initializers."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    return proto_to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def conv(x: str, weight: str, y: str, **attributes) -> object:
    return helper.make_node("Conv", [x, weight], [y], name=y, **attributes)


def named(slots) -> set[tuple[str, int, int]]:
    return {(slot.value.name, slot.axis, slot.index) for slot in slots}


def group_of(deps: ChannelGraph, value: str, index: int) -> set[tuple[str, int, int]]:
    """The group of channel ``index`` of activation ``value``, as (name, axis, index) triples."""
    for group in deps.groups():
        if any(slot.value.name == value and slot.axis == 1 and slot.index == index for slot in group):
            return named(group)
    raise AssertionError(f"no channel {index} of {value}")


def activations(group: set[tuple[str, int, int]], *names: str) -> set[tuple[str, int]]:
    return {(name, index) for name, axis, index in group if name in names}


def pin_reason(deps: ChannelGraph, value: str, index: int = 0) -> str | None:
    return next(
        (reason for slot, reason in deps.pins.items() if slot.value.name == value and slot.index == index), None
    )


def test_residual_add_couples_both_branches_and_their_weights():
    model = build_model(
        [
            conv("x", "w1", "a", pads=[1, 1, 1, 1]),
            conv("x", "w2", "b"),
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("Relu", ["s"], ["r"]),
            conv("r", "w3", "y"),
        ],
        {"x": [1, 3, 8, 8]},
        ["y"],
        {"w1": random_weight(4, 3, 3, 3), "w2": random_weight(4, 3, 1, 1), "w3": random_weight(2, 4, 1, 1)},
    )
    deps = analyze_channels(model)
    assert group_of(deps, "a", 2) == {
        ("a", 1, 2),
        ("b", 1, 2),
        ("s", 1, 2),
        ("r", 1, 2),
        ("w1", 0, 2),
        ("w2", 0, 2),
        ("w3", 1, 2),
    }
    # The input channels are summed by both convs; r by the last one.
    assert sorted(node.name for node in deps.contractions[Slot(model.graph.inputs[0], 1, 0)]) == ["a", "b"]
    assert [node.name for slot, nodes in deps.contractions.items() if slot.value.name == "r" for node in nodes] == [
        "y"
    ] * 4
    assert pin_reason(deps, "x") == "graph input"
    assert pin_reason(deps, "y") == "graph output (keeps its width)"
    assert pin_reason(deps, "a") is None


def test_concat_split_and_slice_couple_channels_at_their_offsets():
    model = build_model(
        [
            conv("x", "wa", "a"),
            conv("x", "wb", "b"),
            helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
            helper.make_node("Split", ["c", "sizes"], ["s0", "s1"], axis=1),
            helper.make_node("Slice", ["s1", "starts", "ends", "axes"], ["t"]),
            conv("s0", "w0", "y0"),
            conv("t", "w1", "y1"),
        ],
        {"x": [1, 3, 4, 4]},
        ["y0", "y1"],
        {
            "wa": random_weight(3, 3, 1, 1),
            "wb": random_weight(5, 3, 1, 1),
            "sizes": np.array([2, 6], np.int64),
            "starts": np.array([1], np.int64),
            "ends": np.array([5], np.int64),
            "axes": np.array([1], np.int64),
            "w0": random_weight(2, 2, 1, 1),
            "w1": random_weight(2, 4, 1, 1),
        },
    )
    deps = analyze_channels(model)
    # b's channel 1 is channel 3 + 1 of the concat, channel 4 - 2 of the second split part, 2 - 1 of the slice.
    assert activations(group_of(deps, "b", 1), "a", "b", "c", "s0", "s1", "t") == {
        ("b", 1),
        ("c", 4),
        ("s1", 2),
        ("t", 1),
    }
    assert activations(group_of(deps, "a", 1), "a", "b", "c", "s0", "s1", "t") == {("a", 1), ("c", 1), ("s0", 1)}
    # Sliced off: channel 0 of s1 (c's channel 2) reaches no layer.
    assert ("t", 0) not in activations(group_of(deps, "a", 2), "t")


@pytest.mark.parametrize(("mode", "expected"), [("CRD", {0, 1, 2, 3}), ("DCR", {0, 2, 4, 6})])
def test_depth_to_space_couples_each_output_channel_with_its_block(mode, expected):
    model = build_model(
        [
            conv("x", "w", "a"),
            helper.make_node("DepthToSpace", ["a"], ["d"], blocksize=2, mode=mode),
            conv("d", "w2", "y"),
        ],
        {"x": [1, 3, 4, 4]},
        ["y"],
        {"w": random_weight(8, 3, 1, 1), "w2": random_weight(2, 2, 1, 1)},
    )
    group = group_of(analyze_channels(model), "d", 0)
    assert {index for name, index in activations(group, "a")} == expected
    assert activations(group, "d") == {("d", 0)}


def test_depthwise_and_grouped_convs_move_a_group_in_and_out_together():
    model = build_model(
        [
            conv("x", "w", "a"),
            conv("a", "dw", "b", group=4, pads=[1, 1, 1, 1]),
            conv("b", "gw", "c", group=2),
            conv("c", "w2", "y"),
        ],
        {"x": [1, 3, 4, 4]},
        ["y"],
        {
            "w": random_weight(4, 3, 1, 1),
            "dw": random_weight(4, 1, 3, 3),
            "gw": random_weight(6, 2, 1, 1),
            "w2": random_weight(2, 6, 1, 1),
        },
    )
    deps = analyze_channels(model)
    # Depthwise: a's channel c is b's channel c; grouped (2 groups): b's 0-1 and c's 0-2 are group 0.
    assert activations(group_of(deps, "a", 0), "a", "b", "c") == {
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("b", 1),
        ("c", 0),
        ("c", 1),
        ("c", 2),
    }
    assert activations(group_of(deps, "a", 3), "a", "b", "c") == {
        ("a", 2),
        ("a", 3),
        ("b", 2),
        ("b", 3),
        ("c", 3),
        ("c", 4),
        ("c", 5),
    }
    # The grouped convs' inputs are coupled, not contracted.
    assert not any(slot.value.name in ("a", "b") for slot in deps.contractions)


def test_flatten_into_gemm_couples_a_channel_with_its_features():
    model = build_model(
        [
            conv("x", "w", "a"),
            helper.make_node("Flatten", ["a"], ["f"]),
            helper.make_node("Gemm", ["f", "g", "gb"], ["y"]),
        ],
        {"x": [1, 3, 2, 2]},
        ["y"],
        {"w": random_weight(4, 3, 1, 1), "g": random_weight(16, 5), "gb": random_weight(5)},
    )
    group = group_of(analyze_channels(model), "a", 1)
    assert activations(group, "f") == {("f", 4), ("f", 5), ("f", 6), ("f", 7)}
    assert {(name, axis, index) for name, axis, index in group if name == "g"} == {
        ("g", 0, 4),
        ("g", 0, 5),
        ("g", 0, 6),
        ("g", 0, 7),
    }


def test_per_channel_constants_are_coupled_and_broadcast_activations_pinned():
    model = build_model(
        [
            conv("x", "w", "a"),
            helper.make_node("Mul", ["a", "mask"], ["m"]),
            helper.make_node("PRelu", ["m", "slope"], ["p"]),
            conv("x", "w1", "attention"),
            helper.make_node("Mul", ["p", "attention"], ["q"]),
            conv("q", "w2", "y"),
        ],
        {"x": [1, 3, 4, 4]},
        ["y"],
        {
            "w": random_weight(4, 3, 1, 1),
            "mask": np.ones((1, 4, 1, 1), np.float32),
            "slope": random_weight(4, 1, 1),
            "w1": random_weight(1, 3, 1, 1),
            "w2": random_weight(2, 4, 1, 1),
        },
    )
    deps = analyze_channels(model)
    group = group_of(deps, "a", 3)
    assert {("mask", 1, 3), ("slope", 0, 3), ("q", 1, 3)} <= group
    assert pin_reason(deps, "attention") == "it is broadcast to every channel of Mul 'q'"


def reshape_mixing_channels() -> ir.Model:
    return build_model(
        [
            conv("x", "w", "a"),
            helper.make_node("Reshape", ["a", "shape"], ["r"], name="r"),
            helper.make_node("Relu", ["r"], ["y"]),
        ],
        {"x": [1, 3, 4, 4]},
        ["y"],
        {"w": random_weight(8, 3, 1, 1), "shape": np.array([1, 2, 64], np.int64)},
    )


def shared_weight() -> ir.Model:
    return build_model(
        [conv("x", "w", "a"), conv("x", "w", "b"), helper.make_node("Add", ["a", "b"], ["s"]), conv("s", "w2", "y")],
        {"x": [1, 3, 4, 4]},
        ["y"],
        {"w": random_weight(4, 3, 1, 1), "w2": random_weight(2, 4, 1, 1)},
    )


def op_over_channels(op: str, **attributes) -> ir.Model:
    return build_model(
        [
            conv("x", "w", "a"),
            helper.make_node(op, ["a"], ["r"], name="r", **attributes),
            helper.make_node("Relu", ["r"], ["y"]),
        ],
        {"x": [1, 3, 4, 4]},
        ["y"],
        {"w": random_weight(4, 3, 1, 1)},
    )


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (
            reshape_mixing_channels,
            "Reshape 'r': it reshapes [1, 8, 4, 4] to [1, 2, 64], mixing channels with other axes",
        ),
        (shared_weight, "weight 'w' is shared by Conv 'a', Conv 'b'"),
        (lambda: op_over_channels("LRN", size=3), "LRN 'r': no channel rule for this op"),
        (lambda: op_over_channels("Softmax", axis=1), "Softmax 'r': it normalizes across channels"),
        (lambda: op_over_channels("ReduceMax", axes=[1]), "ReduceMax 'r': it reduces over the batch or channel axis"),
    ],
    ids=[
        "reshape-mixing-channels",
        "shared-weight",
        "op-without-rule",
        "softmax-over-channels",
        "reduce-over-channels",
    ],
)
def test_what_cannot_be_mapped_is_pinned_with_its_reason(model, reason):
    deps = analyze_channels(model())
    pinned = {deps.pins.get(slot) for slot in deps.graph if slot.value.name == "a" or slot.value.name == "w"}
    assert reason in pinned


def test_constants_flow_through_masks_batchnorm_activations_and_layers():
    conv_weight = random_weight(4, 3, 1, 1)
    conv_weight[1] = 0  # channel 1: an all-zero filter, so its output is its bias
    conv_bias = np.array([0.1, 0.7, -0.2, 0.3], np.float32)
    mask = np.array([1, 1, 0, 0], np.float32).reshape(1, 4, 1, 1)
    head_weight = random_weight(2, 4, 3, 3)
    head_weight[:, 0] = 0  # the heads read only channels 1-3, all constant
    scale, shift, mean, var = (
        np.array(values, np.float32)
        for values in ([1.5, 2, 0.5, 1], [0.3, -0.4, 0.8, -0.6], [0.1, 0.2, 0.3, 0.4], [1, 2, 0.5, 4])
    )
    model = build_model(
        [
            helper.make_node("Conv", ["x", "w", "wb"], ["a"]),
            helper.make_node("Mul", ["a", "mask"], ["m"]),
            helper.make_node("BatchNormalization", ["m", "scale", "shift", "mean", "var"], ["n"]),
            helper.make_node("Relu", ["n"], ["r"]),
            helper.make_node(
                "AveragePool", ["r"], ["padded_pool"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1
            ),
            helper.make_node("MaxPool", ["r"], ["max_pool"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            conv("r", "head", "padded", pads=[1, 1, 1, 1]),
            conv("r", "head", "valid"),
            helper.make_node("Concat", ["padded_pool", "max_pool"], ["y"], axis=1),
        ],
        {"x": [1, 3, 6, 6]},
        ["y", "padded", "valid"],
        {
            "w": conv_weight,
            "wb": conv_bias,
            "mask": mask,
            "scale": scale,
            "shift": shift,
            "mean": mean,
            "var": var,
            "head": head_weight,
        },
    )
    constants = {
        (slot.value.name, slot.index): value
        for slot, value in channel_constants(model, analyze_channels(model)).items()
    }
    batchnorm = shift + scale * (np.array([0, 0.7, 0, 0]) - mean) / np.sqrt(var + 1e-5)
    relu = np.maximum(batchnorm, 0)
    assert relu[1] > 0 and relu[2] > 0 and relu[3] == 0  # the cases below need these
    expected = {
        ("a", 1): 0.7,
        ("m", 1): 0.7,
        ("m", 2): 0.0,  # masked: 0 whatever the conv computed
        ("m", 3): 0.0,
        **{("n", channel): batchnorm[channel] for channel in (1, 2, 3)},  # a masked channel after BN is not 0
        **{("r", channel): relu[channel] for channel in (1, 2, 3)},
        ("padded_pool", 3): 0.0,  # the zero padding averages in zeros: uniform only for 0
        **{("max_pool", channel): relu[channel] for channel in (1, 2, 3)},
        # without padding a conv of constants is a constant; with it, not at the borders (below)
        **{("valid", channel): float(relu @ head_weight[channel].sum((1, 2))) for channel in (0, 1)},
    }
    assert {key: constants[key] for key in expected} == pytest.approx(expected, rel=1e-6)
    for unknown in [("a", 0), ("m", 0), ("padded_pool", 1), ("padded_pool", 2), ("padded", 0), ("padded", 1)]:
        assert unknown not in constants


def test_a_value_read_inside_a_subgraph_is_pinned():
    def branch(op: str) -> object:
        output = helper.make_tensor_value_info(f"{op}_out", TensorProto.FLOAT, [1, 4, 4, 4])
        return helper.make_graph([helper.make_node(op, ["m"], [f"{op}_out"])], op, [], [output])

    model = build_model(
        [
            conv("x", "w", "a"),
            helper.make_node("Mul", ["a", "mask"], ["m"]),
            helper.make_node("If", ["cond"], ["y"], then_branch=branch("Relu"), else_branch=branch("Neg")),
        ],
        {"x": [1, 3, 4, 4]},
        ["y"],
        {
            "w": random_weight(4, 3, 1, 1),
            "mask": np.array([1, 0, 1, 0], np.float32).reshape(1, 4, 1, 1),
            "cond": np.array(True),
        },
    )
    assert pin_reason(analyze_channels(model), "m", 1) == "'m' is read inside a subgraph"
