"""SSD multibox loss (Liu et al. 2016, eq. 1): smooth-L1 localisation on positives plus softmax
cross-entropy with hard negative mining at ``neg_pos_ratio``:1, both normalised by the number of
positives.

Targets are encoded once per batch by :func:`encode_targets` so that distillation losses can reuse
the same positives / ignore mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from ..models.box_coder import BoxCoder, cxcywh_to_xyxy
from ..models.matcher import BACKGROUND, Matcher

IGNORE = -1   # anchor label excluded from both positives and mined negatives


@dataclass
class AnchorTargets:
    loc: torch.Tensor      # float32 [B, N, 4] encoded regression targets (valid where labels > 0)
    labels: torch.Tensor   # int64 [B, N]: 0 background, 1..C object, IGNORE (-1) excluded


def encode_targets(targets: list[dict], anchors: torch.Tensor, box_coder: BoxCoder, matcher: Matcher) -> AnchorTargets:
    """targets[i]: {"boxes": float [M,4] normalised xyxy, "labels": int64 [M] 1..C, "ignore": bool [M] (optional)}.
    anchors: [N, 4] normalised cxcywh.

    Ignored ground truths (crowd / difficult) take no part in matching; anchors overlapping one of them
    at IoU >= the matcher threshold are marked IGNORE so they are not mined as negatives either.
    """
    locs, labels = [], []
    anchors_xyxy = cxcywh_to_xyxy(anchors)
    for t in targets:
        boxes, lab = t["boxes"].to(anchors), t["labels"].to(anchors.device)
        ignore = t.get("ignore")
        ignore = torch.zeros_like(lab, dtype=torch.bool) if ignore is None else ignore.to(anchors.device).bool()
        keep = ~ignore
        gt, gl = boxes[keep], lab[keep]
        matched, _ = matcher(gt, anchors)
        lab_a = torch.zeros(anchors.shape[0], dtype=torch.long, device=anchors.device)
        pos = matched != BACKGROUND
        lab_a[pos] = gl[matched[pos]]
        loc_a = torch.zeros_like(anchors)
        if pos.any():
            loc_a[pos] = box_coder.encode(gt[matched[pos]], anchors[pos])
        if ignore.any():
            near_ignored = box_iou(boxes[ignore], anchors_xyxy).max(0).values >= matcher.iou_threshold
            lab_a[near_ignored & ~pos] = IGNORE
        locs.append(loc_a)
        labels.append(lab_a)
    return AnchorTargets(torch.stack(locs), torch.stack(labels))


class MultiBoxLoss(torch.nn.Module):
    def __init__(self, neg_pos_ratio: float = 3.0, loc_weight: float = 1.0):
        super().__init__()
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.loc_weight = float(loc_weight)

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, t: AnchorTargets) -> dict[str, torch.Tensor]:
        """loc [B,N,4], conf [B,N,C+1] logits, t: encoded targets. Returns {"loc", "cls"} (already normalised)."""
        loc, conf = loc.float(), conf.float()
        pos = t.labels > 0                                            # [B, N]
        num_pos = pos.sum().clamp_min(1).float()
        loc_loss = F.smooth_l1_loss(loc[pos], t.loc[pos], reduction="sum", beta=1.0)
        ce = F.cross_entropy(conf.flatten(0, 1), t.labels.clamp_min(0).flatten(), reduction="none").view_as(t.labels)
        # Hard negative mining: per image, the highest-loss background anchors, neg_pos_ratio per positive.
        neg_loss = ce.detach().clone()
        neg_loss[t.labels != 0] = -float("inf")                       # positives and ignored never mined
        num_neg = (pos.sum(1, keepdim=True) * self.neg_pos_ratio).long()
        rank = neg_loss.argsort(1, descending=True).argsort(1)
        neg = (rank < num_neg) & (t.labels == 0)
        cls_loss = ce[pos | neg].sum()
        return {"loc": self.loc_weight * loc_loss / num_pos, "cls": cls_loss / num_pos}
