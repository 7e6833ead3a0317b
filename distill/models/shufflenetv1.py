"""ShuffleNet V1 backbone (Zhang et al. 2018), g = 3 by default: pointwise group convolutions and
channel shuffle. Stage output channels for g = 3 at 1x are 240 / 480 / 960 (paper, Table 1).
SSD-Lite taps the end of stage 3 (stride 16) and stage 4 (stride 32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import make_divisible

STAGE_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536)}
STAGE_REPEATS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """Fig. 2(b) (stride 1, residual add) and 2(c) (stride 2, avg-pool shortcut concatenated)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_group: bool = True):
        super().__init__()
        self.stride, self.groups = stride, groups
        out = cout - cin if stride == 2 else cout
        mid = make_divisible(out // 4, groups)
        g1 = groups if first_group else 1           # no group conv on the 24-channel stem output (paper)
        self.g1 = g1
        self.conv1 = nn.Sequential(nn.Conv2d(cin, mid, 1, groups=g1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, out, 1, groups=groups, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = self.conv1(x)
        if self.g1 > 1:
            y = channel_shuffle(y, self.g1)
        y = self.conv2(self.dw(y))
        if self.stride == 2:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), y], 1))
        return F.relu(x + y)


class ShuffleNetV1Backbone(nn.Module):
    def __init__(self, groups: int = 3, width_mult: float = 1.0):
        super().__init__()
        if groups not in STAGE_CHANNELS:
            raise ValueError(f"ShuffleNet V1 groups must be one of {sorted(STAGE_CHANNELS)}, got {groups}")
        chans = [make_divisible(c * width_mult, 4 * groups) for c in STAGE_CHANNELS[groups]]
        stem = make_divisible(24 * width_mult, 8) if width_mult != 1.0 else 24
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        stages, cin = [], stem
        for i, (cout, reps) in enumerate(zip(chans, STAGE_REPEATS)):
            units = [ShuffleUnit(cin, cout, 2, groups, first_group=i > 0)]
            units += [ShuffleUnit(cout, cout, 1, groups) for _ in range(reps - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        self.out_channels = [chans[1], chans[2]]

    def forward(self, x):
        x = self.stage2(self.stem(x))
        c4 = self.stage3(x)
        return [c4, self.stage4(c4)]
