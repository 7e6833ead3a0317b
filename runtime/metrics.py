"""COCO box evaluation with pycocotools, Detectron2-style ``reset / process / evaluate``.

One evaluator for every backend (PyTorch, ONNX Runtime, TensorRT) and for training-time eval.
Inputs are internal-convention detections: xyxy boxes in absolute pixels of the original image,
labels ``L`` in ``1..C`` mapped to dataset ids by ``category_ids[L - 1]``.

COCO ``xywh`` appears only in :func:`to_coco_results` (written) and :func:`from_coco_results` (read back).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.atomic import write_json_atomic

# COCOeval.stats index of each reported metric.
_STAT_INDEX = {"mAP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}


def to_coco_results(
    image_id: int,
    boxes_xyxy: Any,
    scores: Any,
    labels: Any,
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """Detections of one image -> COCO result dicts ``{image_id, category_id, bbox, score}``.

    ``boxes_xyxy``: [N, 4] absolute pixels of the original image. ``scores``: [N].
    ``labels``: [N] ints in ``1..C``; ``category_ids[L - 1]`` is written. ``bbox`` is COCO
    ``[x, y, w, h]`` (the only place that format is produced).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)  # accept [], [0], [0, 4] for "no detections"
    scores_a = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels_a = np.asarray(labels).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (xyxy), got {boxes.shape}")
    n = boxes.shape[0]
    if scores_a.shape[0] != n or labels_a.shape[0] != n:
        raise ValueError(
            f"boxes, scores and labels must have the same length N; got boxes {boxes.shape}, "
            f"scores {scores_a.shape}, labels {labels_a.shape}"
        )
    if n == 0:
        return []
    if not np.issubdtype(labels_a.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels_a, 1), 0)):
            raise ValueError(f"labels must be integers in 1..C, got {labels_a[:8]}")
        labels_a = labels_a.astype(np.int64)
    num_classes = len(category_ids)
    bad = (labels_a < 1) | (labels_a > num_classes)
    if np.any(bad):
        raise ValueError(
            f"labels must be in 1..{num_classes} (0 is background), got {sorted(set(labels_a[bad].tolist()))[:8]}"
        )
    xywh = boxes.copy()
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(lab) - 1]),
            "bbox": [float(v) for v in box],
            "score": float(s),
        }
        for box, s, lab in zip(xywh, scores_a, labels_a)
    ]


def from_coco_results(records: Sequence[dict[str, Any]], category_ids: Sequence[int]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCO result dicts -> (boxes float32 [N, 4] xyxy pixels, scores float32 [N], labels int64 [N]
    in 1..C): the inverse of :func:`to_coco_results` (the only place COCO ``xywh`` is read back)."""
    label_of = {int(c): k + 1 for k, c in enumerate(category_ids)}
    boxes = np.zeros((len(records), 4), np.float32)
    scores = np.zeros(len(records), np.float32)
    labels = np.zeros(len(records), np.int64)
    for i, r in enumerate(records):
        cat = int(r["category_id"])
        if cat not in label_of:
            raise ValueError(f"COCO result #{i} has category_id {cat}, not one of the model's {list(label_of)}")
        x, y, w, h = (float(v) for v in r["bbox"])
        boxes[i] = (x, y, x + w, y + h)
        scores[i] = float(r["score"])
        labels[i] = label_of[cat]
    return boxes, scores, labels


def write_coco_results(path: Any, results: list[dict[str, Any]]) -> Any:
    """Write COCO result dicts (from :func:`to_coco_results`) as a JSON list, atomically."""
    if not isinstance(results, list):
        raise ValueError(f"results must be a list of dicts, got {type(results).__name__}")
    return write_json_atomic(path, results)


def _quiet(verbose: bool):
    """pycocotools prints progress to stdout; keep it out of the way unless asked."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _check_gt(gt: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(gt, dict):
        raise ValueError(f"gt must be a COCO-format dict, got {type(gt).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in gt]
    if missing:
        raise ValueError(f"gt is missing COCO keys {missing}")
    gt = copy.deepcopy(gt)
    for i, ann in enumerate(gt["annotations"]):
        need = [k for k in ("image_id", "category_id", "bbox", "area", "iscrowd") if k not in ann]
        if need:
            raise ValueError(f"gt annotation #{i} is missing keys {need}")
        ann.setdefault("id", i + 1)  # pycocotools needs ids; they carry no meaning here
    return gt


class CocoEvaluator:
    """COCO bbox mAP over the images passed to :meth:`process`.

    ``gt``: COCO-format dict (``images``, ``annotations`` with ``bbox`` xywh in original pixels,
    ``area``, ``iscrowd``; ``categories``). ``category_ids``: dataset id of each contiguous
    label, ``L -> category_ids[L - 1]``; evaluation is restricted to these categories.
    ``class_names``: names for ``per_class``; defaults to the gt category names.
    Images processed with no detections still count (their gt boxes are misses).
    ``detail``: :meth:`evaluate` also returns ``per_class_detail`` (see there).
    """

    def __init__(
        self,
        gt: dict[str, Any],
        category_ids: Sequence[int],
        class_names: Sequence[str] | None = None,
        verbose: bool = False,
        detail: bool = False,
    ) -> None:
        from pycocotools.coco import COCO  # numpy-only dependency, imported on use

        self.verbose = verbose
        self.detail = detail
        self.category_ids = [int(c) for c in category_ids]
        gt = _check_gt(gt)
        gt_cats = {int(c["id"]): c.get("name", str(c["id"])) for c in gt["categories"]}
        unknown = [c for c in self.category_ids if c not in gt_cats]
        if unknown:
            raise ValueError(f"category_ids {unknown} are not in gt categories {sorted(gt_cats)}")
        if class_names is None:
            class_names = [gt_cats[c] for c in self.category_ids]
        if len(class_names) != len(self.category_ids):
            raise ValueError(
                f"class_names has {len(class_names)} entries, category_ids has {len(self.category_ids)}"
            )
        self.class_names = list(class_names)
        with _quiet(verbose):
            self._coco_gt = COCO()
            self._coco_gt.dataset = gt
            self._coco_gt.createIndex()
        self._image_ids = {int(img["id"]) for img in gt["images"]}
        self.reset()

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._results: list[dict[str, Any]] = []
        self._seen: set = set()

    def process(self, image_id: int, boxes_xyxy: Any, scores: Any, labels: Any) -> None:
        """Add one image's detections: boxes [N, 4] xyxy abs px, scores [N], labels [N] in 1..C."""
        image_id = int(image_id)
        if image_id not in self._image_ids:
            raise ValueError(f"image_id {image_id} is not in the gt images")
        self._results.extend(to_coco_results(image_id, boxes_xyxy, scores, labels, self.category_ids))
        self._seen.add(image_id)

    @property
    def results(self) -> list[dict[str, Any]]:
        """COCO result dicts accumulated so far (for :func:`write_coco_results`)."""
        return self._results

    def evaluate(self, per_class: bool = True) -> dict[str, Any]:
        """Return ``{mAP, AP50, AP75, APs, APm, APl, AR100, num_detections[, per_class]}``.

        Metrics are floats in 0..100 points; a metric with no gt to measure (e.g. APs with no
        small objects) is NaN, as pycocotools reports -1. No detections at all -> all 0.0.
        ``per_class`` maps class name -> AP (IoU 0.50:0.95, all areas, 100 dets). With ``detail``
        (constructor), ``per_class_detail`` maps class name -> ``{instances, precision, recall, conf,
        AP50, AP}``: gt boxes (crowd excluded), precision and recall at IoU 0.5 at the score ``conf``
        where their F1 is highest (points), AP50 and AP (points).
        """
        out: dict[str, Any] = {k: 0.0 for k in _STAT_INDEX}
        out["num_detections"] = len(self._results)
        if not self._results:
            # pycocotools' loadRes crashes on an empty result list; nothing detected scores 0.
            if per_class:
                out["per_class"] = {name: 0.0 for name in self.class_names}
            if per_class and self.detail:
                out["per_class_detail"] = self._detail(None)
            return out

        from pycocotools.cocoeval import COCOeval

        with _quiet(self.verbose):
            coco_dt = self._coco_gt.loadRes(copy.deepcopy(self._results))
            ev = COCOeval(self._coco_gt, coco_dt, iouType="bbox")
            ev.params.imgIds = sorted(self._seen)
            ev.params.catIds = sorted(self.category_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        for key, idx in _STAT_INDEX.items():
            out[key] = _points(ev.stats[idx])
        if per_class:
            k_of = {c: k for k, c in enumerate(ev.params.catIds)}
            out["per_class"] = {name: _class_ap(ev, k_of[cat]) for name, cat in zip(self.class_names,
                                                                                    self.category_ids)}
        if per_class and self.detail:
            out["per_class_detail"] = self._detail(ev)
            k_of = {c: k for k, c in enumerate(ev.params.catIds)}
            # precision at the 101 recall points of COCOeval, IoU 0.5, all areas, 100 detections (-1: undefined)
            out["pr_iou50"] = {name: [float(v) for v in ev.eval["precision"][0, :, k_of[cat], 0, -1]]
                               for name, cat in zip(self.class_names, self.category_ids)}
            out["confusion"] = confusion_matrix(self._results, self._coco_gt.dataset, self.category_ids,
                                                self.class_names, sorted(self._seen))
        return out

    def _detail(self, ev: Any) -> dict[str, dict[str, Any]]:
        """``per_class_detail`` of :meth:`evaluate`; ``ev``: the accumulated COCOeval (None: no detections)."""
        out = {}
        for k, (name, cat) in enumerate(zip(self.class_names, self.category_ids)):
            anns = self._coco_gt.loadAnns(self._coco_gt.getAnnIds(imgIds=sorted(self._seen), catIds=[cat]))
            row: dict[str, Any] = {"instances": sum(1 for a in anns if not a.get("iscrowd", 0)),
                                   "precision": 0.0, "recall": 0.0, "conf": None, "AP50": 0.0, "AP": 0.0}
            if ev is not None:
                kk = list(ev.params.catIds).index(cat)
                row.update(_best_f1(ev, cat), AP50=_class_ap(ev, kk, iou_index=0), AP=_class_ap(ev, kk))
            out[name] = row
        return out


def _iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of COCO boxes a [N, 4] and b [M, 4] (xywh, pixels) -> [N, M]."""
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-12)


def confusion_matrix(results: list[dict[str, Any]], gt: dict[str, Any], category_ids: Sequence[int],
                     class_names: Sequence[str], image_ids: Sequence[int], conf: float = 0.25,
                     iou: float = 0.5) -> dict[str, Any]:
    """Detection confusion matrix: rows = ground-truth class, then "background" (detections that match no
    object); columns = predicted class, then "missed" (objects no detection matched). Detections scoring at
    least ``conf`` are matched per image, highest score first, to the unmatched non-crowd object of ANY class
    with the highest IoU >= ``iou`` (so a right box with the wrong class lands off the diagonal)."""
    col = {int(c): i for i, c in enumerate(category_ids)}
    n = len(category_ids)
    m = np.zeros((n + 1, n + 1), dtype=np.int64)
    dets, objs = defaultdict(list), defaultdict(list)
    for r in results:
        if r["score"] >= conf:
            dets[int(r["image_id"])].append(r)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0) and int(a["category_id"]) in col:
            objs[int(a["image_id"])].append(a)
    for image_id in image_ids:
        d = sorted(dets.get(int(image_id), []), key=lambda r: -r["score"])
        g = objs.get(int(image_id), [])
        taken = np.zeros(len(g), dtype=bool)
        ious = (_iou_xywh(np.array([r["bbox"] for r in d], np.float64).reshape(-1, 4),
                          np.array([a["bbox"] for a in g], np.float64).reshape(-1, 4)) if d and g else None)
        for i, r in enumerate(d):
            j = -1
            if ious is not None:
                cand = np.where(taken, -1.0, ious[i])
                j = int(cand.argmax()) if cand.max() >= iou else -1
            if j < 0:
                m[n, col[int(r["category_id"])]] += 1
            else:
                taken[j] = True
                m[col[int(g[j]["category_id"])], col[int(r["category_id"])]] += 1
        for j in np.where(~taken)[0]:
            m[col[int(g[j]["category_id"])], n] += 1
    return {"rows": [*class_names, "background"], "columns": [*class_names, "missed"], "conf": conf, "iou": iou,
            "matrix": m.tolist()}


def _class_ap(ev: Any, k: int, iou_index: int | None = None) -> float:
    """AP in points of class index ``k`` of an accumulated COCOeval: over IoU 0.50:0.95, or at one
    IoU threshold (``iou_index`` 0: IoU 0.5); all areas, 100 detections. NaN without gt."""
    # precision: [T iou, R recall, K class, A area, M maxDets]; area "all", maxDets 100.
    p = ev.eval["precision"][:, :, k, 0, -1] if iou_index is None else ev.eval["precision"][iou_index, :, k, 0, -1]
    p = p[p > -1]
    return float(np.mean(p) * 100.0) if p.size else math.nan


def _best_f1(ev: Any, cat: int) -> dict[str, Any]:
    """Precision, recall (points) and the score threshold where F1 is highest, at IoU 0.5, all areas."""
    area_all = list(ev.params.areaRng[0])
    scores, hits, npos = [], [], 0
    for e in ev.evalImgs:
        if e is None or e["category_id"] != cat or list(e["aRng"]) != area_all:
            continue
        keep = ~np.asarray(e["dtIgnore"][0], bool)
        scores.append(np.asarray(e["dtScores"], np.float64)[keep])
        hits.append(np.asarray(e["dtMatches"][0])[keep] > 0)
        npos += int((~np.asarray(e["gtIgnore"], bool)).sum())
    s = np.concatenate(scores) if scores else np.zeros(0)
    if s.size == 0 or npos == 0:
        return {"precision": 0.0, "recall": math.nan if npos == 0 else 0.0, "conf": None}
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(np.concatenate(hits)[order])
    precision, recall = tp / np.arange(1, s.size + 1), tp / npos
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    return {"precision": float(precision[best] * 100), "recall": float(recall[best] * 100),
            "conf": float(s[order][best])}


def _points(v: float) -> float:
    return float(v) * 100.0 if v >= 0 else math.nan
