"""Pascal-VOC reader: ``ROOT/{Annotations, JPEGImages, ImageSets/Main/SPLIT.txt}`` -> records.

numpy and the standard library only: the training datasets (``distill.data``) and the evaluation
readers (:mod:`runtime.datasets`) read VOC through this one parser.


* Class names: ``ROOT/labels.txt`` (one name per line) when present; else the 20 VOC classes
  (in their canonical, alphabetical order) when every name in the split is a VOC name, so that
  a split lacking a class still gets the full list; else the sorted union of the names in ALL
  ``Annotations/*.xml`` (not only this split's), so that train and val splits agree.
  Category ids are ``1..C`` in that order.
* Coordinates: VOC's 1-based inclusive pixel indices become continuous xyxy
  ``(xmin - 1, ymin - 1, xmax, ymax)``, clipped to the image.
* ``<difficult>1</difficult>`` -> ``ignore=True`` (out of the loss matching) and ``iscrowd=1`` in
  ``coco_gt()`` so COCOeval ignores it, like VOC's own metric.
* Image ids are the 1-based position in SPLIT.txt; ``file_name`` is ``JPEGImages/<id>.jpg``
  (or the xml's ``<filename>`` when that file is the one that exists).
* Image size from the xml's ``<size>``; when missing or zero the image is read once at
  construction to get it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.annotations import ImageRecord, clip_box_xyxy
from runtime.preprocess import load_image

#: ``report(reason, message)``: raise, or warn and count (``distill.data.dataset.BadSampleReporter``).
Reporter = Callable[[str, str], None]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def split_file(root: Path, split: str) -> Path:
    """``ROOT/ImageSets/Main/SPLIT.txt``."""
    return root / "ImageSets" / "Main" / f"{split}.txt"


def read_lines(path: Path, what: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped; ValueError naming ``path`` when it is not UTF-8 text."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at position {e.start}); expected "
                         f"{what}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _int_text(node: ET.Element | None, tag: str) -> int | None:
    text = node.findtext(tag) if node is not None else None
    try:
        return int(float(text.strip())) if text is not None else None
    except ValueError:
        return None


def _parse_xml(xml_path: Path) -> ET.Element:
    try:
        return ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_path} is not well-formed XML: {e}") from e


def _all_names(root: Path) -> list[str]:
    names = set()
    for xml_path in sorted((root / "Annotations").glob("*.xml")):
        try:
            tree = _parse_xml(xml_path)
        except ValueError:
            continue  # reported when (if) it is in the split being loaded
        names.update((o.findtext("name") or "").strip() for o in tree.iter("object"))
    names.discard("")
    return sorted(names)


def _image_path(root: Path, sid: str, tree: ET.Element) -> Path:
    """``JPEGImages/<id>.jpg``, or the xml's ``<filename>`` when only that file exists."""
    img_path = root / "JPEGImages" / f"{sid}.jpg"
    fname = (tree.findtext("filename") or "").strip()
    if not img_path.is_file() and fname and (root / "JPEGImages" / fname).is_file():
        img_path = root / "JPEGImages" / fname
    return img_path


def _objects(tree: ET.Element, xml_path: Path, report: Reporter) -> list[tuple[int, str, bool, list[float]]]:
    """``(index in the xml, name, difficult, [xmin, ymin, xmax, ymax] as written)`` of every
    well-formed ``<object>``."""
    objects = []
    for k, obj in enumerate(tree.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        try:
            coords = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            coords = None
        if not name or coords is None or not all(np.isfinite(coords)):
            report("malformed_annotation",
                   f"{xml_path}: object #{k}: expected <name> and <bndbox> with numeric "
                   f"xmin/ymin/xmax/ymax")
            continue
        objects.append((k, name, _int_text(obj, "difficult") == 1, coords))
    return objects


def _parse_image(root: Path, sf: Path, index: int, sid: str, report: Reporter) -> tuple | None:
    """Pass 1 for one image: ``(index, sid, image path, w, h, xml path, objects)`` or None (reported)."""
    xml_path = root / "Annotations" / f"{sid}.xml"
    if not xml_path.is_file():
        report("missing_annotation_file", f"{sf}: image {sid}: annotation file {xml_path} not found")
        return None
    try:
        tree = _parse_xml(xml_path)
    except ValueError as e:
        report("malformed_xml", str(e))
        return None
    img_path = _image_path(root, sid, tree)
    if not img_path.is_file():
        report("missing_image", f"{xml_path}: image file {img_path} not found")
        return None
    size = tree.find("size")
    w, h = _int_text(size, "width"), _int_text(size, "height")
    if not (w and h and w > 0 and h > 0):
        try:
            h, w = load_image(img_path).shape[:2]
        except ValueError as e:
            report("unreadable_image", f"{xml_path}: no valid <size> and {e}")
            return None
    return index, sid, img_path, int(w), int(h), xml_path, _objects(tree, xml_path, report)


def _class_names(root: Path, parsed: list[tuple]) -> list[str]:
    """``ROOT/labels.txt``, else the VOC classes when they cover every name, else all names seen."""
    labels_txt = root / "labels.txt"
    if labels_txt.is_file():
        class_names = read_lines(labels_txt, "one class name per line")
        if len(set(class_names)) != len(class_names) or not class_names:
            raise ValueError(f"{labels_txt}: expected one unique class name per line")
        return class_names
    seen = {name for *_, objects in parsed for _, name, _, _ in objects}
    return list(VOC_CLASSES) if seen <= set(VOC_CLASSES) else _all_names(root)


def _record(root: Path, item: tuple, class_names: list[str], report: Reporter) -> ImageRecord:
    """Pass 2 for one image: VOC pixel indices -> clipped continuous xyxy, names -> labels."""
    index, sid, img_path, w, h, xml_path, objects = item
    label_of = {n: i + 1 for i, n in enumerate(class_names)}
    boxes, labels, ignore, ann_ids = [], [], [], []
    for k, name, difficult, (xmin, ymin, xmax, ymax) in objects:
        where = f"{xml_path}: object #{k} ({name!r})"
        if name not in label_of:
            report("unknown_category", f"{where}: class {name!r} is not one of {class_names}")
            continue
        box, reason = clip_box_xyxy(xmin - 1.0, ymin - 1.0, xmax, ymax, w, h)
        if box is None:
            what = ("lies completely outside" if reason == "box_outside_image"
                    else "has zero area after clipping to")
            report(reason, f"{where}: bndbox xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} "
                           f"ymax={ymax:g} {what} the {w}x{h} image; expected xmin < xmax and "
                           f"ymin < ymax inside it")
            continue
        boxes.append(box)
        labels.append(label_of[name])
        ignore.append(difficult)
        ann_ids.append(k)
    b = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    return ImageRecord(
        image_id=index + 1, file_name=str(img_path.relative_to(root)), path=img_path,
        width=w, height=h, boxes=b, labels=np.array(labels, dtype=np.int64),
        ignore=np.array(ignore, dtype=bool),
        areas=((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).astype(np.float32), ann_ids=ann_ids)


def load_voc(root: str | Path, split: str, report: Reporter
             ) -> tuple[list[ImageRecord], list[str], list[int]]:
    """Parse and validate a VOC split. Returns ``(records in SPLIT.txt order, class_names,
    category_ids)``; see the module docstring for the rules. ``report(reason, message)`` is told
    of every bad file or annotation (and raises, or lets it be skipped)."""
    root = Path(root)
    sf = split_file(root, split)
    if not sf.is_file():
        raise ValueError(f"VOC split file not found: {sf}; expected ROOT/ImageSets/Main/{split}.txt "
                         f"under ROOT={root}")
    ids = [line.split()[0] for line in read_lines(sf, "one image id per line")]
    if not ids:
        raise ValueError(f"VOC split {split!r} is empty: {sf} lists no image id; expected one image id per line")
    parsed = [p for index, sid in enumerate(ids) if (p := _parse_image(root, sf, index, sid, report)) is not None]
    class_names = _class_names(root, parsed)
    records = [_record(root, item, class_names, report) for item in parsed]
    return records, class_names, list(range(1, len(class_names) + 1))
