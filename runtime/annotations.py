"""Validated annotations of one image, and the COCO ground truth of a list of them.

Box convention (the project's): ``xyxy`` float32 in absolute pixels of the ORIGINAL image,
clipped to it. Labels are contiguous ``1..C``; ``category_ids[L - 1]`` is the dataset's own id
of label ``L``. numpy only: the training datasets (``distill.data``) and the deployment-side
evaluation readers (:mod:`runtime.datasets`) share these records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ImageRecord:
    """One image and its validated annotations.

    ``boxes`` float32 [M, 4] xyxy absolute pixels of the original image, clipped to it;
    ``labels`` int64 [M] in 1..C; ``ignore`` bool [M] (COCO crowd / VOC difficult);
    ``areas`` float32 [M] (the source's area when it has one, else the clipped box area);
    ``ann_ids`` the source's annotation ids (COCO ids, or object index in the VOC xml).
    """

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    areas: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    ann_ids: list[int] = field(default_factory=list)


def clip_box_xyxy(x1: float, y1: float, x2: float, y2: float, width: int, height: int
                  ) -> tuple[tuple[float, float, float, float] | None, str]:
    """Clip an xyxy box to ``[0, width] x [0, height]``.

    Returns ``(clipped box, "")`` or ``(None, reason)`` with reason ``"box_outside_image"`` (no
    overlap at all) or ``"degenerate_box"`` (zero/negative area after clipping).
    """
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        return None, "box_outside_image"
    cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
    cx2, cy2 = min(x2, float(width)), min(y2, float(height))
    if cx2 <= cx1 or cy2 <= cy1:
        return None, "degenerate_box"
    return (cx1, cy1, cx2, cy2), ""


def records_coco_gt(records: Sequence[ImageRecord], category_ids: Sequence[int],
                    class_names: Sequence[str]) -> dict[str, Any]:
    """Ground truth as a COCO dict for pycocotools (``COCO(); .dataset = d; .createIndex()``).

    images: id/width/height/file_name; annotations: bbox xywh in ORIGINAL pixels (clipped),
    area, iscrowd (1 for COCO crowd and VOC difficult, which COCOeval then ignores),
    category_id (the dataset's own id); annotation ids are renumbered 1..N (COCOeval treats
    id 0 as "unmatched").
    """
    images, annotations = [], []
    for rec in records:
        images.append({"id": rec.image_id, "width": rec.width, "height": rec.height, "file_name": rec.file_name})
        for box, label, ign, area in zip(rec.boxes, rec.labels, rec.ignore, rec.areas):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": rec.image_id,
                "category_id": int(category_ids[int(label) - 1]),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area),
                "iscrowd": int(bool(ign)),
            })
    categories = [{"id": int(c), "name": n} for c, n in zip(category_ids, class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}
