"""Boxes, class names and scores drawn on a picture with Pillow (no OpenCV needed).

::

    img = draw_detections(rgb, boxes, labels, scores, names)     # uint8 [H, W, 3] RGB, a new array

One colour per class (:func:`class_color`: evenly spread hues, the same colour for a class in every
picture), a box outline whose width grows with the picture, and a label ``"name 0.93"`` on a filled
tag in the box's colour with black or white text, whichever reads better. The font is Pillow's own
(``ImageFont.load_default``; scalable where Pillow has FreeType), so it exists on every machine.

Imports numpy and pillow only.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["class_color", "draw_detections", "load_font"]

_GOLDEN = 0.618033988749895  # hue step: neighbouring labels get far-apart hues


def class_color(label: int) -> tuple[int, int, int]:
    """RGB colour of object class ``label`` (1..C); the same label always gets the same colour."""
    hue = (0.02 + (int(label) - 1) * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def load_font(size: int) -> Any:
    """Pillow's built-in font at ``size`` px (FreeType), or its fixed bitmap font on an old Pillow."""
    try:
        return ImageFont.load_default(size=max(8, int(size)))
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def _label_text(label: int, score: float | None, names: Sequence[str] | None) -> str:
    name = names[label - 1] if names is not None and 1 <= label <= len(names) else f"class {label}"
    return name if score is None else f"{name} {score:.2f}"


def draw_detections(image: np.ndarray, boxes: Any, labels: Any, scores: Any = None,
                    names: Sequence[str] | None = None, *, line_width: int | None = None,
                    font_size: int | None = None, show_labels: bool = True) -> np.ndarray:
    """Draw detections on a copy of ``image``; return it as uint8 [H, W, 3] RGB.

    ``image``: uint8 [H, W, 3] RGB. ``boxes``: [K, 4] xyxy in pixels of this image. ``labels``: [K]
    ints in 1..C (``names[L - 1]`` is written; ``"class L"`` without names). ``scores``: [K] or
    None (no score in the label). Boxes are drawn lowest score first, so the best one is on top.
    ``line_width`` / ``font_size`` default to sizes that grow with the picture.
    """
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {getattr(image, 'dtype', type(image).__name__)} "
                         f"{getattr(image, 'shape', '')}")
    boxes_a = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels_a = np.asarray(labels).reshape(-1).astype(np.int64)
    scores_a = None if scores is None else np.asarray(scores, dtype=np.float32).reshape(-1)
    if labels_a.shape[0] != boxes_a.shape[0] or (scores_a is not None and scores_a.shape[0] != boxes_a.shape[0]):
        raise ValueError(f"boxes [K, 4], labels [K] and scores [K] must agree on K; got {boxes_a.shape}, "
                         f"{labels_a.shape}, {None if scores_a is None else scores_a.shape}")
    h, w = image.shape[:2]
    lw = line_width or max(1, round((h + w) / 2 * 0.004))
    font = load_font(font_size or max(10, round((h + w) / 2 * 0.035)))
    canvas = Image.fromarray(image).copy()
    draw = ImageDraw.Draw(canvas)
    order = np.argsort(scores_a, kind="stable") if scores_a is not None else np.arange(len(labels_a))
    for i in order:
        color = class_color(int(labels_a[i]))
        x0, y0, x1, y1 = (float(v) for v in boxes_a[i])
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=color, width=lw)
        if show_labels:
            score = None if scores_a is None else float(scores_a[i])
            _draw_tag(draw, _label_text(int(labels_a[i]), score, names), (x0, y0), color, font, (w, h))
    return np.asarray(canvas, dtype=np.uint8)


def _draw_tag(draw: Any, text: str, corner: tuple[float, float], color: tuple[int, int, int], font: Any,
              size_wh: tuple[int, int]) -> None:
    """A filled tag with ``text`` just above the box's top-left corner (inside the box at the top edge)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 4
    x = min(max(0.0, corner[0]), max(0.0, size_wh[0] - tw))
    y = corner[1] - th if corner[1] - th >= 0 else max(0.0, corner[1])
    draw.rectangle([x, y, x + tw, y + th], fill=color)
    draw.text((x + 2 - left, y + 2 - top), text, fill=_text_color(color), font=font)
