"""Tie-aware verification: detections tied at the top-K cut may be any of the tied candidates (PyTorch's
NMS order among equal scores is unspecified); the rows above them are compared one to one, the tied group
as a set, and the result says how many were compared. Synthetic detections, no model."""
from __future__ import annotations

import numpy as np

from export.verify import _check_nms, _new_row
from runtime.matching import LEFT_OUT, match_by_iou, match_exact
from runtime.metadata import NMSConfig
from runtime.parity import EvalResult, agreement, compare_results, format_rows

K = 6
TIE = 0.25


def _box(k: int) -> list[float]:
    """Disjoint boxes, one per anchor k (normalised xyxy)."""
    x = 0.1 * (k % 8)
    y = 0.1 * (k // 8)
    return [x, y, x + 0.05, y + 0.05]


def _raw() -> tuple[np.ndarray, np.ndarray]:
    """Reference raw outputs of one image: 12 anchors, 2 classes; anchors 0-2 score 0.9, 0.8, 0.7 (class 0),
    anchors 3-10 all exactly TIE (class 1), anchor 11 nothing. boxes [1, 12, 4], scores [1, 12, 3]."""
    boxes = np.array([[_box(k) for k in range(12)]], np.float32)
    scores = np.zeros((1, 12, 3), np.float32)
    scores[0, :, 0] = 1.0
    for k, s in enumerate((0.9, 0.8, 0.7)):
        scores[0, k] = (1 - s, s, 0)
    scores[0, 3:11] = (1 - TIE, 0, TIE)
    return boxes, scores


def _nms(rows: list[tuple[int, float, int]], k: int = K):
    """(class, score, anchor) rows of one image -> the four NMS outputs, fixed K, zero padding."""
    num = np.array([[len(rows)]], np.int32)
    boxes, scores, classes = np.zeros((1, k, 4), np.float32), np.zeros((1, k), np.float32), np.zeros((1, k), np.int32)
    for j, (c, s, a) in enumerate(rows):
        boxes[0, j], scores[0, j], classes[0, j] = _box(a), s, c
    return num, boxes, scores, classes


ABOVE = [(0, 0.9, 0), (0, 0.8, 1), (0, 0.7, 2)]


def test_tied_rows_at_the_cut_in_any_order_and_choice_pass_and_are_counted():
    ref = _nms(ABOVE + [(1, TIE, 3), (1, TIE, 4), (1, TIE, 5)])
    for tail in ([5, 4, 3], [9, 3, 7], [10, 8, 6]):                 # other tied anchors fill the last rows
        got = _nms(ABOVE + [(1, TIE, a) for a in tail])
        m = match_exact(got, ref, raw=_raw())
        assert m["match"], m["why"]
        assert (m["compared"], m["detections"], m["tied_at_cut"]) == (3, 6, 3)
        assert m["summary"] == "compared 3 of 6 detections: 3 tied at score 0.25 at the top-K cut, compared as a set"
    got = _nms([ABOVE[1], ABOVE[0], ABOVE[2]] + [(1, TIE, 8), (1, TIE, 3), (1, TIE, 4)])
    assert not match_exact(got, ref, raw=_raw())["match"]             # the rows above must still be in order


def test_a_real_difference_above_the_ties_still_fails():
    ref = _nms(ABOVE + [(1, TIE, 3), (1, TIE, 4), (1, TIE, 5)])
    moved = _nms([(0, 0.9, 0), (0, 0.8, 11), (0, 0.7, 2), (1, TIE, 3), (1, TIE, 4), (1, TIE, 5)])
    m = match_exact(moved, ref, raw=_raw())
    assert not m["match"] and "box of class 0 (score 0.800000) differs" in m["why"]
    other_class = _nms([(0, 0.9, 0), (1, 0.8, 1), (0, 0.7, 2), (1, TIE, 3), (1, TIE, 4), (1, TIE, 5)])
    assert "no detection of class 0 with score 0.800000" in match_exact(other_class, ref, raw=_raw())["why"]
    fewer_tied = _nms(ABOVE + [(1, TIE, 3), (1, TIE, 4), (0, 0.2, 11)])
    assert "2 vs 3 rows tied with the last score" in match_exact(fewer_tied, ref, raw=_raw())["why"]
    not_a_tied_candidate = _nms(ABOVE + [(1, TIE, 3), (1, TIE, 4), (1, TIE, 11)])   # anchor 11 never scored TIE
    m = match_exact(not_a_tied_candidate, ref, raw=_raw())
    assert not m["match"] and "none of the tied candidates" in m["why"]


def test_an_untied_last_row_is_compared_one_to_one():
    """The raw scores show the K-th score held by one candidate only: nothing straddles the cut."""
    boxes, scores = _raw()
    scores[0, 4:11] = (1.0, 0, 0)                                     # only anchor 3 keeps TIE
    ref = _nms(ABOVE + [(1, TIE, 3)], k=4)
    m = match_exact(ref, ref, raw=(boxes, scores))
    assert m["match"] and (m["compared"], m["tied_at_cut"]) == (4, 0) and m["summary"] == "compared 4 of 4 detections"
    assert not match_exact(_nms(ABOVE + [(1, TIE, 9)], k=4), ref, raw=(boxes, scores))["match"]


def _dets(rows: list[tuple[int, float, int]]) -> dict[str, np.ndarray]:
    """(class, score, anchor) -> one image's detections in pixels of a 100 x 100 picture (labels 1..C)."""
    return {"boxes": np.array([_box(a) for _, _, a in rows], np.float32).reshape(-1, 4) * 100,
            "scores": np.array([s for _, s, _ in rows], np.float32), "labels": np.array([c + 1 for c, _, _ in rows])}


def test_parity_leaves_the_tied_group_at_the_cut_out_and_says_so():
    ref = _dets(ABOVE + [(1, TIE, 3), (1, TIE, 4), (1, TIE, 5)])
    cand = _dets(list(reversed(ABOVE)) + [(1, TIE, 9), (1, TIE, 3), (1, TIE, 7)])
    assert match_by_iou(ref, cand).tolist().count(-1) == 2             # without K: two tied rows "missed"
    m = match_by_iou(ref, cand, max_detections=K)
    assert m.tolist() == [2, 1, 0, LEFT_OUT, LEFT_OUT, LEFT_OUT]
    a = agreement([ref, ref], [cand, cand], max_detections=K)
    assert a["agreement"] == 1.0 and (a["compared"], a["reference_detections"], a["tied_at_cut"]) == (6, 12, 6)
    assert a["summary"].startswith("compared 6 of 12 detections: 6 tied at score 0.25 at the top-K cut, left out")
    assert agreement([ref], [cand], max_detections=K + 1)["tied_at_cut"] == 0   # K not full: no cut
    moved = _dets([(0, 0.9, 0), (0, 0.8, 11), (0, 0.7, 2), (1, TIE, 3), (1, TIE, 4), (1, TIE, 5)])
    assert agreement([ref], [moved], max_detections=K)["agreement"] == 2 / 3


def test_parity_verdict_and_export_note_say_how_many_were_compared():
    ref = _dets(ABOVE + [(1, TIE, 3), (1, TIE, 4), (1, TIE, 5)])
    cand = _dets(ABOVE + [(1, TIE, 9), (1, TIE, 10), (1, TIE, 8)])
    metrics = {"mAP": 10.0, "per_class": {}}
    row = compare_results(EvalResult("pytorch-cpu", "fp32", [1], [ref], metrics, max_detections=K),
                          EvalResult("onnxruntime-cpu-nms", "fp32", [1], [cand], metrics, max_detections=K))
    assert row["ok"] and row["agreement"] == 1.0
    text = format_rows({"reference": {"name": "pytorch-cpu", "mAP": 10.0, "images": 1}, "candidates": [row]})
    assert "ok (compared 3 of 6 detections: 3 tied at score 0.25 at the top-K cut, left out" in text
    old = compare_results(EvalResult("pytorch-cpu", "fp32", [1], [ref], metrics),
                          EvalResult("onnxruntime-cpu-nms", "fp32", [1], [cand], metrics))
    assert old["agreement"] == 0.5 and not old["ok"]                  # what an order-sensitive check said

    graph_row = _new_row("nms", __file__, ())
    got = _nms(ABOVE + [(1, TIE, 6), (1, TIE, 5), (1, TIE, 4)])
    _check_nms(graph_row, 1, got, _nms(ABOVE + [(1, TIE, 3), (1, TIE, 4), (1, TIE, 5)]), _raw(),
               NMSConfig(score_threshold=0.1, max_detections=K))
    assert graph_row["ok"], graph_row["batches"]
    assert "batch 1: compared 3 of 6 detections: 3 tied at score 0.25 at the top-K cut, compared as a set" \
        in graph_row["notes"]
