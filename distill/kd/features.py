"""Training-only modules between the student's feature maps and every feature-level distillation term.

student map k --[Adapter_k: learnable 1x1 conv]--> teacher channel space --[standardise with the TEACHER's
frozen per-channel statistics]--> D_k / feature losses  <--[same standardisation]-- teacher map k

* Adapters sit on ALL six maps (FitNets' regressor; GAN-KD Fig. 3 draws one adaptation per map). Where the
  widths match they start as the identity, so training starts from the student's own features, but they
  can still learn the permutation / mixing that aligns two independently trained networks' channels
  (same-index channel correlation between our teacher and student is ~0 on most maps). ``mode="mismatch"``
  keeps the older behaviour (a plain identity where widths match) as an option.
* Standardisation puts every channel of every map on one scale (teacher channels differ by orders of
  magnitude in variance), so no single channel or map dominates a discriminator or an L2 term. The
  statistics are the teacher's, measured once on training images before distillation starts, then
  frozen and saved with the run (buffers of :class:`FeatureStandardizer`).

None of this is part of the student's inference weights: checkpoints keep it under ``kd_modules``.
"""
from __future__ import annotations

import torch
from torch import nn


class Adapters(nn.Module):
    """Six 1x1 convolutions (with bias) mapping student maps [B, Cs_k, H, W] to teacher widths [B, Ct_k, H, W].

    Args:
        student_channels / teacher_channels: widths of the six maps.
        mode: "all" (default): a learnable 1x1 conv on every map, identity-initialised where the widths
            match; "mismatch": a conv only where the widths differ, a fixed identity elsewhere.
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int], mode: str = "all"):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f"student has {len(student_channels)} feature maps, teacher {len(teacher_channels)}")
        if mode not in ("all", "mismatch"):
            raise ValueError(f"adapter mode must be 'all' or 'mismatch', got {mode!r}")
        maps: list[nn.Module] = []
        for cs, ct in zip(student_channels, teacher_channels):
            if cs == ct and mode == "mismatch":
                maps.append(nn.Identity())
                continue
            conv = nn.Conv2d(cs, ct, 1)
            if cs == ct:
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(cs).view(cs, cs, 1, 1))
                    conv.bias.zero_()
            maps.append(conv)
        self.maps = nn.ModuleList(maps)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m(f) for m, f in zip(self.maps, feats)]


class FeatureStandardizer(nn.Module):
    """Per-channel (x - mean_c) / std_c with the teacher's statistics, frozen after :meth:`fit`.

    Buffers ``mean_k`` / ``std_k`` [C_k] for each map k and ``fitted`` (0 / 1) travel with ``state_dict``.
    """

    FLOOR = 0.1
    DEAD = 1e-3

    def __init__(self, channels: list[int], eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for k, c in enumerate(channels):
            self.register_buffer(f"mean_{k}", torch.zeros(c))
            self.register_buffer(f"std_{k}", torch.ones(c))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.long))
        self.num_maps = len(channels)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item())

    @torch.no_grad()
    def fit(self, batches_of_maps: list[list[torch.Tensor]]) -> None:
        """``batches_of_maps``: per batch, the teacher's six maps. Pooled mean / std over (batch, H, W).

        A channel the teacher barely uses (a ReLU that never fires has std 0) would turn any student activation
        into a huge standardised value; its std is floored at ``FLOOR`` x the median channel std of its map. A map
        the teacher does not use at all (median channel std below ``DEAD``, e.g. an untrained teacher's deepest
        maps) is left as it is (mean 0, std 1)."""
        if not batches_of_maps:
            raise ValueError("no teacher feature maps to measure standardisation statistics on")
        for k in range(self.num_maps):
            x = torch.cat([b[k].float().transpose(0, 1).reshape(b[k].shape[1], -1) for b in batches_of_maps], 1)
            std, mean = x.std(1, unbiased=False), x.mean(1)
            if float(std.median()) < self.DEAD:
                std, mean = torch.ones_like(std), torch.zeros_like(mean)
            floor = max(self.eps, self.FLOOR * float(std.median()))
            getattr(self, f"mean_{k}").copy_(mean)
            getattr(self, f"std_{k}").copy_(std.clamp_min(floor))
        self.fitted.fill_(1)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for k, f in enumerate(feats):
            m, s = getattr(self, f"mean_{k}"), getattr(self, f"std_{k}")
            out.append((f - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1))
        return out


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
