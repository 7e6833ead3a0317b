"""The fast NMS of raw-output graphs gives exactly the numpy reference's (EfficientNMS_TRT) outputs."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.nms_fast import efficient_nms_fast
from runtime.detector import nms_of_raw
from runtime.metadata import NMSConfig
from runtime.nms_reference import efficient_nms


def _case(seed, b=2, n=300, c=4, ties=False, flipped=False):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 0.8, (b, n, 2)).astype(np.float32)
    wh = rng.uniform(0.01, 0.3, (b, n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], -1)
    if flipped:
        boxes[:, ::7] = boxes[:, ::7][..., [2, 3, 0, 1]]
    boxes[:, :20] = boxes[:, :1]  # exact duplicates
    scores = rng.uniform(0, 1, (b, n, c)).astype(np.float32) ** 3
    if ties:
        scores = np.round(scores * 8) / 8
    return boxes, scores


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("agnostic", [False, True])
def test_fast_nms_is_bit_identical_to_the_reference(seed, agnostic):
    boxes, scores = _case(seed, c=[4, 20, 1][seed % 3], ties=seed % 2 == 0, flipped=seed % 3 == 0)
    kw = dict(score_threshold=[0.01, 0.05, 0.3][seed % 3], iou_threshold=[0.45, 0.5, 0.7][seed % 3],
              max_output_boxes=[100, 7, 300][seed % 3], pre_nms_top_k=[4096, 50, 400][seed % 3],
              class_agnostic=agnostic)
    ref = efficient_nms(boxes, scores, **kw)
    got = efficient_nms_fast(boxes, scores, **kw)
    for r, g in zip(ref, got):
        assert r.dtype == g.dtype and r.shape == g.shape
        np.testing.assert_array_equal(r, g)


def test_raw_postprocess_can_run_the_reference_itself():
    boxes, scores = _case(9, c=5)
    nms = NMSConfig(score_threshold=0.05, iou_threshold=0.5, max_detections=50)
    a = nms_of_raw(boxes, scores, nms)
    b = nms_of_raw(boxes, scores, nms, exact_reference=True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert b[3].max() <= 3  # classes are 0-based object classes (background column dropped)


def test_no_candidates_and_bad_shapes():
    boxes, scores = _case(1)
    num, bx, sc, cl = efficient_nms_fast(boxes, scores * 0, score_threshold=0.5, iou_threshold=0.5,
                                         max_output_boxes=10)
    assert num.tolist() == [[0], [0]] and not bx.any() and sc.shape == (2, 10)
    with pytest.raises(ValueError, match="boxes must be"):
        efficient_nms_fast(boxes[:, :5], scores, score_threshold=0.5, iou_threshold=0.5, max_output_boxes=10)
