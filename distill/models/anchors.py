"""SSD default boxes (Liu et al. 2016, sec. 2.2 "Choosing scales and aspect ratios for default boxes").

Scales grow linearly from ``min_ratio`` to ``max_ratio`` over the m feature maps:
    s_k = s_min + (s_max - s_min) * k / (m - 1),  k = 0..m-1
and each location gets, for aspect ratio 1, a box of scale s_k and one of scale sqrt(s_k * s_{k+1}),
plus, for every ratio r in ``aspect_ratios[k]``, the pair (s_k*sqrt(r), s_k/sqrt(r)) and its transpose.

Anchors are normalised ``cxcywh`` in [0, 1] of the network input. Order: feature map, then row (y),
then column (x), then anchor kind -- the same order the heads flatten their outputs in.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

# SSD-Lite (MobileNetV2 paper) uses ratios {2, 3} and their inverses on every map: 6 boxes per cell.
SSDLITE_ASPECT_RATIOS = ((2, 3),) * 6


def num_anchors_per_location(aspect_ratios: Sequence[Sequence[float]]) -> list[int]:
    return [2 + 2 * len(r) for r in aspect_ratios]


def anchor_scales(num_maps: int, min_ratio: float, max_ratio: float) -> list[float]:
    """Linear scales s_0..s_{m-1}, then one extra s_m used only for the sqrt(s_k s_{k+1}) box."""
    if not 0.0 < min_ratio < max_ratio <= 1.0:
        raise ValueError(f"anchor scales need 0 < min_ratio < max_ratio <= 1, got {min_ratio}, {max_ratio}")
    if num_maps == 1:
        return [min_ratio, max_ratio]
    step = (max_ratio - min_ratio) / (num_maps - 1)
    return [min_ratio + step * k for k in range(num_maps)] + [1.0]


class DefaultBoxGenerator:
    """Builds anchors for a list of feature-map sizes. Pure function of its arguments, cached per size.

    Args:
        aspect_ratios: per feature map, the ratios r > 1 (r and 1/r are both used).
        min_ratio, max_ratio: smallest and largest scale, as a fraction of the input side.
        clip: clamp cx, cy, w, h to [0, 1] (original SSD does).
    """

    def __init__(self, aspect_ratios: Sequence[Sequence[float]] = SSDLITE_ASPECT_RATIOS,
                 min_ratio: float = 0.2, max_ratio: float = 0.95, clip: bool = True):
        self.aspect_ratios = [tuple(float(r) for r in rs) for rs in aspect_ratios]
        self.scales = anchor_scales(len(self.aspect_ratios), min_ratio, max_ratio)
        self.clip = clip
        self._cache: dict[tuple, torch.Tensor] = {}

    def num_anchors_per_location(self) -> list[int]:
        return num_anchors_per_location(self.aspect_ratios)

    def cell_shapes(self, k: int) -> list[tuple[float, float]]:
        """(w, h) of the anchors of map k, normalised, in emission order."""
        s, s_next = self.scales[k], self.scales[k + 1]
        shapes = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in self.aspect_ratios[k]:
            q = math.sqrt(r)
            shapes += [(s * q, s / q), (s / q, s * q)]
        return shapes

    def __call__(self, feature_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """feature_sizes: [(h_k, w_k)] per map. Returns float32 [N, 4] cxcywh in [0, 1]."""
        key = tuple((int(h), int(w)) for h, w in feature_sizes)
        if len(key) != len(self.aspect_ratios):
            raise ValueError(f"{len(key)} feature maps given, anchors configured for {len(self.aspect_ratios)}")
        if key not in self._cache:
            per_map = []
            for k, (fh, fw) in enumerate(key):
                wh = torch.tensor(self.cell_shapes(k), dtype=torch.float64)          # [A, 2]
                cy, cx = torch.meshgrid((torch.arange(fh, dtype=torch.float64) + 0.5) / fh,
                                        (torch.arange(fw, dtype=torch.float64) + 0.5) / fw, indexing="ij")
                centers = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, len(wh), 2)  # [HW, A, 2]
                boxes = torch.cat([centers, wh.expand(fh * fw, -1, -1)], -1).reshape(-1, 4)
                per_map.append(boxes)
            anchors = torch.cat(per_map).float()
            if self.clip:
                anchors = anchors.clamp(0.0, 1.0)
            self._cache[key] = anchors
        return self._cache[key]
