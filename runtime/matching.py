"""Do two sets of detections agree? Two questions, two functions, named for what they answer.

* :func:`match_exact`: are two sets of fixed-K NMS graph outputs the same detections, row for
  row within small tolerances? (an exported graph against the PyTorch postprocess, or against
  the CPU reference of the TensorRT plugin: the same arithmetic, so only rounding may differ)
* :func:`match_by_iou`: which detections of one image does another backend find again, same
  class and nearly the same box (IoU >= 0.95)? (parity across backends and precisions, where
  scores and boxes may move a little and the order of detections is not fixed)

Both are tie-aware at the top-K cut: when the K rows are full and the lowest score group is tied
(an under-trained net gives many anchors exactly the same score, and the order among equal scores
is left unspecified by PyTorch's sort and NMS), which of the tied candidates fill the last rows is
arbitrary. The detections strictly above that group are compared one to one, the group as a set
(:func:`match_exact`) or not at all (:func:`match_by_iou`), and the result says how many were
compared (:func:`compared_summary`).

Pure numpy.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from runtime.nms_reference import iou_one_to_many

# The four NMS graph outputs (runtime.outputs.NMS_OUTPUTS), in that order: num_detections int32
# [B, 1], detection_boxes float32 [B, K, 4], detection_scores float32 [B, K], detection_classes int32 [B, K].
NmsOutputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

# Tie tolerance: scores this close are one tie group. Two float32 backends' scores of a saturated model differ by
# up to ~1e-6 (a 512x640 SSD-Lite after one epoch: near-equal groups 2-7e-7 apart), so 1e-6 split groups
# differently on the two sides; 1e-5 stays 10x below the score tolerance.
EXACT_BOX_TOL, EXACT_SCORE_TOL, EXACT_TIE_TOL = 1e-4, 1e-4, 1e-5
MATCH_IOU = 0.95  # match_by_iou: a detection found again has IoU >= this with the reference's


def _fail(out: dict[str, Any], why: str) -> dict[str, Any]:
    out["match"], out["why"] = False, out["why"] or why
    return out


def _straddles(n_ref_tail: int, n_got_tail: int, raw_scores: np.ndarray | None, cut: float, tie_tol: float) -> bool:
    """Whether the lowest score group of a full top-K (``n_*_tail`` rows within ``tie_tol`` of the
    cut score) is tied across the cut: with the raw scores ([N, C+1], this image), more candidates
    than rows hold that score. Without them the candidates past the K-th row are not visible, and
    the group is assumed to straddle the cut."""
    if raw_scores is not None:
        return int(np.sum(np.abs(raw_scores[:, 1:] - cut) <= tie_tol)) > max(n_ref_tail, n_got_tail)
    return True


def _cut_group(i: int, got: NmsOutputs, ref: NmsOutputs, raw: tuple[np.ndarray, np.ndarray] | None, n: int,
               box_tol: float, tie_tol: float, out: dict[str, Any],
               score_tol: float = EXACT_SCORE_TOL) -> tuple[np.ndarray, np.ndarray]:
    """The rows of image ``i`` tied at the top-K cut, compared as a set: when the K output rows are
    full and the lowest score group straddles the cut, which of the tied (anchor, class) pairs fill
    the last rows is the sort's choice. Both sides must have as many rows at that score; with
    ``raw``, each of ``got``'s must be one of the tied candidates (its class, a tied anchor's box).
    Returns (got rows used up, reference rows left out of the one-to-one comparison)."""
    gs, rs = got[2][i, :n], ref[2][i, :n]
    none = np.zeros(n, bool), np.zeros(n, bool)
    if n != got[1].shape[1] or not n:
        return none
    cut = float(rs[n - 1])
    g_tail, r_tail = np.abs(gs - cut) <= tie_tol, np.abs(rs - cut) <= tie_tol
    raw_scores = raw[1][i] if raw is not None else None
    if not _straddles(int(r_tail.sum()), int(g_tail.sum()), raw_scores, cut, tie_tol):
        return none
    out["tied_at_cut"] += int(r_tail.sum())
    out["cut_scores"].append(cut)
    # got's group: its last rows, as many as the reference's, each within score_tol of the cut score. Counting got's
    # rows within tie_tol instead would split a group of near-equal scores (float noise of ~1e-7 between backends)
    # differently on the two sides.
    g_tail = np.zeros(n, bool)
    g_tail[n - int(r_tail.sum()):] = True
    if np.any(np.abs(gs[g_tail] - cut) > score_tol):
        _fail(out, f"image {i}: {int(np.sum(np.abs(gs - cut) <= score_tol))} vs {int(r_tail.sum())} rows tied with the "
                   f"last score {cut:.6g}")
    elif raw is not None:
        for j in np.flatnonzero(g_tail):
            cls = int(got[3][i, j])
            tied = np.abs(raw[1][i, :, cls + 1] - gs[j]) <= max(tie_tol, score_tol)
            if not np.any(np.max(np.abs(raw[0][i][tied] - got[1][i, j]), axis=1) <= box_tol):
                _fail(out, f"image {i}: row {j} (class {cls}, score {cut:.6g}) at the top-K cut is none of the "
                           f"tied candidates")
    return g_tail.copy(), r_tail


def _box_diffs(g_boxes: np.ndarray, r_box: np.ndarray, raw_boxes: np.ndarray | None, raw_scores: np.ndarray | None,
               r_score: float, box_tol: float, tie_tol: float) -> tuple[np.ndarray, bool]:
    """Max-coordinate difference of each candidate box [M, 4] to the reference box; with the
    reference's raw outputs, a box of any anchor whose score ties the reference detection's
    (exact-tie swap) counts as equal. Returns (differences [M], whether a tie swap was used)."""
    d = np.max(np.abs(g_boxes - r_box), axis=1)
    if d.min() <= box_tol or raw_boxes is None:
        return d, False
    alt = raw_boxes[np.abs(raw_scores - r_score) <= tie_tol]                                 # [T, 4]
    if not len(alt):
        return d, False
    d_alt = np.min(np.max(np.abs(g_boxes[:, None, :] - alt[None]), axis=2), axis=1)
    if d_alt.min() > box_tol:
        return d, False
    return np.where(d_alt <= box_tol, 0.0, d), True


def _match_image(i: int, got: NmsOutputs, ref: NmsOutputs, raw: tuple[np.ndarray, np.ndarray] | None,
                 box_tol: float, score_tol: float, tie_tol: float, out: dict[str, Any]) -> None:
    gn, gb, gs, gc = got
    rn, rb, rs, rc = ref
    n, m = int(gn[i, 0]), int(rn[i, 0])
    out["detections"] += m
    if n != m:
        _fail(out, f"image {i}: {n} detections vs {m}")
        return
    if np.any(np.diff(gs[i, :n]) > 1e-7):
        _fail(out, f"image {i}: scores not in descending order")
    if np.any(gb[i, n:] != 0) or np.any(gs[i, n:] != 0) or np.any(gc[i, n:] != 0):
        _fail(out, f"image {i}: padding rows are not zero")
    used, r_tail = _cut_group(i, got, ref, raw, n, box_tol, tie_tol, out, score_tol)
    for j in np.flatnonzero(~r_tail):
        out["compared"] += 1
        cls, score = int(rc[i, j]), float(rs[i, j])
        cand = np.flatnonzero(~used & (gc[i, :n] == cls) & (np.abs(gs[i, :n] - rs[i, j]) <= score_tol))
        if cand.size == 0:
            _fail(out, f"image {i}: no detection of class {cls} with score {score:.6f}")
            continue
        raw_boxes, raw_scores = (raw[0][i], raw[1][i, :, cls + 1]) if raw is not None else (None, None)
        d, swapped = _box_diffs(gb[i, cand], rb[i, j], raw_boxes, raw_scores, rs[i, j], box_tol, tie_tol)
        out["tie_swaps"] += int(swapped)
        best = cand[int(np.argmin(d))]
        used[best] = True
        out["max_box_diff"] = max(out["max_box_diff"], float(d.min()))
        out["max_score_diff"] = max(out["max_score_diff"], float(abs(gs[i, best] - rs[i, j])))
        if d.min() > box_tol:
            _fail(out, f"image {i}: box of class {cls} (score {score:.6f}) differs by {d.min():.2e}")


def compared_summary(compared: int, total: int, tied: int, cut_scores: list[float], how: str = "compared as a set"
                     ) -> str:
    """``"compared 87 of 100 detections: 13 tied at score 0.0321 at the top-K cut, compared as a set"``
    (several images: the range of their cut scores); without ties ``"compared 100 of 100 detections"``."""
    text = f"compared {compared} of {total} detections"
    if not tied:
        return text
    lo, hi = min(cut_scores), max(cut_scores)
    at = f"score {lo:.4g}" if f"{lo:.4g}" == f"{hi:.4g}" else f"scores {lo:.4g}..{hi:.4g}"
    return f"{text}: {tied} tied at {at} at the top-K cut, {how}"


def match_exact(got: NmsOutputs, ref: NmsOutputs, box_tol: float = EXACT_BOX_TOL,
                score_tol: float = EXACT_SCORE_TOL, raw: tuple[np.ndarray, np.ndarray] | None = None,
                tie_tol: float = EXACT_TIE_TOL) -> dict[str, Any]:
    """Do two sets of NMS outputs (:data:`NmsOutputs`, normalised xyxy boxes) describe the same
    detections?

    Per image: same ``num_detections``; scores non-increasing; every valid row of ``ref`` pairs
    with one valid row of ``got`` of the same class whose score and box agree within the
    tolerances (pairing is by value, so rows of exactly equal score may come in either order);
    padding rows are all zero.

    Exact ties: when several anchors have the same score for a class (saturated features of an
    untrained net do that), which of them survives NMS depends on the sort's tie order, which no
    implementation fixes (the plugin's GPU sort neither). Given ``raw`` = the reference's
    (boxes [B,N,4], scores [B,N,C+1]), a box of any anchor tied (within ``tie_tol``) with the
    reference detection is accepted too; such pairs are counted in ``tie_swaps``.

    Tie-aware at the top-K cut: when the K output rows are full and the lowest score group
    straddles the cut (with ``raw``: more candidates hold that score than rows; without: always
    assumed), the rows of that group may be any of the tied (anchor, class) pairs. Only the rows
    strictly above it are compared one to one (as sets among equal scores); the group itself is
    compared as a set: as many rows at that score on both sides and, with ``raw``, each of
    ``got``'s rows one of the tied candidates.

    Returns {"match", "max_box_diff", "max_score_diff", "tie_swaps", "num_got", "num_ref", "why",
    "compared" (reference rows compared one to one), "detections" (reference rows in all),
    "tied_at_cut" (reference rows of tied groups at the cut), "cut_scores" (their scores, one per
    image with such a group), "summary" (:func:`compared_summary`: "compared 87 of 100 detections:
    13 tied at score 0.0321 at the top-K cut, compared as a set")}.
    """
    g = tuple(np.asarray(a) for a in got)
    r = tuple(np.asarray(a) for a in ref)
    out: dict[str, Any] = {"match": True, "max_box_diff": 0.0, "max_score_diff": 0.0, "tie_swaps": 0,
                           "num_got": g[0].reshape(-1).tolist(), "num_ref": r[0].reshape(-1).tolist(), "why": "",
                           "compared": 0, "detections": 0, "tied_at_cut": 0, "cut_scores": [], "summary": ""}
    if g[1].shape != r[1].shape or g[0].shape != r[0].shape:
        return _fail(out, f"shapes differ: {g[1].shape} vs {r[1].shape}")
    if g[0].dtype != np.int32 or g[3].dtype != np.int32:
        return _fail(out, f"num_detections / detection_classes must be int32, got {g[0].dtype} / {g[3].dtype}")
    for i in range(g[0].shape[0]):
        _match_image(i, g, r, raw, box_tol, score_tol, tie_tol, out)
    out["summary"] = compared_summary(out["compared"], out["detections"], out["tied_at_cut"], out["cut_scores"])
    return out


LEFT_OUT = -2  # match_by_iou: a reference detection tied at the top-K cut, not compared one to one


def tied_at_cut(ref_scores: np.ndarray, max_detections: int | None, cand_scores: np.ndarray | None = None,
                tie_tol: float = EXACT_TIE_TOL) -> np.ndarray:
    """bool [K_ref]: the reference detections of one image in the lowest score group of a full
    top-K (``max_detections`` rows) when that group is tied -- two rows or more hold that score
    (within ``tie_tol``) on the reference or the candidate side -- so the group may straddle the
    cut and which tied candidates fill the last rows is the sort's choice. All False otherwise."""
    rs = np.asarray(ref_scores, np.float64).reshape(-1)
    out = np.zeros(len(rs), bool)
    if not max_detections or len(rs) < int(max_detections) or not len(rs):
        return out
    cut = float(rs.min())
    tail = np.abs(rs - cut) <= tie_tol
    n_cand = 0 if cand_scores is None else int(np.sum(np.abs(np.asarray(cand_scores, np.float64) - cut) <= tie_tol))
    return tail if max(int(tail.sum()), n_cand) >= 2 else out


def match_by_iou(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray],
                 iou_threshold: float = MATCH_IOU, max_detections: int | None = None) -> np.ndarray:
    """Greedy one-to-one matching of one image's detections by IoU.

    ``ref`` / ``cand``: ``boxes`` [K, 4] xyxy (same frame for both, e.g. original pixels),
    ``scores`` [K], ``labels`` [K] int. Reference detections in descending score order each take
    the unmatched candidate detection of the same label with the highest IoU, if that IoU >=
    ``iou_threshold``. Returns int64 [K_ref]: the matched candidate index, or -1.

    Tie-aware with ``max_detections`` (K of the NMS): when the reference's K rows are full and
    its lowest score group is tied (:func:`tied_at_cut`), those rows are not compared one to one
    and get :data:`LEFT_OUT` (-2); every candidate row stays available to the rows above them.
    """
    rb = np.asarray(ref["boxes"], np.float32).reshape(-1, 4)
    cb = np.asarray(cand["boxes"], np.float32).reshape(-1, 4)
    rl = np.asarray(ref["labels"]).reshape(-1)
    cl = np.asarray(cand["labels"]).reshape(-1)
    out = np.full(len(rb), -1, dtype=np.int64)
    out[tied_at_cut(ref["scores"], max_detections, cand["scores"])] = LEFT_OUT
    if len(rb) == 0 or len(cb) == 0:
        return out
    taken = np.zeros(len(cb), dtype=bool)
    for i in np.argsort(-np.asarray(ref["scores"], np.float32).reshape(-1), kind="stable"):
        ok = np.flatnonzero((cl == rl[i]) & ~taken)
        if ok.size == 0 or out[i] == LEFT_OUT:
            continue
        ious = iou_one_to_many(rb[i], cb[ok])
        j = int(np.argmax(ious))
        if ious[j] >= iou_threshold:
            out[i] = ok[j]
            taken[ok[j]] = True
    return out
