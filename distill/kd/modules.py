"""Training-only modules around the student: 1x1 feature adapters and BEGAN auto-encoders.

None of these are part of the student's inference weights: checkpoints keep them under
``kd_modules`` / ``discriminators``, never under ``model``.
"""
from __future__ import annotations

import torch
from torch import nn


class Adapters(nn.Module):
    """Maps the student's six feature maps into the teacher's channel space: a 1x1 conv (with bias) per
    map whose widths differ, identity where they already match (FitNets' regressor, GAN-KD Fig. 3)."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f"student has {len(student_channels)} feature maps, teacher {len(teacher_channels)}")
        self.maps = nn.ModuleList(nn.Identity() if cs == ct else nn.Conv2d(cs, ct, 1)
                                  for cs, ct in zip(student_channels, teacher_channels))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m(f) for m, f in zip(self.maps, feats)]


class BeganAutoencoder(nn.Module):
    """BEGAN discriminator for one map (text-nontext paper, sec. III-C): conv encoder to a bottleneck of
    ``hidden`` channels, conv decoder back; D(x) is the reconstruction, the score is |D(x) - x|."""

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(16, channels // 4)
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ELU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ELU(),
                                 nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
