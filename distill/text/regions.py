"""Region labels of a text / non-text image from its text-line boxes.

The image is split into ``g x g`` equal regions (grids 3 and 5: M = 9 + 25 = 34 regions). Region ``(r, c)``
of grid ``g`` covers ``x in [c W/g, (c+1) W/g]`` and ``y in [r H/g, (r+1) H/g]``; row ``r`` runs top to
bottom, column ``c`` left to right.

The rule is MSP-Net's, as the text / non-text distillation paper states it (section III.D, "Network
Training"): "only when the proportion of the text image area exceeds 0.05 and the height of the text line
exceeds 1/2 of the height of the image area, the corresponding label is set to 1". Read here as:

* area: the area of the UNION of all text boxes inside the region, divided by the region's area, is
  strictly greater than ``min_area`` (0.05);
* height: at least one text line that overlaps the region (positive intersection area) has a height
  strictly greater than ``min_height`` (0.5) times the region's height. "The height of the text line" is
  read as the whole line's height (``clip_height=False``): a line that is clearly large but straddles a
  region border then still labels the regions it covers enough of (the area condition guards against
  slivers). ``clip_height=True`` uses the height of the part of the line inside the region instead.

The same paper then relaxes the rule ("as long as the overlapping ratio between the text area and the image
area reaches 0.01, we set the label of the image area as 1", and section IV.A: "A threshold (1%
particularly in this paper)"): that is ``OVERLAP_RULE`` (area > 0.01, no height condition). It is the rule
the paper's reported numbers were trained with ("the following experiments prove that this setting can
significantly improve the performance"), so it is the default (``PAPER_RULE``); MSP-Net's stricter rule is
the option for comparison.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRIDS: tuple[int, ...] = (3, 5)


@dataclass(frozen=True)
class RegionRule:
    """When a region is text: union text area / region area > min_area and, for some line overlapping the
    region, line height > min_height * region height (whole line, or the clipped part if clip_height)."""

    min_area: float = 0.05
    min_height: float = 0.5
    clip_height: bool = False


MSP_RULE = RegionRule()
OVERLAP_RULE = RegionRule(min_area=0.01, min_height=0.0)
PAPER_RULE = OVERLAP_RULE


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    if not np.all(np.isfinite(b)):
        raise ValueError(f"text boxes must be finite xyxy pixel coordinates, got {b.tolist()}")
    return b


def union_area_fraction(boxes: np.ndarray, image_hw: tuple[int, int], grid: int) -> np.ndarray:
    """Exact union area of ``boxes`` inside each region, as a fraction of the region's area.

    boxes: float [N, 4] xyxy in pixels (any N >= 0; clipped to the image). image_hw: (H, W) in pixels.
    Returns float64 [grid, grid] in [0, 1]. Exact (coordinate compression over box and region edges), so
    overlapping boxes are not counted twice.
    """
    h, w = float(image_hw[0]), float(image_hw[1])
    b = _check_boxes(boxes)
    b = np.clip(b, 0.0, [w, h, w, h])
    b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    if len(b) == 0:
        return np.zeros((grid, grid))
    edges = np.arange(grid + 1, dtype=np.float64) / grid
    xs = np.unique(np.concatenate([b[:, 0], b[:, 2], edges * w]))
    ys = np.unique(np.concatenate([b[:, 1], b[:, 3], edges * h]))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2                 # [X], [Y] cell centres
    in_x = (b[:, None, 0] <= cx[None]) & (cx[None] < b[:, None, 2])        # [N, X]
    in_y = (b[:, None, 1] <= cy[None]) & (cy[None] < b[:, None, 3])        # [N, Y]
    covered = np.any(in_y[:, :, None] & in_x[:, None, :], axis=0)          # [Y, X]
    cell_area = np.diff(ys)[:, None] * np.diff(xs)[None, :]                # [Y, X]
    col = np.minimum((cx * grid / w).astype(np.int64), grid - 1)           # [X] region column of each cell
    row = np.minimum((cy * grid / h).astype(np.int64), grid - 1)           # [Y]
    flat = (row[:, None] * grid + col[None, :]).ravel()
    area = np.bincount(flat, weights=(covered * cell_area).ravel(), minlength=grid * grid)
    return area.reshape(grid, grid) / (w * h / (grid * grid))


def line_height_ok(boxes: np.ndarray, image_hw: tuple[int, int], grid: int, rule: RegionRule) -> np.ndarray:
    """bool [grid, grid]: some line overlapping the region is taller than rule.min_height x region height.

    boxes: float [N, 4] xyxy pixels, one per text line.
    """
    h, w = float(image_hw[0]), float(image_hw[1])
    b = _check_boxes(boxes)
    if len(b) == 0:
        return np.zeros((grid, grid), dtype=bool)
    edges = np.arange(grid + 1, dtype=np.float64) / grid
    rx0, rx1 = edges[:-1] * w, edges[1:] * w                               # [G] region x range
    ry0, ry1 = edges[:-1] * h, edges[1:] * h                               # [G] region y range
    ix = np.minimum(b[:, None, 2], rx1[None]) - np.maximum(b[:, None, 0], rx0[None])   # [N, G] (columns)
    iy = np.minimum(b[:, None, 3], ry1[None]) - np.maximum(b[:, None, 1], ry0[None])   # [N, G] (rows)
    overlap = (iy[:, :, None] > 0) & (ix[:, None, :] > 0)                  # [N, rows, cols]
    height = iy if rule.clip_height else np.repeat(b[:, 3:4] - b[:, 1:2], grid, axis=1)  # [N, rows]
    tall = height > rule.min_height * (h / grid)                           # [N, rows]
    return np.any(overlap & tall[:, :, None], axis=0)


def region_labels(boxes: np.ndarray, image_hw: tuple[int, int], grid: int,
                  rule: RegionRule = PAPER_RULE) -> np.ndarray:
    """Region labels of one image on one grid: float32 [grid, grid] of 0 / 1 (row-major, top-left first).

    boxes: float [N, 4] xyxy in pixels of the text lines (N = 0 for a non-text image); image_hw: (H, W).
    """
    if grid < 1 or image_hw[0] <= 0 or image_hw[1] <= 0:
        raise ValueError(f"region grid must be >= 1 and image size positive, got grid={grid}, size={image_hw}")
    area_ok = union_area_fraction(boxes, image_hw, grid) > rule.min_area
    return (area_ok & line_height_ok(boxes, image_hw, grid, rule)).astype(np.float32)


def region_label_grids(boxes: np.ndarray, image_hw: tuple[int, int], grids: tuple[int, ...] = GRIDS,
                       rule: RegionRule = PAPER_RULE) -> dict[int, np.ndarray]:
    """``{g: float32 [g, g]}`` for each grid in ``grids`` (default 3 and 5)."""
    return {g: region_labels(boxes, image_hw, g, rule) for g in grids}
