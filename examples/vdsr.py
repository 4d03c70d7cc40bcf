"""A VDSR-style super-resolution net (Kim et al. 2016), written as a user would, with no FeatReg in it:
20 3x3 convs with ReLUs, a global residual over the bicubic upscale of the input.

    from edgesparse.frontends import featreg
    net = VDSR(scale=2)
    print(featreg.attach_gates(net, torch.rand(1, 3, 24, 24)))   # 19 gates: each ReLU becomes one
    python tools/train_featreg.py --task sr --scale 2 --model examples/vdsr.py:VDSR --model-args '{"width": 32}' -o out/
"""

from math import sqrt

import torch
from torch import nn
from torch.nn import functional as F


class ConvReLU(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv(x))


class VDSR(nn.Module):
    def __init__(self, scale: int = 2, width: int = 64, depth: int = 20, channels: int = 3):
        super().__init__()
        self.scale = scale
        self.input = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.residual_layer = nn.Sequential(*[ConvReLU(width) for _ in range(depth - 2)])
        self.output = nn.Conv2d(width, channels, 3, padding=1, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                n = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.data.normal_(0, sqrt(2.0 / n))
        self.output.weight.data.mul_(0.1)

    def forward(self, x):
        upscaled = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        out = self.relu(self.input(upscaled))
        out = self.residual_layer(out)
        return torch.add(self.output(out), upscaled)
