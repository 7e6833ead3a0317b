import torch

from distill.models.box_coder import xyxy_to_cxcywh
from distill.models.matcher import BACKGROUND, Matcher


def _anchors(xyxy):
    return xyxy_to_cxcywh(torch.tensor(xyxy, dtype=torch.float32))


def test_threshold_and_forced_best():
    anchors = _anchors([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0], [0.05, 0.0, 0.55, 0.5]])
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5],     # IoU 1 with a0, ~0.82 with a3
                       [0.6, 0.6, 0.7, 0.7]])    # IoU 0.04 with a1 only: forced match
    matched, iou = Matcher(0.5)(gt, anchors)
    assert matched.tolist() == [0, 1, BACKGROUND, 0]
    assert abs(iou[1].item() - 0.04) < 1e-6


def test_no_ground_truth():
    matched, _ = Matcher()(torch.zeros(0, 4), _anchors([[0, 0, 1, 1]]))
    assert matched.tolist() == [BACKGROUND]


def test_shared_best_anchor_goes_to_later_gt():
    anchors = _anchors([[0.0, 0.0, 1.0, 1.0], [0.9, 0.9, 1.0, 1.0]])
    gt = torch.tensor([[0.0, 0.0, 0.9, 0.9], [0.0, 0.0, 0.95, 0.95]])
    matched, _ = Matcher(0.5)(gt, anchors)
    assert matched[0].item() == 1
