"""NumPy CPU reference of TensorRT's ``EfficientNMS_TRT`` plugin (version "1").

Used to test parity of the TensorRT plugin graph, the ONNX-NMS graph and the PyTorch
postprocess without a GPU. Written from the plugin's README (TensorRT repository,
``plugin/efficientNMSPlugin/README.md``); where the README is silent the behaviour was read from
the plugin's CUDA source and is marked "[source]" below. No code was copied.

Steps, and the statement each one follows:

1. Inputs. README "Boxes Input": boxes are ``[B, N, 4]`` (one box shared by all classes, as in
   SSD) or ``[B, N, C, 4]`` (one box per class); ``[B, N, 1, 4]`` is the shared case [source].
   "Scores Input": ``[B, N, C]``. "Anchors Input": ``[1, N, 4]`` or ``[B, N, 4]``; giving anchors
   switches on the *Fused Box Decoder* mode.
2. Score threshold. README "Process Description": "filters the scores below the given
   score_threshold", i.e. a (box, class) pair is kept when ``score >= score_threshold``
   ([source]: the filter kernel compares with ``>=``). README "Parameters": "background_class:
   The label ID for the background class" -- that score column is never a candidate.
   With ``score_activation`` the comparison is done on raw logits against
   ``log(t / (1 - t))`` [source], which is ``sigmoid(score) >= t`` without rounding surprises.
3. Sort + top-k. README: "The selected scores that remain after filtering are sorted in
   descending order ... the highest 4096 scores are processed" -> ``pre_nms_top_k`` (4096).
   Candidates are (box, class) pairs of one image. Ties: the plugin's order among equal scores
   is not deterministic on the GPU; here it is stable by flat index ``anchor * C + class``.
4. Decoding (fused mode only, on the selected candidates). README "Box Coding Type":
   0 = BoxCorner ``[x1, y1, x2, y2]``, 1 = BoxCenterSize ``[x, y, w, h]``; "the boxes and anchor
   tensors should both use the same coding". The README does not give formulas; [source]:
   center-size: ``x = dx * a_w + a_x``, ``y = dy * a_h + a_y``, ``w = a_w * exp(dw)``,
   ``h = a_h * exp(dh)`` (no variances: fold them into the network or the anchors);
   corners: ``box = reorder(delta) + reorder(anchor)``, coordinate by coordinate, where
   ``reorder`` swaps a flipped pair so that ``x1 <= x2`` and ``y1 <= y2``.
5. NMS. README "Parameters": "iou_threshold: additional boxes that have high IOU overlap with
   previously selected boxes are removed"; "class_agnostic: ... otherwise, boxes of different
   classes would be considered separately". Greedy in score order: a candidate is dropped when
   its IoU with an already *kept* box of the same class (any class if ``class_agnostic``) is
   ``>= iou_threshold`` [source: ``>=``; torchvision uses ``>``]. IoU is computed on reordered
   copies, so flipped corner boxes are accepted [source]; empty boxes have area 0 and IoU 0.
   README "Box Coding Type": x/y are interchangeable, so ``[y1, x1, y2, x2]`` works too.
6. Output. README "Outputs": ``num_detections`` int32 ``[B, 1]``; ``detection_boxes``
   ``[B, K, 4]`` "always in BoxCorner format"; ``detection_scores`` ``[B, K]``;
   ``detection_classes`` int32 ``[B, K]``; "Only the top num_detections[i] entries ... are
   valid". Kept boxes in descending score order, at most ``max_output_boxes`` (K); unused rows
   are zero [source: outputs are zero-filled first]. The class is the score column index (the
   background column is skipped, not renumbered). Boxes are not clipped (the plugin's
   ``clipBoxes`` is off) and, in standard mode, not reordered. README "Using Sigmoid
   Activation": with ``score_activation`` the sigmoid is applied to the output scores only.

Known plugin difference [source]: when ``score_threshold < 0.007`` (compared in logit space with
``score_activation``) the plugin switches to a dense kernel that keeps below-threshold pairs as
candidates with score -32768, so with fewer than K real detections it can emit extra rows with
that score. This reference never emits below-threshold rows; keep thresholds >= 0.007 for
bit-for-bit parity, or drop such rows when comparing.
"""

from __future__ import annotations

import numpy as np

BOX_CORNER = 0
BOX_CENTER_SIZE = 1


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x.astype(np.float32)))).astype(np.float32)


def _reorder(b: np.ndarray) -> np.ndarray:
    """Corner boxes [..., 4] with each (x1, x2) and (y1, y2) pair swapped into ascending order."""
    return np.concatenate(
        [np.minimum(b[..., 0:2], b[..., 2:4]), np.maximum(b[..., 0:2], b[..., 2:4])], axis=-1
    )


def _center_to_corner(b: np.ndarray) -> np.ndarray:
    half = b[..., 2:4] * np.float32(0.5)
    return np.concatenate([b[..., 0:2] - half, b[..., 0:2] + half], axis=-1)


def decode_boxes(raw: np.ndarray, anchors: np.ndarray | None, box_coding: int) -> np.ndarray:
    """Plugin box decoding. raw, anchors: float32 [M, 4] in ``box_coding``; -> corners [M, 4].

    Without anchors the boxes are only converted to corners (center-size) or returned as they
    are (corners). See the module docstring, step 4, for the formulas.
    """
    raw = raw.astype(np.float32, copy=False)
    if box_coding == BOX_CORNER:
        if anchors is None:
            return raw.copy()
        return _reorder(raw) + _reorder(anchors.astype(np.float32, copy=False))
    if anchors is None:
        return _center_to_corner(raw)
    a = anchors.astype(np.float32, copy=False)
    with np.errstate(over="ignore"):
        center = raw[:, 0:2] * a[:, 2:4] + a[:, 0:2]
        size = a[:, 2:4] * np.exp(raw[:, 2:4])
    return _center_to_corner(np.concatenate([center, size], axis=1))


def _area(b: np.ndarray) -> np.ndarray:
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    return np.where((w > 0) & (h > 0), w * h, np.float32(0.0)).astype(np.float32)


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one corner box [4] with corner boxes [M, 4] -> float32 [M], plugin rules.

    Flipped coordinates are reordered first; zero-area intersections or unions give 0.
    """
    a = _reorder(box.astype(np.float32, copy=False))
    b = _reorder(boxes.astype(np.float32, copy=False))
    inter_box = np.concatenate([np.maximum(a[0:2], b[:, 0:2]), np.minimum(a[2:4], b[:, 2:4])], axis=1)
    inter = _area(inter_box)
    union = _area(a) + _area(b) - inter
    ok = (inter > 0) & (union > 0)
    out = np.zeros(len(b), dtype=np.float32)
    out[ok] = inter[ok] / union[ok]
    return out


def _check_inputs(boxes, scores, anchors, box_coding, background_class, max_output_boxes, pre_nms_top_k,
                  score_threshold, iou_threshold):
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim == 4 and scores.shape[3] == 1:
        scores = scores[..., 0]
    if scores.ndim != 3:
        raise ValueError(f"scores must be [B, N, C], got shape {scores.shape}")
    b, n, c = scores.shape
    if boxes.ndim == 3:
        boxes = boxes[:, :, None, :]
    if boxes.ndim != 4 or boxes.shape[3] != 4 or boxes.shape[:2] != (b, n) or boxes.shape[2] not in (1, c):
        raise ValueError(
            f"boxes must be [B, N, 4], [B, N, 1, 4] or [B, N, C, 4] with B={b}, N={n}, C={c} "
            f"taken from scores; got shape {boxes.shape}"
        )
    if anchors is not None:
        anchors = np.asarray(anchors, dtype=np.float32)
        if anchors.ndim != 3 or anchors.shape[1:] != (n, 4) or anchors.shape[0] not in (1, b):
            raise ValueError(f"anchors must be [1, N, 4] or [B, N, 4] with N={n}, B={b}; got {anchors.shape}")
        if boxes.shape[2] != 1:
            # The plugin indexes anchors per box; per-class boxes with anchors are not a mode we use.
            raise ValueError("anchors (fused box decoder) need shared boxes [B, N, 4], got per-class boxes")
    if box_coding not in (BOX_CORNER, BOX_CENTER_SIZE):
        raise ValueError(f"box_coding must be 0 (corners) or 1 (center-size), got {box_coding!r}")
    if not (background_class == -1 or 0 <= background_class < c):
        raise ValueError(f"background_class must be -1 (none) or in 0..{c - 1}, got {background_class!r}")
    for name, v in (("max_output_boxes", max_output_boxes), ("pre_nms_top_k", pre_nms_top_k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be an int > 0, got {v!r}")
    for name, v in (("score_threshold", score_threshold), ("iou_threshold", iou_threshold)):
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}")
    return boxes, scores, anchors


def _greedy_nms(boxes: np.ndarray, classes: np.ndarray, iou_threshold: np.float32, limit: int,
                class_agnostic: bool) -> np.ndarray:
    """Positions kept by one greedy pass over candidates in score order (boxes float32 [M, 4]
    corners, classes int [M]): a box suppresses later boxes of its class (of any class with
    ``class_agnostic``) at IoU >= ``iou_threshold``; stops after ``limit`` kept. int64 [<= limit]."""
    alive = np.ones(len(boxes), dtype=bool)
    kept = []
    for j in range(len(boxes)):
        if not alive[j]:
            continue
        kept.append(j)
        if len(kept) == limit:
            break
        rest = np.arange(j + 1, len(boxes))
        rest = rest[alive[rest]]
        if not class_agnostic:
            rest = rest[classes[rest] == classes[j]]
        if rest.size:
            alive[rest[iou_one_to_many(boxes[j], boxes[rest]) >= iou_threshold]] = False
    return np.asarray(kept, dtype=np.int64)


def efficient_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    anchors: np.ndarray | None = None,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_output_boxes: int,
    background_class: int = -1,
    score_activation: bool = False,
    class_agnostic: bool = False,
    box_coding: int = BOX_CORNER,
    pre_nms_top_k: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EfficientNMS_TRT on the CPU (semantics in the module docstring).

    Args:
        boxes: float [B, N, 4], [B, N, 1, 4] or [B, N, C, 4] in ``box_coding``; raw deltas when
            ``anchors`` is given. Any coordinate frame (normalised in our graphs).
        scores: float [B, N, C] (probabilities, or logits with ``score_activation``).
        anchors: optional float [1, N, 4] or [B, N, 4] in ``box_coding``: fused decoder mode.

    Returns:
        num_detections int32 [B, 1]; detection_boxes float32 [B, K, 4] corners (x1, y1, x2, y2)
        in the frame of the input; detection_scores float32 [B, K]; detection_classes int32
        [B, K] (score column index). K = ``max_output_boxes``; rows past num_detections are 0.
    """
    boxes, scores, anchors = _check_inputs(
        boxes, scores, anchors, box_coding, background_class, max_output_boxes, pre_nms_top_k,
        score_threshold, iou_threshold,
    )
    b, n, c = scores.shape
    k = int(max_output_boxes)
    num = np.zeros((b, 1), dtype=np.int32)
    out_boxes = np.zeros((b, k, 4), dtype=np.float32)
    out_scores = np.zeros((b, k), dtype=np.float32)
    out_classes = np.zeros((b, k), dtype=np.int32)

    threshold = np.float32(score_threshold)
    if score_activation:
        # Compare raw logits with the threshold's logit, as the plugin does.
        t = float(score_threshold)
        threshold = np.float32(-np.inf if t <= 0 else np.inf if t >= 1 else np.log(t / (1.0 - t)))

    for i in range(b):
        flat = scores[i].reshape(-1)  # index e = anchor * C + class
        keep = flat >= threshold
        if background_class >= 0:
            keep[background_class::c] = False
        cand = np.flatnonzero(keep)  # ascending flat index: the stable tie-break
        order = np.argsort(-flat[cand], kind="stable")[: int(pre_nms_top_k)]
        cand = cand[order]
        if cand.size == 0:
            continue
        cand_scores = flat[cand]
        anchor_idx, class_idx = np.divmod(cand, c)
        raw = boxes[i, anchor_idx, 0 if boxes.shape[2] == 1 else class_idx]
        anc = None if anchors is None else anchors[0 if anchors.shape[0] == 1 else i, anchor_idx]
        cand_boxes = decode_boxes(raw, anc, box_coding)

        kept = _greedy_nms(cand_boxes, class_idx, np.float32(iou_threshold), k, class_agnostic)
        m = kept.size
        num[i, 0] = m
        out_boxes[i, :m] = cand_boxes[kept]
        s = cand_scores[kept]
        out_scores[i, :m] = _sigmoid(s) if score_activation else s
        out_classes[i, :m] = class_idx[kept]
    return num, out_boxes, out_scores, out_classes
