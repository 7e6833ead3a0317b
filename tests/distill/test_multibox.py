import math

import torch
import torch.nn.functional as F

from distill.losses import IGNORE, MultiBoxLoss, encode_targets
from distill.models.box_coder import BoxCoder, xyxy_to_cxcywh
from distill.models.matcher import Matcher

ANCHORS = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0],
                                       [0.5, 0.0, 1.0, 0.5], [0.25, 0.25, 0.75, 0.75]]))


def test_encode_targets_and_ignore():
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]), "labels": torch.tensor([2, 1]),
                "ignore": torch.tensor([False, True])}]
    t = encode_targets(targets, ANCHORS, BoxCoder(), Matcher(0.5))
    assert t.labels.tolist() == [[2, IGNORE, 0, 0, 0]]
    torch.testing.assert_close(t.loc[0, 0], torch.zeros(4))


def test_loss_by_hand():
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5]]), "labels": torch.tensor([1])}]
    t = encode_targets(targets, ANCHORS, BoxCoder(), Matcher(0.5))
    loc = torch.zeros(1, 5, 4)
    loc[0, 0] = torch.tensor([0.5, -2.0, 0.0, 0.0])          # smooth-L1: 0.125 + 1.5
    conf = torch.zeros(1, 5, 3)
    conf[0, :, 1] = torch.tensor([0.0, 3.0, 2.0, 1.0, -1.0])  # negatives ranked a1 > a2 > a3 > a4
    out = MultiBoxLoss(neg_pos_ratio=2)(loc, conf, t)
    assert math.isclose(out["loc"].item(), 1.625, rel_tol=1e-6)
    ce = F.cross_entropy(conf[0], torch.tensor([1, 0, 0, 0, 0]), reduction="none")
    # one positive (a0) + the two hardest negatives (a1, a2), divided by one positive
    assert math.isclose(out["cls"].item(), (ce[0] + ce[1] + ce[2]).item(), rel_tol=1e-6)


def test_no_positive_image_contributes_nothing():
    t = encode_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], ANCHORS,
                       BoxCoder(), Matcher())
    out = MultiBoxLoss()(torch.randn(1, 5, 4), torch.randn(1, 5, 3), t)
    assert out["loc"].item() == 0 and out["cls"].item() == 0
