"""Small building blocks shared by the detectors."""
from __future__ import annotations

from torch import nn


def conv_bn_act(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: type[nn.Module] = nn.ReLU,
                p: int | None = None) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> activation."""
    layers = [nn.Conv2d(cin, cout, k, s, k // 2 if p is None else p, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.LeakyReLU) else act())
    return nn.Sequential(*layers)


def separable_conv(cin: int, cout: int, s: int = 1, act: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
    """Depthwise 3x3 (BN, ReLU6) then pointwise 1x1 (BN, ReLU6): the SSD-Lite replacement of a 3x3 conv."""
    return nn.Sequential(conv_bn_act(cin, cin, 3, s, groups=cin, act=act), conv_bn_act(cin, cout, 1, act=act))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10 % (MobileNet convention)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new
