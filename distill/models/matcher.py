"""SSD matching strategy (Liu et al. 2016, sec. 2.2 "Matching strategy").

Every ground truth first takes its best-overlapping anchor (so no object goes unmatched), then every
anchor whose best IoU with any ground truth is >= ``iou_threshold`` is matched to that ground truth.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_iou

from .box_coder import cxcywh_to_xyxy

BACKGROUND = -1


class Matcher:
    def __init__(self, iou_threshold: float = 0.5):
        self.iou_threshold = float(iou_threshold)

    def __call__(self, gt_xyxy: torch.Tensor, anchors_cxcywh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gt_xyxy [M, 4], anchors [N, 4] (both normalised).

        Returns (matched_idx int64 [N], best_iou float [N]); matched_idx is the index of the ground
        truth an anchor is assigned to, or BACKGROUND (-1).
        """
        n = anchors_cxcywh.shape[0]
        if gt_xyxy.numel() == 0:
            return (torch.full((n,), BACKGROUND, dtype=torch.long, device=anchors_cxcywh.device),
                    torch.zeros(n, device=anchors_cxcywh.device))
        iou = box_iou(gt_xyxy, cxcywh_to_xyxy(anchors_cxcywh))         # [M, N]
        best_iou, matched = iou.max(dim=0)                              # per anchor
        matched = torch.where(best_iou >= self.iou_threshold, matched, torch.full_like(matched, BACKGROUND))
        # Force-match each ground truth to its best anchor. In order, so that when two ground truths
        # share a best anchor the later one wins deterministically (index assignment with duplicate
        # indices has no defined winner).
        best_anchor = iou.argmax(dim=1).tolist()                        # [M]
        best_iou = best_iou.clone()
        for g, a in enumerate(best_anchor):
            matched[a] = g
            best_iou[a] = iou[g, a]
        return matched, best_iou
