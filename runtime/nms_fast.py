"""EfficientNMS_TRT semantics for raw-output graphs, fast enough for end-to-end timing.

Same inputs, outputs and bit-for-bit results as :func:`runtime.nms_reference.efficient_nms` in
standard mode (corner boxes, no anchors, no score activation) -- the tests compare the two on
random inputs with ties -- but organised for speed:

* candidates (score >= threshold, top ``pre_nms_top_k`` by score, stable by flat index) exactly
  as the reference selects them;
* per class (or all at once with ``class_agnostic``) the greedy suppression reads IoU rows from
  blocks of an IoU matrix computed with the reference's float32 formula (reordered corners,
  zero-area rules), so each kept box costs one vectorised ``&=`` instead of a dozen array calls;
* a class stops after K kept boxes, and the per-class survivors merged in global candidate order
  and cut at K are exactly what the reference's single greedy pass keeps (suppression never
  crosses classes, and the reference visits candidates in that same global order); once K boxes
  are kept, candidates ranked after the K-th of them are not visited at all.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 256  # IoU rows per block: [256, M] float32 stays in cache-sized chunks even for M = 4096


def _reorder(b: np.ndarray) -> np.ndarray:
    return np.concatenate([np.minimum(b[..., 0:2], b[..., 2:4]), np.maximum(b[..., 0:2], b[..., 2:4])], axis=-1)


def _area(x1, y1, x2, y2) -> np.ndarray:
    w = x2 - x1
    h = y2 - y1
    return np.where((w > 0) & (h > 0), w * h, np.float32(0.0)).astype(np.float32)


def _iou_block(a: np.ndarray, b: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """IoU [len(a), len(b)] of reordered corner boxes, the reference's float32 arithmetic."""
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = _area(ix1, iy1, ix2, iy2)
    union = area_a[:, None] + area_b[None, :] - inter
    ok = (inter > 0) & (union > 0)
    out = np.zeros(inter.shape, dtype=np.float32)
    np.divide(inter, union, out=out, where=ok)
    return out


def _greedy(boxes_r: np.ndarray, iou_threshold: np.float32, limit: int) -> np.ndarray:
    """Positions (ascending) kept by greedy NMS over boxes already in score order; at most ``limit``."""
    m = len(boxes_r)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    area = _area(boxes_r[:, 0], boxes_r[:, 1], boxes_r[:, 2], boxes_r[:, 3])
    alive = np.ones(m, dtype=bool)
    kept = []
    for s in range(0, m, _BLOCK):
        e = min(s + _BLOCK, m)
        if not alive[s:e].any():
            continue
        iou = _iou_block(boxes_r[s:e], boxes_r[s:], area[s:e], area[s:])  # [e - s, m - s]
        sup = iou >= iou_threshold
        for j in range(s, e):
            if not alive[j]:
                continue
            kept.append(j)
            if len(kept) == limit:
                return np.asarray(kept, dtype=np.int64)
            alive[j + 1:] &= ~sup[j - s, j + 1 - s:]
    return np.asarray(kept, dtype=np.int64)


def efficient_nms_fast(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_output_boxes: int,
    pre_nms_top_k: int = 4096,
    class_agnostic: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """boxes float [B, N, 4] corners (any frame), scores float [B, N, C] -> the plugin's four
    outputs (see :func:`runtime.nms_reference.efficient_nms`; no background column, no anchors)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 3 or boxes.ndim != 3 or boxes.shape != scores.shape[:2] + (4,):
        raise ValueError(f"boxes must be [B, N, 4] and scores [B, N, C] with the same B, N; got "
                         f"{boxes.shape} and {scores.shape}")
    b, _, c = scores.shape
    k = int(max_output_boxes)
    if k <= 0 or int(pre_nms_top_k) <= 0:
        raise ValueError(f"max_output_boxes and pre_nms_top_k must be > 0, got {k} and {pre_nms_top_k}")
    thr, iou_thr = np.float32(score_threshold), np.float32(iou_threshold)
    num = np.zeros((b, 1), dtype=np.int32)
    out_boxes = np.zeros((b, k, 4), dtype=np.float32)
    out_scores = np.zeros((b, k), dtype=np.float32)
    out_classes = np.zeros((b, k), dtype=np.int32)
    for i in range(b):
        flat = scores[i].reshape(-1)
        cand = np.flatnonzero(flat >= thr)
        cand = cand[np.argsort(-flat[cand], kind="stable")[: int(pre_nms_top_k)]]
        if cand.size == 0:
            continue
        anchor_idx, class_idx = np.divmod(cand, c)
        raw = boxes[i, anchor_idx]
        reordered = _reorder(raw)
        if class_agnostic:
            kept = _greedy(reordered, iou_thr, k)
        else:
            # Classes in order of their best candidate; once K boxes are kept in total, a
            # candidate ranked after the K-th kept one can never make the output: stop there.
            parts, cutoff = [], cand.size
            _, first = np.unique(class_idx, return_index=True)
            for cls in class_idx[np.sort(first)]:
                pos = np.flatnonzero(class_idx[:cutoff] == cls)
                if pos.size == 0:
                    continue
                parts.append(pos[_greedy(reordered[pos], iou_thr, k)])
                n_kept = sum(len(p) for p in parts)
                if n_kept >= k:
                    cutoff = int(np.partition(np.concatenate(parts), k - 1)[k - 1]) + 1
            kept = np.sort(np.concatenate(parts))[:k]
        m = kept.size
        num[i, 0] = m
        out_boxes[i, :m] = raw[kept]
        out_scores[i, :m] = flat[cand[kept]]
        out_classes[i, :m] = class_idx[kept]
    return num, out_boxes, out_scores, out_classes
