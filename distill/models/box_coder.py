"""SSD box encoding with variances (Liu et al. 2016, eq. 2; variances as in the reference Caffe code).

    t_x = (g_cx - a_cx) / (v_xy * a_w)      t_w = log(g_w / a_w) / v_wh
All tensors are normalised to [0, 1] of the network input.
"""
from __future__ import annotations

import math

import torch

DEFAULT_VARIANCES = (0.1, 0.1, 0.2, 0.2)
# exp() overflow guard for predicted log-sizes, as in torchvision's BoxCoder.
_WH_CLAMP = math.log(1000.0 / 16)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    """[..., 4] xyxy -> [..., 4] cxcywh."""
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """[..., 4] cxcywh -> [..., 4] xyxy."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


class BoxCoder:
    def __init__(self, variances=DEFAULT_VARIANCES):
        if len(variances) != 4 or any(v <= 0 for v in variances):
            raise ValueError(f"variances must be 4 positive numbers, got {variances}")
        self.variances = tuple(float(v) for v in variances)

    def encode(self, gt_xyxy: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """gt_xyxy [..., N, 4], anchors [N, 4] cxcywh -> regression targets [..., N, 4]."""
        g = xyxy_to_cxcywh(gt_xyxy)
        v = g.new_tensor(self.variances)
        a = anchors.to(g)
        txy = (g[..., :2] - a[:, :2]) / (a[:, 2:] * v[:2])
        twh = torch.log(g[..., 2:].clamp_min(1e-8) / a[:, 2:]) / v[2:]
        return torch.cat([txy, twh], -1)

    def decode(self, loc: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """loc [..., N, 4] regression outputs, anchors [N, 4] cxcywh -> boxes [..., N, 4] xyxy (normalised)."""
        v = loc.new_tensor(self.variances)
        a = anchors.to(loc)
        cxcy = a[:, :2] + loc[..., :2] * v[:2] * a[:, 2:]
        wh = a[:, 2:] * torch.exp((loc[..., 2:] * v[2:]).clamp(max=_WH_CLAMP))
        return torch.cat([cxcy - wh / 2, cxcy + wh / 2], -1)

    # The detector-head interface every box coder offers, so that losses, distillation and post-processing never
    # ask which detector they hold (RefineDet's TwoStepBoxCoder overrides both for its packed ARM + ODM heads).
    @staticmethod
    def class_logits(conf: torch.Tensor) -> torch.Tensor:
        """The head's class logits [B,N,C+1] (column 0 = background): SSD's conf as it is."""
        return conf

    def decode_heads(self, loc: torch.Tensor, conf: torch.Tensor,
                     anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw heads + anchors [N,4] cxcywh -> (boxes [B,N,4] normalised xyxy, scores [B,N,C+1] softmax)."""
        return self.decode(loc, anchors), conf.float().softmax(-1)
