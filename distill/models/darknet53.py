"""DarkNet-53 backbone (Redmon & Farhadi 2018, Table 1): 3x3/1x1 residual blocks with LeakyReLU(0.1),
stage depths 1, 2, 8, 8, 4. SSD taps stage 4 (512 ch, stride 16) and stage 5 (1024 ch, stride 32):
the teacher of the GAN-KD paper, whose discriminator widths (Tables 2-3) are these channels.
"""
from __future__ import annotations

from torch import nn

from .layers import conv_bn_act

DEPTHS = (1, 2, 8, 8, 4)


def _leaky():
    return nn.LeakyReLU(0.1, inplace=True)


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(c, c // 2, 1, act=_leaky), conv_bn_act(c // 2, c, 3, act=_leaky))

    def forward(self, x):
        return x + self.body(x)


class DarkNet53Backbone(nn.Module):
    def __init__(self, width_mult: float = 1.0, depths=DEPTHS):
        super().__init__()
        w = [max(8, int(round(c * width_mult))) for c in (32, 64, 128, 256, 512, 1024)]
        self.stem = conv_bn_act(3, w[0], 3, act=_leaky)
        stages = []
        for i, d in enumerate(depths):
            stages.append(nn.Sequential(conv_bn_act(w[i], w[i + 1], 3, 2, act=_leaky), *[_Residual(w[i + 1]) for _ in range(d)]))
        self.stages = nn.ModuleList(stages)
        self.out_channels = [w[4], w[5]]

    def forward(self, x):
        x = self.stem(x)
        for s in self.stages[:4]:
            x = s(x)
        return [x, self.stages[4](x)]
