"""runtime.matching.match_exact: element-wise agreement of fixed-K NMS outputs, with hand-made outputs."""
from __future__ import annotations

import numpy as np

from runtime.matching import match_exact


def _outputs(rows: list[list[tuple[int, float, list[float]]]], k: int = 4):
    """Per image a list of (class, score, box) -> num [B,1] int32, boxes [B,K,4], scores [B,K], classes int32 [B,K]."""
    b = len(rows)
    num, boxes = np.zeros((b, 1), np.int32), np.zeros((b, k, 4), np.float32)
    scores, classes = np.zeros((b, k), np.float32), np.zeros((b, k), np.int32)
    for i, dets in enumerate(rows):
        num[i, 0] = len(dets)
        for j, (c, s, box) in enumerate(dets):
            classes[i, j], scores[i, j], boxes[i, j] = c, s, box
    return num, boxes, scores, classes


A = (0, 0.9, [0.1, 0.1, 0.5, 0.5])
B = (1, 0.7, [0.2, 0.2, 0.6, 0.6])
C = (1, 0.7, [0.3, 0.3, 0.9, 0.9])   # same class and score as B


def test_identical_and_reordered_ties_match():
    ref = _outputs([[A, B, C], []])
    m = match_exact(ref, ref)
    assert m["match"] and m["why"] == "" and m["num_got"] == [3, 0] and m["max_box_diff"] == 0.0
    assert match_exact(_outputs([[A, C, B], []]), ref)["match"]  # equal scores may come in either order


def test_small_differences_within_tolerance():
    got = _outputs([[(0, 0.90005, [0.10005, 0.1, 0.5, 0.5]), B]])
    m = match_exact(got, _outputs([[A, B]]))
    assert m["match"] and 0 < m["max_box_diff"] <= 1e-4 and 0 < m["max_score_diff"] <= 1e-4


def test_each_kind_of_disagreement_is_named():
    ref = _outputs([[A, B]])
    assert match_exact(_outputs([[A]]), ref)["why"] == "image 0: 1 detections vs 2"
    moved = _outputs([[A, (1, 0.7, [0.2, 0.2, 0.6, 0.7])]])
    m = match_exact(moved, ref)
    assert not m["match"] and "differs by" in m["why"]
    assert "no detection of class 1" in match_exact(_outputs([[A, (2, 0.7, B[2])]]), ref)["why"]
    assert "descending" in match_exact(_outputs([[B, A]]), _outputs([[B, A]]))["why"]
    dirty = _outputs([[A, B]])
    dirty[1][0, 3] = 0.5
    assert "padding rows" in match_exact(dirty, ref)["why"]
    wide = tuple(a.astype(np.int64) if a.dtype == np.int32 else a for a in ref)
    assert "int32" in match_exact(wide, ref)["why"]
    assert "shapes differ" in match_exact(_outputs([[A, B]], k=5), ref)["why"]


def test_tied_anchor_boxes_are_accepted_with_raw_outputs():
    """Two anchors with exactly the same score: which one survives NMS is the sort's tie order."""
    ref = _outputs([[A]])
    other = [0.6, 0.6, 0.9, 0.9]
    got = _outputs([[(0, 0.9, other)]])
    assert not match_exact(got, ref)["match"]
    raw_boxes = np.array([[A[2], other, [0, 0, 1, 1]]], np.float32)              # [1, N=3, 4]
    raw_scores = np.array([[[0.1, 0.9, 0.0], [0.1, 0.9, 0.0], [0.9, 0.05, 0.05]]], np.float32)  # [1, 3, C+1=3]
    m = match_exact(got, ref, raw=(raw_boxes, raw_scores))
    assert m["match"] and m["tie_swaps"] == 1


def test_full_k_rows_tied_with_the_last_score_compare_by_count():
    d = lambda c, x: (c, 0.5, [x, x, x + 0.1, x + 0.1])  # noqa: E731
    ref = _outputs([[A, d(0, 0.1), d(1, 0.2), d(2, 0.3)]])
    got = _outputs([[A, d(2, 0.7), d(0, 0.8), d(1, 0.6)]])        # other tied pairs made the cut
    assert match_exact(got, ref)["match"]
    assert "tied with the last score" in match_exact(_outputs([[A, B, d(1, 0.2), d(2, 0.3)]]), ref)["why"]


def test_a_group_of_near_equal_scores_at_the_cut_is_not_split_by_float_noise():
    """Two backends' scores of a saturated group differ by ~1e-7 (ONNX vs PyTorch); counting each side's rows
    within the tie tolerance of the cut would split the group differently (52 vs 53 rows seen on a 512x640 model)."""
    s = 0.1126224
    D = (1, s, [0.3, 0.3, 0.9, 0.9])
    E = (1, s, [0.4, 0.4, 0.8, 0.8])
    ref = _outputs([[A, B, D, E]])                                    # full top-4, cut group {D, E} (raw: not given)
    noisy = _outputs([[A, B, (1, s + 2e-6, D[2]), (1, s, E[2])]])    # D's score beyond the 1e-6 tie tolerance
    assert match_exact(noisy, ref)["match"]
    far = _outputs([[A, B, D, (1, s - 1e-3, E[2])]])                  # a last row clearly below the cut: not the group
    m = match_exact(far, ref)
    assert not m["match"] and "rows tied with the last score" in m["why"]
