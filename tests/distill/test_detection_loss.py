"""The one detector objective (distill/losses/detection.py): plain training and the distillation plans get the
same terms from it, for SSD's heads and RefineDet's packed ones."""
from __future__ import annotations

import pytest
import torch

from distill.losses import DetectionLoss, MultiBoxLoss, encode_targets, loc_cls
from distill.losses.refinedet import RefineDetLoss
from distill.models import Matcher, create_model

TARGETS = [{"boxes": torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.6, 0.2, 0.9, 0.5]]), "labels": torch.tensor([1, 2])},
           {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


@pytest.mark.parametrize("name", ["ssdlite_mobilenetv2", "refinedet_mobilenetv2"])
def test_the_objective_is_the_detector_s_own_loss(name):
    torch.manual_seed(0)
    model = create_model(name, 2).eval()
    anchors = model.anchors(128)
    with torch.no_grad():
        loc, conf = model(torch.rand(2, 3, 128, 128))
    at, terms = DetectionLoss(3.0, 0.5).with_targets(loc, conf, TARGETS, anchors, model.box_coder)
    if name.startswith("refinedet"):
        ref_at, ref = RefineDetLoss(3.0).with_targets(loc, conf, TARGETS, anchors, model.box_coder, Matcher(0.5))
        assert set(terms) == {"arm_loc", "arm_cls", "odm_loc", "odm_cls"}
        folded = loc_cls(terms)
        assert torch.equal(folded["loc"], ref["arm_loc"] + ref["odm_loc"])
        assert torch.equal(folded["cls"], ref["arm_cls"] + ref["odm_cls"])
    else:
        ref_at = encode_targets(TARGETS, anchors, model.box_coder, Matcher(0.5))
        ref = MultiBoxLoss(3.0)(loc, conf, ref_at)
        assert set(terms) == {"loc", "cls"} and loc_cls(terms).keys() == terms.keys()
    assert all(torch.equal(terms[k], ref[k]) for k in ref)
    assert torch.equal(at.labels, ref_at.labels)
    assert (at.labels[0] > 0).any() and not (at.labels[1] > 0).any()       # image 1 has no boxes


def test_the_box_coder_says_how_its_heads_read():
    ssd, rd = create_model("ssdlite_mobilenetv2", 2), create_model("refinedet_mobilenetv2", 2)
    conf = torch.randn(1, 5, 2 + 1 + 2)
    assert torch.equal(rd.box_coder.class_logits(conf), conf[..., :3])
    assert torch.equal(ssd.box_coder.class_logits(conf[..., :3]), conf[..., :3])
