"""RefineDet loss (Zhang et al. 2018, eq. 1): the ARM's and the ODM's multibox losses.

* ARM: binary (object vs background) cross-entropy + smooth-L1 on the tiled anchors, hard negative mining
  ``neg_pos_ratio``:1, normalised by the ARM's positive count.
* ODM: softmax cross-entropy + smooth-L1 on the REFINED anchors (the ARM's decoded boxes, no gradient through
  them: two-step cascaded regression), matched and encoded per image; anchors whose ARM background probability
  is > theta (negative anchor filtering) take no part, neither as positives nor as mined negatives; hard
  negative mining ``neg_pos_ratio``:1, normalised by the ODM's positive count.

Zero positives give zero terms (eq. 1: N_arm = 0 or N_odm = 0 sets them to 0). Matching, encoding and the
mined multibox loss are the SSD ones (losses/multibox.py), applied twice.
"""
from __future__ import annotations

import torch

from ..models.matcher import Matcher
from ..models.refinedet import TwoStepBoxCoder
from .multibox import IGNORE, AnchorTargets, MultiBoxLoss, encode_targets


def arm_targets(t: AnchorTargets) -> AnchorTargets:
    """Multi-class anchor targets -> the ARM's binary ones (labels 1 for any object, 0 background, IGNORE kept)."""
    return AnchorTargets(t.loc, torch.where(t.labels > 0, torch.ones_like(t.labels), t.labels))


def odm_targets(targets: list[dict], refined: torch.Tensor, keep: torch.Tensor, box_coder: TwoStepBoxCoder,
                matcher: Matcher) -> AnchorTargets:
    """Per image, match and encode ``targets`` (as :func:`encode_targets`) against its refined anchors
    ``refined`` [B,N,4] normalised cxcywh, among those kept by negative anchor filtering (``keep`` bool [B,N]);
    filtered anchors are IGNORE. Returns loc [B,N,4], labels [B,N]."""
    b, n = keep.shape
    loc = refined.new_zeros(b, n, 4)
    labels = torch.full((b, n), IGNORE, dtype=torch.long, device=refined.device)
    for i, t in enumerate(targets):
        kept = keep[i]
        if not kept.any():
            continue
        enc = encode_targets([t], refined[i][kept], box_coder, matcher)
        loc[i, kept] = enc.loc[0]
        labels[i, kept] = enc.labels[0]
    return AnchorTargets(loc, labels)


class RefineDetLoss(torch.nn.Module):
    """Eq. 1. ``forward(loc, conf, targets, anchors, box_coder, matcher)`` with the packed heads of
    :class:`~distill.models.refinedet.RefineDet` (loc [B,N,8], conf [B,N,C+3]), targets as
    :func:`encode_targets` takes them (normalised xyxy, labels 1..C) and the tiled anchors [N,4] cxcywh.
    Returns {"arm_loc", "arm_cls", "odm_loc", "odm_cls"}, each already normalised."""

    def __init__(self, neg_pos_ratio: float = 3.0, loc_weight: float = 1.0):
        super().__init__()
        self.mbox = MultiBoxLoss(neg_pos_ratio, loc_weight)

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, targets: list[dict], anchors: torch.Tensor,
                box_coder: TwoStepBoxCoder, matcher: Matcher) -> dict[str, torch.Tensor]:
        return self.with_targets(loc, conf, targets, anchors, box_coder, matcher)[1]

    def with_targets(self, loc: torch.Tensor, conf: torch.Tensor, targets: list[dict], anchors: torch.Tensor,
                     box_coder: TwoStepBoxCoder, matcher: Matcher) -> tuple[AnchorTargets, dict[str, torch.Tensor]]:
        """(the ODM's anchor targets [B,N]: what logit-level distillation masks with, the four terms)."""
        h = box_coder.split(loc, conf)
        if box_coder.arm:
            arm = self.mbox(h.arm_loc, h.arm_conf, arm_targets(encode_targets(targets, anchors, box_coder, matcher)))
        else:                                # no ARM (Table 2's "no TCB" model): its terms are zero
            arm = {"loc": loc.new_zeros(()), "cls": loc.new_zeros(())}
        with torch.no_grad():
            refined = box_coder.refine(h.arm_loc.detach().float(), anchors)
            keep = box_coder.keep_mask(h.arm_conf.detach())
        odm_t = odm_targets(targets, refined, keep, box_coder, matcher)
        odm = self.mbox(h.odm_loc, h.odm_conf, odm_t)
        return odm_t, {"arm_loc": arm["loc"], "arm_cls": arm["cls"], "odm_loc": odm["loc"], "odm_cls": odm["cls"]}
