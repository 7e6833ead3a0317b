"""The detector objective, one for plain training and for every distillation plan: SSD's multibox loss on
targets matched and encoded against the anchors (Liu et al. 2016, eq. 1), or, for RefineDet's packed heads (a
:class:`~distill.models.refinedet.TwoStepBoxCoder`), eq. 1 of Zhang et al. 2018 (losses/refinedet.py).
"""
from __future__ import annotations

import torch

from ..models.matcher import Matcher
from ..models.refinedet import TwoStepBoxCoder
from .multibox import AnchorTargets, MultiBoxLoss, encode_targets
from .refinedet import RefineDetLoss


class DetectionLoss(torch.nn.Module):
    """``with_targets(loc, conf, targets, anchors, box_coder) -> (anchor targets, terms)``: the anchor targets
    [B,N] that logit-level distillation masks with (RefineDet: the ODM's, on the refined anchors) and the named,
    normalised terms: {"loc", "cls"} for SSD, {"arm_loc", "arm_cls", "odm_loc", "odm_cls"} for RefineDet.
    :func:`loc_cls` folds either into {"loc", "cls"}."""

    def __init__(self, neg_pos_ratio: float = 3.0, match_iou: float = 0.5):
        super().__init__()
        self.matcher = Matcher(match_iou)
        self.mbox = MultiBoxLoss(neg_pos_ratio)
        self.two_step = RefineDetLoss(neg_pos_ratio)

    def with_targets(self, loc: torch.Tensor, conf: torch.Tensor, targets: list[dict], anchors: torch.Tensor,
                     box_coder) -> tuple[AnchorTargets, dict[str, torch.Tensor]]:
        if isinstance(box_coder, TwoStepBoxCoder):
            return self.two_step.with_targets(loc, conf, targets, anchors, box_coder, self.matcher)
        at = encode_targets(targets, anchors, box_coder, self.matcher)
        return at, self.mbox(loc, conf, at)

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, targets: list[dict], anchors: torch.Tensor,
                box_coder) -> dict[str, torch.Tensor]:
        return self.with_targets(loc, conf, targets, anchors, box_coder)[1]


def loc_cls(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Named detection terms -> {"loc": the sum of the box terms, "cls": the sum of the class terms}."""
    return {"loc": sum(v for k, v in terms.items() if k.endswith("loc")),
            "cls": sum(v for k, v in terms.items() if k.endswith("cls"))}
