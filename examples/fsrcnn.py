"""An FSRCNN-style super-resolution net (Dong et al. 2016), written as a user would, with no FeatReg in it:
feature extraction, shrinking, mapping and expanding convs, each followed by a PReLU, and a transposed
conv (deconvolution) tail that upscales.

    from edgesparse.frontends import featreg
    net = FSRCNN(scale=2)
    print(featreg.attach_gates(net, torch.rand(1, 3, 24, 24)))
    # gates after the PReLUs in front of the shrinking, mapping and expanding convs (the dense model changes:
    # train it with them); the deconvolution is not gated (the featreg pass rewrites 2-D Conv only)
    python tools/train_featreg.py --task sr --scale 2 --model examples/fsrcnn.py:FSRCNN -o out/
"""

from torch import nn


class FSRCNN(nn.Module):
    def __init__(self, scale: int = 2, channels: int = 3, d: int = 56, s: int = 12, m: int = 4):
        super().__init__()
        self.first_part = nn.Sequential(nn.Conv2d(channels, d, 5, padding=2), nn.PReLU(d))
        mid = [nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            mid += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        mid += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.mid_part = nn.Sequential(*mid)
        self.last_part = nn.ConvTranspose2d(d, channels, 9, stride=scale, padding=4, output_padding=scale - 1)
        nn.init.normal_(self.last_part.weight, std=0.001)
        nn.init.zeros_(self.last_part.bias)

    def forward(self, x):
        return self.last_part(self.mid_part(self.first_part(x)))
