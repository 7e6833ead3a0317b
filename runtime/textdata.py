"""Text / non-text image folders (``text:DIR``) and the image-level precision / recall / F-measure.

Folder layout (TextDis-like)::

    DIR/text/*.jpg|png|...     images that contain text (label 1)
    DIR/nontext/*              images without text (label 0)
    DIR/text/<stem>.txt        optional: the text boxes of DIR/text/<stem>.<ext>, one ``x1 y1 x2 y2`` per line
                               (pixels of the image as stored; blank lines and lines starting with '#' skipped)
    DIR/boxes.json             optional, instead of or besides the .txt files:
                               ``{"text/<name>.jpg": [[x1, y1, x2, y2], ...], ...}`` (paths relative to DIR)

A text image with no box anywhere has ``boxes`` of shape [0, 4]: its label is known, its regions are not.
Hidden files (names starting with '.') are skipped; any other file that is neither an image nor a box file
is refused with one line naming it, as are a box file or an image that cannot be read.

:func:`parse_text_spec` reads the ``--data`` spec (``text``: the embedded generator, ``text:DIR``: a folder).
:func:`text_prf` scores image-level text probabilities against labels.

Imports numpy, Pillow and the standard library only (no torch).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtime.preprocess import load_image
from runtime.sizes import as_hw
from runtime.sources import IMAGE_SUFFIXES

__all__ = ["CLASS_DIRS", "TextFolder", "parse_text_spec", "read_box_file", "text_prf"]

CLASS_DIRS: tuple[tuple[str, int], ...] = (("text", 1), ("nontext", 0))


def parse_text_spec(spec: str) -> tuple[str, Path | None]:
    """``"text"`` -> ``("embedded", None)``; ``"text:DIR"`` -> ``("folder", Path(DIR))``. ValueError otherwise."""
    s = str(spec).strip()
    if s == "text":
        return "embedded", None
    if s.startswith("text:") and s[5:].strip():
        return "folder", Path(s[5:].strip())
    raise ValueError(f"text data spec {spec!r}: expected 'text' (the embedded generator) or 'text:DIR' "
                     "(a folder with text/ and nontext/ image folders)")


def read_box_file(path: Path) -> np.ndarray:
    """A box file -> float32 [N, 4] xyxy pixels; ValueError naming the file and line when a line is not four
    finite numbers with x1 <= x2 and y1 <= y2."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read box file {path}: {e}") from None
    boxes = []
    for n, line in enumerate(lines, 1):
        text = line.replace(",", " ").strip()
        if not text or text.startswith("#"):
            continue
        boxes.append(_box(text.split(), f"box file {path} line {n}"))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _box(values: Any, where: str) -> list[float]:
    try:
        b = [float(v) for v in values]
    except (TypeError, ValueError):
        b = []
    if len(b) != 4 or not all(np.isfinite(b)) or b[2] < b[0] or b[3] < b[1]:
        raise ValueError(f"{where}: expected 'x1 y1 x2 y2' (four numbers, pixels, x1 <= x2, y1 <= y2), "
                         f"got {values!r}")
    return b


def _read_boxes_json(path: Path) -> dict[str, np.ndarray]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping {{relative image path: [[x1, y1, x2, y2], ...]}}")
    out = {}
    for key, boxes in d.items():
        if not isinstance(boxes, list):
            raise ValueError(f"{path}: entry {key!r}: expected a list of [x1, y1, x2, y2] boxes")
        out[Path(key).as_posix()] = np.asarray([_box(b, f"{path}: entry {key!r}") for b in boxes],
                                               dtype=np.float32).reshape(-1, 4)
    return out


def _size_hw(img_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    return None if img_size is None else as_hw(img_size)


class TextFolder:
    """The images of a ``text:DIR`` folder (see the module docstring), text images first, names sorted.

    ``dataset[i] -> (image uint8 [H, W, 3] RGB, {"label": 0 | 1, "boxes": float32 [N, 4] xyxy pixels of the
    returned image, "path": str})``. With ``img_size`` (int or (H, W)) every image is resized (stretched,
    bilinear) to that size and its boxes scaled with it; without, images keep their own size.
    ``labels``: int64 [N]; ``paths``: the image files; ``has_boxes``: bool [N], whether a box source names
    the image (non-text images: always True, they have no text).
    """

    def __init__(self, root: str | Path, img_size: int | tuple[int, int] | None = None) -> None:
        self.root = Path(root)
        self.img_size = _size_hw(img_size)
        missing = [name for name, _ in CLASS_DIRS if not (self.root / name).is_dir()]
        if not self.root.is_dir() or missing:
            what = "does not exist" if not self.root.exists() else (
                "is not a folder" if not self.root.is_dir() else f"has no {' and no '.join(m + '/' for m in missing)}")
            raise ValueError(f"text data folder {self.root} {what}: expected DIR/text/ and DIR/nontext/ image "
                             "folders (optional DIR/text/<stem>.txt or DIR/boxes.json text boxes)")
        json_boxes = _read_boxes_json(self.root / "boxes.json") if (self.root / "boxes.json").is_file() else {}
        self.paths: list[Path] = []
        labels, self._boxes, has = [], [], []
        for name, label in CLASS_DIRS:
            for p in self._list_images(self.root / name, allow_txt=label == 1):
                rel = p.relative_to(self.root).as_posix()
                boxes, known = self._image_boxes(p, rel, json_boxes, label)
                self.paths.append(p)
                labels.append(label)
                self._boxes.append(boxes)
                has.append(known)
        unknown = sorted(set(json_boxes) - {p.relative_to(self.root).as_posix() for p in self.paths})
        if unknown:
            raise ValueError(f"{self.root / 'boxes.json'}: entry {unknown[0]!r} names no image of the folder")
        if not self.paths:
            raise ValueError(f"text data folder {self.root}: no images in text/ or nontext/ "
                             f"(image suffixes: {', '.join(IMAGE_SUFFIXES)})")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.has_boxes = np.asarray(has, dtype=bool)

    @staticmethod
    def _list_images(folder: Path, allow_txt: bool) -> list[Path]:
        images, other = [], []
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                images.append(p)
            elif not (allow_txt and p.is_file() and p.suffix.lower() == ".txt"):
                other.append(p)
        stems = {p.stem for p in images}
        orphans = [p for p in sorted(folder.glob("*.txt"))
                   if allow_txt and p.stem not in stems and not p.name.startswith(".")]
        if other:
            kinds = ", ".join(IMAGE_SUFFIXES) + (", or a .txt box file" if allow_txt else "")
            raise ValueError(f"{other[0]}: not an image of the text data ({kinds}); expected only images in {folder}")
        if orphans:
            raise ValueError(f"{orphans[0]}: a box file without an image of the same name in {folder}")
        return images

    @staticmethod
    def _image_boxes(path: Path, rel: str, json_boxes: dict[str, np.ndarray],
                     label: int) -> tuple[np.ndarray, bool]:
        txt = path.with_suffix(".txt")
        sources = [b for b in (json_boxes.get(rel), read_box_file(txt) if label and txt.is_file() else None)
                   if b is not None]
        if not label:
            if sources and len(sources[0]):
                raise ValueError(f"{rel}: a non-text image with text boxes in boxes.json; move it to text/ or "
                                 "remove its boxes")
            return np.zeros((0, 4), np.float32), True
        if not sources:
            return np.zeros((0, 4), np.float32), False
        return np.concatenate(sources).reshape(-1, 4).astype(np.float32), True

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        if not 0 <= i < len(self.paths):
            raise IndexError(f"text image index {i} out of range [0, {len(self.paths)})")
        image = load_image(self.paths[i])                     # ValueError naming the file when unreadable
        boxes = self._boxes[i].copy()
        if self.img_size is not None and image.shape[:2] != self.img_size:
            h0, w0 = image.shape[:2]
            h, w = self.img_size
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), dtype=np.uint8)
            boxes *= np.asarray([w / w0, h / h0, w / w0, h / h0], dtype=np.float32)
        return image, {"label": int(self.labels[i]), "boxes": boxes, "path": str(self.paths[i])}

    def __repr__(self) -> str:
        n_text = int(self.labels.sum())
        return f"TextFolder({self.root}: {n_text} text, {len(self) - n_text} non-text images)"


def text_prf(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float | int]:
    """Image-level scores: an image is called text when its probability is >= ``threshold``.

    probs: float [N] text probabilities in [0, 1]; labels: int [N] of 0 / 1. Returns ``precision``, ``recall``,
    ``f1`` (F-measure) and ``accuracy`` in points (0-100; precision / recall / F are 0 when undefined), the
    counts ``tp``, ``fp``, ``fn``, ``tn`` and ``threshold``.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"text_prf: {p.size} probabilities for {y.size} labels")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError(f"text_prf: labels must be 0 or 1, got {sorted(set(y.tolist()) - {0, 1})[:3]}")
    pred, y = p >= float(threshold), y.astype(bool)
    tp, fp = int(np.sum(pred & y)), int(np.sum(pred & ~y))
    fn, tn = int(np.sum(~pred & y)), int(np.sum(~pred & ~y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = (tp + tn) / max(1, len(y))
    return {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1, "accuracy": 100 * accuracy,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn, "threshold": float(threshold)}
