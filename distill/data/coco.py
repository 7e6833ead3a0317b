"""COCO-json loader: ``instances_*.json`` + an image folder -> validated ImageRecords.

* Categories sorted by their id: label ``L`` in 1..C <-> ``category_ids[L - 1]``; ids with gaps
  (COCO: 1..90 for 80 classes) are kept as they are.
* ``iscrowd=1`` annotations are kept with ``ignore=True`` (out of the training loss's positives,
  crowd regions for COCOeval).
* Images without annotations are kept.
* ``bbox`` is ``[x, y, w, h]`` in pixels; it becomes xyxy clipped to the image. Boxes that do
  not overlap the image or have zero area after clipping, unknown category/image ids and
  malformed entries are bad samples (error, or warn+count+drop with ``skip``). A missing or
  malformed json file, or one without ``images``/``categories`` lists, is always an error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from distill.data.dataset import BadSampleReporter, ImageRecord, clip_box_xyxy
from runtime.datasets import read_coco_json

_IMAGE_FIELDS = "{id: int, file_name: str, width: int > 0, height: int > 0}"
_ANN_FIELDS = ("{id: int, image_id: int, category_id: int, bbox: [x, y, w, h] finite numbers, "
               "iscrowd: 0/1 (optional), area: number (optional)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _categories(path: Path, cats: list[Any]) -> tuple[list[str], list[int]]:
    seen: dict[int, str] = {}
    for i, c in enumerate(cats):
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)):
            raise ValueError(f"{path}: categories[{i}] = {c!r}; expected {{id: int, name: str}}")
        if c["id"] in seen:
            raise ValueError(f"{path}: categories[{i}]: duplicate category id {c['id']}")
        seen[c["id"]] = c["name"]
    if not seen:
        raise ValueError(f"{path}: 'categories' is empty; expected at least one category")
    ids = sorted(seen)
    return [seen[i] for i in ids], ids


def load_coco(ann_file: str | Path, img_dir: str | Path, report: BadSampleReporter
              ) -> tuple[list[ImageRecord], list[str], list[int]]:
    """Parse and validate a COCO json. Returns ``(records in json image order, class_names,
    category_ids)``; see the module docstring for the rules."""
    ann_file, img_dir = Path(ann_file), Path(img_dir)
    data = read_coco_json(ann_file)
    class_names, category_ids = _categories(ann_file, data["categories"])
    label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
    if not img_dir.is_dir():
        raise ValueError(f"image folder not found: {img_dir} (for {ann_file})")

    records: dict[int, ImageRecord] = {}
    listed: set = set()  # image ids present in the json, even if skipped
    for i, im in enumerate(data["images"]):
        if not (isinstance(im, dict) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str)
                and _is_int(im.get("width")) and _is_int(im.get("height"))
                and im["width"] > 0 and im["height"] > 0):
            report("malformed_image", f"{ann_file}: images[{i}] = {im!r}; expected {_IMAGE_FIELDS}")
            continue
        iid = im["id"]
        if iid in listed:
            report("duplicate_image_id", f"{ann_file}: images[{i}]: duplicate image id {iid}")
            continue
        listed.add(iid)
        path = img_dir / im["file_name"]
        if not path.is_file():
            report("missing_image", f"{ann_file}: image id {iid}: image file {path} not found")
            continue
        records[iid] = ImageRecord(iid, im["file_name"], path, im["width"], im["height"])

    per_image: dict[int, list[tuple[tuple[float, ...], int, bool, float, int]]] = {}
    for i, a in enumerate(data.get("annotations", [])):
        where = f"{ann_file}: annotations[{i}]"
        if isinstance(a, dict) and "id" in a:
            where = f"{ann_file}: annotation id {a['id']!r} (annotations[{i}]"
            where += f", image id {a['image_id']!r})" if "image_id" in a else ")"
        bbox = a.get("bbox") if isinstance(a, dict) else None
        if not (isinstance(a, dict) and _is_int(a.get("image_id")) and _is_int(a.get("category_id"))
                and isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_num(v) for v in bbox)
                and a.get("iscrowd", 0) in (0, 1)):
            report("malformed_annotation", f"{where}: got {a!r}; expected {_ANN_FIELDS}")
            continue
        iid, cid = a["image_id"], a["category_id"]
        if iid not in listed:
            report("unknown_image", f"{where}: image_id {iid} is not in 'images'")
            continue
        if iid not in records:
            continue  # its image was already reported and skipped
        if cid not in label_of:
            report("unknown_category", f"{where}: category_id {cid} is not one of the categories "
                                       f"{category_ids}")
            continue
        rec = records[iid]
        x, y, w, h = (float(v) for v in bbox)
        box, reason = clip_box_xyxy(x, y, x + w, y + h, rec.width, rec.height)
        if box is None:
            what = ("lies completely outside" if reason == "box_outside_image"
                    else "has zero area after clipping to")
            report(reason, f"{where}: bbox {list(bbox)} (xywh pixels) {what} the "
                           f"{rec.width}x{rec.height} image; expected w > 0 and h > 0 inside it")
            continue
        area = a.get("area")
        if not (_is_num(area) and area > 0):
            area = (box[2] - box[0]) * (box[3] - box[1])
        per_image.setdefault(iid, []).append(
            (box, label_of[cid], bool(a.get("iscrowd", 0)), float(area),
             a["id"] if _is_int(a.get("id")) else i))

    for iid, anns in per_image.items():
        rec = records[iid]
        rec.boxes = np.array([b for b, *_ in anns], dtype=np.float32).reshape(-1, 4)
        rec.labels = np.array([l for _, l, *_ in anns], dtype=np.int64)
        rec.ignore = np.array([c for _, _, c, *_ in anns], dtype=bool)
        rec.areas = np.array([ar for *_, ar, _ in anns], dtype=np.float32)
        rec.ann_ids = [aid for *_, aid in anns]
    return list(records.values()), class_names, category_ids
