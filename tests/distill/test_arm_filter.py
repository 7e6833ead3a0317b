"""distill.arm_filter: what negative anchor filtering removes, counted on a hand-made image, and the CLI's
refusal of a model without an ARM."""
from __future__ import annotations

import pytest
import torch

from distill.arm_filter import FilterCounts, main, thetas_value
from distill.models import Matcher, create_model


def _counts(thetas):
    anchors = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.1, 0.9, 0.1, 0.1]])
    # the ARM keeps anchor 0 on box 0, moves anchor 1 off box 1 and anchor 2 (a negative) onto box 1
    refined = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.5, 0.1, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2], [0.1, 0.9, 0.1, 0.1]])
    boxes = torch.tensor([[0.15, 0.15, 0.35, 0.35], [0.65, 0.65, 0.85, 0.85]])
    p_bg = torch.tensor([0.5, 0.995, 0.999, 0.9999])
    c = FilterCounts(thetas)
    c.add(p_bg, anchors, refined, boxes, Matcher(0.5))
    return c.shares()


def test_shares_match_a_hand_counted_image():
    s = _counts([0.99, 0.9995, 1.0])
    assert s["counts"] == {"anchors": 4, "arm_positives": 2, "odm_positives": 2, "boxes_lost": 2}
    # 0.99: anchors 1, 2, 3 go; of the ARM positives (0, 1) anchor 1; of the ODM positives (0, 2) anchor 2, box 1's only one
    assert s["0.99"] == {"anchors": 75.0, "arm_positives": 50.0, "odm_positives": 50.0, "boxes_lost": 50.0}
    assert s["0.9995"] == {"anchors": 25.0, "arm_positives": 0.0, "odm_positives": 0.0, "boxes_lost": 0.0}
    assert s["1"] == {"anchors": 0.0, "arm_positives": 0.0, "odm_positives": 0.0, "boxes_lost": 0.0}


def test_an_image_without_boxes_counts_anchors_only():
    c = FilterCounts([0.5])
    c.add(torch.tensor([0.9, 0.1]), torch.rand(2, 4) * 0.5 + 0.25, torch.rand(2, 4) * 0.5 + 0.25,
          torch.zeros(0, 4), Matcher(0.5))
    s = c.shares()
    assert s["0.5"]["anchors"] == 50.0 and s["0.5"]["boxes_lost"] is None and s["counts"]["boxes_lost"] == 0


@pytest.mark.parametrize("text", ["", "0.9,x", "1.5", "-0.1"])
def test_bad_thresholds_are_refused(text):
    with pytest.raises(ValueError, match="--thetas"):
        thetas_value(text)


def test_a_model_without_an_arm_is_refused_in_one_line(tmp_path, capsys):
    from distill.checkpoint import Checkpoint
    from distill.config import TrainConfig
    from distill.data.shapes import CLASS_NAMES
    kwargs = {"width_mult": 0.25}
    for name, extra in (("ssdlite_mobilenetv2", {}), ("refinedet_mobilenetv2", {"tcb": False, "arm": False,
                                                                                  "two_step": False, "theta": 1.0})):
        m = create_model(name, len(CLASS_NAMES), **kwargs, **extra).eval()
        cfg = TrainConfig.from_dict({"model": name, "model_kwargs": {**kwargs, **extra}, "img_size": 64})
        path = tmp_path / f"{name}.pt"
        Checkpoint.create(cfg, m, list(CLASS_NAMES), list(range(1, len(CLASS_NAMES) + 1)), best_map=0.0).save(path)
        assert main(["--checkpoint", str(path), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and "expected a RefineDet with its ARM" in err[0]
    assert not (tmp_path / "o").exists()
