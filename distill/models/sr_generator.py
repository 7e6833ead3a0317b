"""The feature super-resolution generator G (papers/small-object-generative-discriminative.txt).

G turns a detector's feature map z_LR float32 [B, C, H, W] into G(z_LR) of the same shape: residual blocks and
a sub-pixel convolution branch added to z_LR, its last convolution at zero so that G starts as the identity.
``--kd sr`` trains it (distill/kd/methods/sr.py). It is either a training-only part of the method or, with the
model kwarg ``sr_generator`` (``--sr-keep-g``), a part of the SSD student itself, read by its heads at
inference (:meth:`distill.models.ssd.SSD.add_sr_generator`) and exported with it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

SPEC_KEYS = ("maps", "width", "blocks")


class ResidualBlock(nn.Module):
    """conv3x3 -> PReLU -> conv3x3, plus the input (SRResNet's block without batch norm, as in EDSR)."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.PReLU(width),
                                  nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRGenerator(nn.Module):
    """z_LR float32 [B, C, H, W] -> G(z_LR) float32 [B, C, H, W] (same size and channels as its input).

    1x1 in-conv (C -> width) -> ``blocks`` residual blocks -> sub-pixel branch: 3x3 conv (width -> 4 width),
    PixelShuffle(2) ([width, 2H, 2W]), PReLU, stride-2 3x3 conv (back to [H, W]), PReLU, 1x1 conv (width -> C);
    the branch's output is added to z_LR. The last conv starts at zero, so G starts as the identity. The
    1x1 convs at both ends keep the cost off the (wide) student channels."""

    def __init__(self, channels: int, width: int = 64, blocks: int = 2):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(channels, width, 1), nn.PReLU(width))
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.subpixel = nn.Sequential(nn.Conv2d(width, 4 * width, 3, padding=1), nn.PixelShuffle(2),
                                      nn.PReLU(width), nn.Conv2d(width, width, 3, stride=2, padding=1),
                                      nn.PReLU(width), nn.Conv2d(width, channels, 1))
        nn.init.zeros_(self.subpixel[-1].weight)
        nn.init.zeros_(self.subpixel[-1].bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.subpixel(self.blocks(self.head(z)))
        return z + y[..., :z.shape[-2], :z.shape[-1]]


def sr_generator_spec(spec: Any, num_maps: int) -> tuple[list[int], int, int]:
    """The model kwarg ``sr_generator`` -> (maps, width, blocks), checked; ValueError naming the bad value.

    ``spec``: a mapping ``{"maps": [0, 1], "width": 32, "blocks": 2}`` (width and blocks optional: 32, 2);
    ``maps``: distinct indices in 0..num_maps-1 (0: the highest-resolution map)."""
    where = "model kwarg sr_generator"
    if not isinstance(spec, dict):
        raise ValueError(f"{where} {spec!r}: expected a mapping like {{\"maps\": [0, 1], \"width\": 32, "
                         "\"blocks\": 2}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(SPEC_KEYS)}")
    maps, width, blocks = spec.get("maps"), spec.get("width", 32), spec.get("blocks", 2)
    if (not isinstance(maps, (list, tuple)) or not maps or len(set(maps)) != len(maps)
            or not all(isinstance(k, int) and 0 <= k < num_maps for k in maps)):
        raise ValueError(f"{where}: maps {maps!r}: expected distinct map indices in 0..{num_maps - 1}")
    if not isinstance(width, int) or width < 1 or not isinstance(blocks, int) or blocks < 0:
        raise ValueError(f"{where}: width {width!r} / blocks {blocks!r}: expected integers >= 1 / >= 0")
    return sorted(int(k) for k in maps), int(width), int(blocks)
