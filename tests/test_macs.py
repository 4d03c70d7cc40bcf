"""MAC counts checked against numbers worked out by hand from each layer's definition."""

import pytest
import torch
from torch import nn

from edgesparse.frontends.torch_frontend import from_torch
from edgesparse.passes.macs import count_macs, count_params, total_macs


def macs_of(module: nn.Module, shape) -> list[tuple[str, int]]:
    model = from_torch(module, torch.randn(shape))
    return [(entry.op_type, entry.macs) for entry in count_macs(model) if entry.macs]


@pytest.mark.parametrize(
    "layer, shape, expected",
    [
        # 8 outputs channels x 6x6 output pixels, each 3 in-channels x 3x3 taps
        (nn.Conv2d(3, 8, 3), (1, 3, 8, 8), [("Conv", 8 * 6 * 6 * 3 * 9)]),
        # stride 2 + padding 1: 4x4 outputs; batch 2 doubles everything
        (nn.Conv2d(3, 8, 3, stride=2, padding=1), (2, 3, 8, 8), [("Conv", 2 * 8 * 4 * 4 * 3 * 9)]),
        # depthwise: each output channel reads one input channel
        (nn.Conv2d(16, 16, 3, padding=1, groups=16), (1, 16, 8, 8), [("Conv", 16 * 8 * 8 * 1 * 9)]),
        # grouped: 4 groups, each output channel reads 16 / 4 = 4 input channels
        (nn.Conv2d(16, 32, 1, groups=4), (1, 16, 8, 8), [("Conv", 32 * 8 * 8 * 4)]),
        # transposed 2x2 stride 2: each of the 4 x 5 x 5 input elements is scattered into 6 x 2 x 2 outputs
        (nn.ConvTranspose2d(4, 6, 2, stride=2), (1, 4, 5, 5), [("ConvTranspose", 4 * 5 * 5 * 6 * 4)]),
        # grouped transposed: 2 groups, 3 output channels per group
        (nn.ConvTranspose2d(4, 6, 3, groups=2), (1, 4, 5, 5), [("ConvTranspose", 4 * 5 * 5 * 3 * 9)]),
        # linear 20 -> 7 on a batch of 3
        (nn.Linear(20, 7), (3, 20), [("Gemm", 3 * 7 * 20)]),
        # a batched matmul through a 3-d linear: 2 x 5 rows of 20 -> 7
        (nn.Linear(20, 7, bias=False), (2, 5, 20), [("MatMul", 2 * 5 * 7 * 20)]),
    ],
)
def test_macs_per_layer(layer, shape, expected):
    assert macs_of(layer, shape) == expected


def test_total_and_params_of_a_small_net():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    model = from_torch(net, torch.randn(1, 3, 2, 2))
    assert total_macs(model) == 4 * 2 * 2 * 3 + 5 * 16
    assert count_params(model) == (4 * 3 + 4) + (5 * 16 + 5)
