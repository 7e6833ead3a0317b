"""The embedded synthetic detection dataset ("shapes"): seeded, generated once, cached on disk.

Eight object classes told apart by GEOMETRY only (:data:`CLASS_NAMES`). Colours are drawn at
random per object from one shared distribution and textures (solid, stripes, checker, noise) are
drawn independently of the class, so neither colour nor texture is a shortcut. Every image has a
cluttered background: a two-colour gradient, pixel noise, random lines, partial arcs and
unlabelled irregular blobs (star-convex polygons with random radii, which match no class).

Objects: 1..6 per image (about 3 % of the images have none). Each object first picks one of
COCO's area ranges with equal probability -- small (< 32^2 px), medium, large (> 96^2) -- and is
then scaled so that its BOX area lands in that range; aspect ratio log-uniform in [0.5, 2],
rotation +-15 deg (square vs diamond stay 45 deg apart; triangles and stars also flip
orientation). Objects are placed largest first, each at a random position whose box overlaps every
earlier box by at most 25 % of the smaller of the two (objects touch and partly hide each other but
are never buried; an object with no such position among 20 tries is left out). An object whose
visible pixels are still < 40 % of its own is DROPPED from the annotations (it stays in the picture
as clutter). Kept annotations use the full (amodal) tight box of the drawn shape,
``area = w * h`` of that box, ``iscrowd = 0``.

The small-objects variant (spec ``shapes-small``, parameter ``objects="small"``) is the same generator
on 512 x 512 px images with other size buckets, in image pixels: 70 % of the objects in [16^2, 48^2),
20 % in [48^2, 96^2), 10 % in [96^2, 160^2), and 1..12 objects per image; resized to a 256 px (300 px)
input, about three quarters of the boxes are below 32^2 px. It is cached in its own
``shapes-small-v<VERSION>-<hash>`` folder.

Version 2 (this one) is the version-1 design with bounded overlap, at most 6 objects and lighter
clutter (0-2 blobs, fewer lines, less pixel noise): version 1 let large objects be 60 % hidden under
later ones and was so cluttered that no detector learned it in a CPU-sized schedule.

On disk (COCO format, the same loader as real COCO data reads it)::

    DATA_ROOT/shapes-v<VERSION>-<hash of params>/
        train/000000.png ...          val/000000.png ...
        annotations/instances_train.json   annotations/instances_val.json

Generation is deterministic: image ``i`` of split ``s`` is drawn from its own generator seeded
with ``(seed, s, i)``, so the same parameters give byte-identical JSON and identical pixels. It is
written into a temporary folder and renamed into place, so an interrupted run never leaves a
half dataset behind.

CLI: ``python -m distill.data.shapes --out DIR --num-train 8 --num-val 4 [--variant shapes-small]`` (also
writes a preview grid PNG with the boxes drawn).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from runtime.cli import command, ProductParser

# The on-disk layout (folder name, default parameters, split files) is shared with the evaluation
# readers, which find this dataset without torch. Bump SHAPES_VERSION there whenever the drawing
# code here changes what a given seed produces.
from runtime.datasets import (  # noqa: F401 (re-exported)
    DEFAULT_PARAMS, SHAPES_VARIANTS, SHAPES_VERSION, SPLITS, dataset_name, resolve_params, split_paths,
)

CLASS_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "cross", "ring", "diamond",
)
#: COCO category ids of :data:`CLASS_NAMES`, in the same order.
CATEGORY_IDS: tuple[int, ...] = tuple(range(1, len(CLASS_NAMES) + 1))

_SPLIT_CODE = {"train": 0, "val": 1}

# Box-area ranges (px^2) for COCO's small / medium / large buckets; the large upper bound is
# further limited by the image size.
_AREA_RANGES = ((10.0 ** 2, 32.0 ** 2), (32.0 ** 2, 96.0 ** 2), (96.0 ** 2, 150.0 ** 2))
_P_EMPTY = 0.03
_MAX_OBJECTS = 6
_MAX_OVERLAP = 0.25  # two objects' boxes may share at most this fraction of the smaller box
_PLACEMENT_TRIES = 20
_MIN_VISIBLE = 0.4  # drop annotations occluded by more than 60 %
_TEXTURES = ("solid", "stripes", "checker", "noise")
# objects="small": (area ranges in px^2 of the image, probability of each, most objects per image).
_SMALL_MIX = (((16.0 ** 2, 48.0 ** 2), (48.0 ** 2, 96.0 ** 2), (96.0 ** 2, 160.0 ** 2)), (0.7, 0.2, 0.1), 12)


# --------------------------------------------------------------------------------------------
# Geometry: unit shapes as (outer polygon [N, 2], hole polygon [M, 2] or None), extent ~[-1, 1].
# --------------------------------------------------------------------------------------------

def _ngon(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = phase + 2.0 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross(arm: float = 1.0 / 3.0) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                     (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=np.float64)


_UNIT_SHAPES: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
    "circle": (_ngon(48), None),
    "square": (np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64), None),
    "triangle": (np.array([(0, -1), (1, 1), (-1, 1)], dtype=np.float64), None),
    "star": (_star(), None),
    "hexagon": (_ngon(6), None),
    "cross": (_cross(), None),
    "ring": (_ngon(48), _ngon(48, radius=0.55)),
    "diamond": (np.array([(0, -1), (1, 0), (0, 1), (-1, 0)], dtype=np.float64), None),
}
# Classes whose orientation may also be flipped by a multiple of 90 deg (still the same class).
_FLIPPABLE = {"triangle": 4, "star": 2}


def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


# --------------------------------------------------------------------------------------------
# Rasterisation and texturing
# --------------------------------------------------------------------------------------------

def _rasterise(polys: Sequence[tuple[np.ndarray, int]], x0: int, y0: int, w: int, h: int,
               ss: int) -> np.ndarray:
    """Antialiased coverage of polygons in the pixel window [x0, x0+w) x [y0, y0+h).

    ``polys``: (points [N, 2] in image pixels, fill 255 or 0), drawn in order (0 cuts holes).
    Returns float32 [h, w] in [0, 1]; pixel (i, j) covers [j, j+1) x [i, i+1).
    """
    mask = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(mask)
    for pts, fill in polys:
        # PIL fills a pixel when its integer coordinate is inside: shift so centres are sampled.
        q = (pts - np.array([x0, y0])) * ss - 0.5
        draw.polygon([(float(a), float(b)) for a, b in q], fill=fill)
    m = np.asarray(mask, dtype=np.float32).reshape(h, ss, w, ss).mean(axis=(1, 3))
    return m / 255.0


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=3).astype(np.float32)


def _texture(rng: np.random.Generator, kind: str, c1: np.ndarray, c2: np.ndarray,
             x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """A [h, w, 3] float32 texture patch (absolute pixel coordinates x0.., y0..)."""
    if kind == "solid":
        return np.broadcast_to(c1, (h, w, 3))
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
    if kind == "stripes":
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(3.0, 10.0)
        t = (xx * math.cos(ang) + yy * math.sin(ang)) / period
        sel = (t - np.floor(t)) < 0.5
    elif kind == "checker":
        period = int(rng.integers(2, 8))
        sel = ((np.floor(xx / period) + np.floor(yy / period)) % 2) == 0
    elif kind == "noise":
        noise = rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(20.0, 50.0)
        return np.clip(c1 + noise, 0, 255)
    else:  # pragma: no cover - internal table
        raise AssertionError(kind)
    return np.where(sel[..., None], c1, c2)


def _composite(canvas: np.ndarray, alpha: np.ndarray, tex: np.ndarray, x0: int, y0: int) -> None:
    h, w = alpha.shape
    region = canvas[y0:y0 + h, x0:x0 + w]
    a = alpha[..., None]
    region *= 1.0 - a
    region += tex * a


def _far_colour(rng: np.random.Generator, ref: np.ndarray, tries: int = 3) -> np.ndarray:
    """The random colour (of ``tries``) farthest from ``ref``: objects stay visible on clutter."""
    cands = [_random_colour(rng) for _ in range(tries)]
    return max(cands, key=lambda c: float(np.sum((c - ref) ** 2)))


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------

def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    ca, cb = _random_colour(rng), _random_colour(rng)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(ang) + yy * math.sin(ang)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    canvas = ca + (cb - ca) * t[..., None]
    sigma = rng.uniform(0.0, 10.0)
    canvas += rng.standard_normal((h, w, 3), dtype=np.float32) * sigma
    return np.clip(canvas, 0, 255).astype(np.float32)


def _draw_lines_and_arcs(rng: np.random.Generator, img: Image.Image, n_lines: int,
                         n_arcs: int) -> None:
    w, h = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(n_lines):
        pts = [(float(rng.uniform(-0.2, 1.2) * w), float(rng.uniform(-0.2, 1.2) * h)) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in _random_colour(rng)), width=int(rng.integers(1, 4)))
    for _ in range(n_arcs):
        r = rng.uniform(6, 0.4 * min(w, h))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        start = rng.uniform(0, 360)
        span = rng.uniform(60, 270)  # never a closed ring
        draw.arc([cx - r, cy - r, cx + r, cy + r], start=start, end=start + span,
                 fill=tuple(int(v) for v in _random_colour(rng)), width=int(rng.integers(2, 6)))


def _blob(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """An irregular star-convex polygon (unlabelled distractor) in image pixels."""
    n = int(rng.integers(7, 12))
    t = np.sort(rng.uniform(0, 2 * np.pi, size=n))
    r = rng.uniform(0.35, 1.0, size=n)
    size = math.sqrt(rng.uniform(10 ** 2, 70 ** 2))
    pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1) * size / 2
    pts *= np.array([math.exp(rng.uniform(-0.5, 0.5)), 1.0])
    return pts + np.array([rng.uniform(0, w), rng.uniform(0, h)])


def _paint(rng: np.random.Generator, canvas: np.ndarray, polys: list[tuple[np.ndarray, int]]
           ) -> tuple[np.ndarray, int, int] | None:
    """Draw textured polygons onto ``canvas``; returns (coverage [h, w], x0, y0) or None if off-image."""
    H, W = canvas.shape[:2]
    outer = polys[0][0]
    x0 = max(int(math.floor(outer[:, 0].min())), 0)
    y0 = max(int(math.floor(outer[:, 1].min())), 0)
    x1 = min(int(math.ceil(outer[:, 0].max())), W)
    y1 = min(int(math.ceil(outer[:, 1].max())), H)
    if x1 <= x0 or y1 <= y0:
        return None
    w, h = x1 - x0, y1 - y0
    ss = 4 if min(w, h) < 24 else 2
    alpha = _rasterise(polys, x0, y0, w, h, ss)
    if alpha.sum() < 1.0:
        return None
    region = canvas[y0:y1, x0:x1]
    ref = (region * alpha[..., None]).sum(axis=(0, 1)) / alpha.sum()
    kind = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
    tex = _texture(rng, kind, _far_colour(rng, ref), _random_colour(rng), x0, y0, w, h)
    _composite(canvas, alpha, tex, x0, y0)
    return alpha, x0, y0


def _box_overlap(box: np.ndarray, others: Sequence[np.ndarray]) -> float:
    """Largest intersection of xyxy ``box`` with any of ``others``, as a fraction of the smaller box's
    area (0 when there are none): bounds how much either object can hide the other."""
    best = 0.0
    area = (box[2] - box[0]) * (box[3] - box[1])
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            best = max(best, iw * ih / min(area, (o[2] - o[0]) * (o[3] - o[1])))
    return best


def _sample_object(rng: np.random.Generator, W: int, H: int, placed: Sequence[np.ndarray],
                   bucket: int, area_ranges: Sequence[tuple[float, float]] = _AREA_RANGES
                   ) -> tuple[int, list[tuple[np.ndarray, int]], np.ndarray] | None:
    """Pick class, aspect, rotation and position of an object whose box area lies in size bucket
    ``bucket`` (index into ``area_ranges``); returns (label index, polys, box).

    The position is re-drawn (up to ``_PLACEMENT_TRIES`` times) until the box overlaps every box in
    ``placed`` by at most ``_MAX_OVERLAP`` of the smaller box; None when no such position is found.
    """
    cls = int(rng.integers(len(CLASS_NAMES)))
    name = CLASS_NAMES[cls]
    outer, hole = _UNIT_SHAPES[name]
    lo, hi = area_ranges[bucket]
    hi = min(hi, 0.45 * W * H)
    if hi <= lo:
        lo = hi / 2
    area = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    for _ in range(10):
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        angle = math.radians(rng.uniform(-15.0, 15.0))
        if name in _FLIPPABLE:
            angle += (np.pi * 2 / _FLIPPABLE[name]) * int(rng.integers(_FLIPPABLE[name]))
        stretch = np.array([math.sqrt(aspect), 1.0 / math.sqrt(aspect)])
        o = _rotate(outer * stretch, angle)
        bw, bh = np.ptp(o[:, 0]), np.ptp(o[:, 1])
        s = math.sqrt(area / (bw * bh))
        bw, bh = bw * s, bh * s
        if bw <= W - 2 and bh <= H - 2 and min(bw, bh) >= 4:
            break
    else:
        return None
    o = o * s
    polys = [(o, 255)]
    if hole is not None:
        polys.append((_rotate(hole * stretch, angle) * s, 0))
    # Position: top-left of the box uniformly inside the image, away from earlier objects.
    for _ in range(_PLACEMENT_TRIES):
        ox = rng.uniform(1.0, W - 1.0 - bw) - o[:, 0].min()
        oy = rng.uniform(1.0, H - 1.0 - bh) - o[:, 1].min()
        moved = [(p + np.array([ox, oy]), f) for p, f in polys]
        p = moved[0][0]
        box = np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])
        if _box_overlap(box, placed) <= _MAX_OVERLAP:
            return cls, moved, box
    return None


def render_image(rng: np.random.Generator, size_range: Sequence[int] = (160, 256), objects: str | None = None
                 ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one image (``objects``: None for COCO's three size buckets drawn alike, "small" for the
    small-objects mix, see the module docstring).

    Returns ``(image uint8 [H, W, 3] RGB, objects)`` where each object is
    ``{"label": index into CLASS_NAMES, "box": [x1, y1, x2, y2] absolute pixels (float)}``.
    """
    lo, hi = int(size_range[0]), int(size_range[1])
    W, H = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    canvas = _background(rng, W, H)

    # Background clutter: lines and arcs (PIL), then unlabelled blobs.
    pil = Image.fromarray(canvas.astype(np.uint8))
    _draw_lines_and_arcs(rng, pil, int(rng.integers(2, 7)), int(rng.integers(0, 3)))
    canvas = np.asarray(pil, dtype=np.float32).copy()
    for _ in range(int(rng.integers(0, 3))):
        _paint(rng, canvas, [(_blob(rng, W, H), 255)])

    ranges, probs, most = _SMALL_MIX if objects == "small" else (_AREA_RANGES, None, _MAX_OBJECTS)
    n = 0 if rng.uniform() < _P_EMPTY else int(rng.integers(1, most + 1))
    owner = np.full((H, W), -1, dtype=np.int16)
    drawn: list[tuple[int, np.ndarray, int]] = []  # (label, box, own pixel count)
    # Size buckets drawn up front and placed largest first, so that large objects still find room.
    buckets = rng.integers(3, size=n) if probs is None else rng.choice(3, size=n, p=probs)
    for bucket in sorted(buckets.tolist(), reverse=True):
        obj = _sample_object(rng, W, H, [d[1] for d in drawn], bucket, ranges)
        if obj is None:
            continue
        cls, polys, box = obj
        painted = _paint(rng, canvas, polys)
        if painted is None:
            continue
        alpha, x0, y0 = painted
        m = alpha > 0.5
        k = len(drawn)
        owner[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]][m] = k
        drawn.append((cls, box, int(m.sum())))

    # A few thin lines over everything: objects are not always on top.
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    _draw_lines_and_arcs(rng, img, int(rng.integers(0, 2)), 0)

    visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(drawn))
    objects = []
    for k, (cls, box, full) in enumerate(drawn):
        if full == 0 or visible[k] < _MIN_VISIBLE * full:
            continue  # occluded > 60 %: left in the picture as clutter, not annotated
        x1, y1 = max(box[0], 0.0), max(box[1], 0.0)
        x2, y2 = min(box[2], float(W)), min(box[3], float(H))
        objects.append({"label": cls, "box": [x1, y1, x2, y2]})
    return np.asarray(img), objects


# --------------------------------------------------------------------------------------------
# Dataset on disk
# --------------------------------------------------------------------------------------------

def _box_to_coco(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def write_split(out_dir: Path, split: str, num: int, params: dict[str, Any],
                progress: bool = True) -> dict[str, Any]:
    """Render ``num`` images of ``split`` into ``out_dir/split`` and return the COCO dict."""
    img_dir = out_dir / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(num), desc=f"shapes {split}", disable=not progress, leave=False):
        rng = np.random.default_rng([params["seed"], _SPLIT_CODE[split], i])
        img, objects = render_image(rng, params["size_range"], params.get("objects"))
        file_name = f"{i:06d}.png"
        Image.fromarray(img).save(img_dir / file_name, compress_level=1)
        images.append({"id": i + 1, "file_name": file_name, "width": int(img.shape[1]),
                       "height": int(img.shape[0])})
        for obj in objects:
            bbox = _box_to_coco(obj["box"])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": CATEGORY_IDS[obj["label"]], "bbox": bbox,
                                "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0})
    return {
        "info": {"description": "fdet synthetic shapes", "version": SHAPES_VERSION,
                 "params": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": n, "supercategory": "shape"}
                       for cid, n in zip(CATEGORY_IDS, CLASS_NAMES)],
    }


def cache_problem(root: Path, params: dict[str, Any]) -> str | None:
    """What is wrong with a generated dataset folder (None: it looks complete): each split's annotation json
    must parse, list as many images as ``params`` asks for, and every image file must be there and not empty."""
    if not root.is_dir():
        return f"{root} is not a folder"
    for split, num in (("train", params["num_train"]), ("val", params["num_val"])):
        ann, img_dir = split_paths(root, split)
        try:
            images = json.loads(ann.read_text(encoding="utf-8"))["images"]
            files = [img_dir / im["file_name"] for im in images]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{ann} is unreadable: {type(e).__name__}: {' '.join(str(e).split())[:120]}"
        if len(files) != num:
            return f"{ann} lists {len(files)} images, expected {num}"
        bad = next((f for f in files if not f.is_file() or f.stat().st_size == 0), None)
        if bad is not None:
            return f"image file {bad} is missing or empty"
    return None


def _set_aside(root: Path) -> None:
    """Rename a damaged dataset folder out of the way (then remove it), so it is generated again in its place."""
    aside = root.parent / f".{root.name}.damaged-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(root, aside)
    except FileNotFoundError:  # another process set it aside first
        return
    shutil.rmtree(aside, ignore_errors=True)


def ensure_shapes_dataset(data_root: str | os.PathLike = "data", *, progress: bool = True,
                          variant: str = "shapes", **kwargs: Any) -> Path:
    """Return the folder of the shapes dataset for these parameters, generating it once.

    ``variant``: "shapes" or "shapes-small" (:data:`SHAPES_VARIANTS`: the small-objects variant's
    defaults are 512 x 512 px images and ``objects="small"``). ``kwargs``: num_train (1500), num_val (300),
    seed (0), size_range ((160, 256): image width and height each uniform in [min, max]). Generation writes
    to a temporary sibling folder that is renamed into place when complete; concurrent generators (e.g. several ranks) are safe, the
    first rename wins. A damaged cached folder (:func:`cache_problem`) is generated again, with a warning; a
    folder of that name without the ``annotations`` folder is not one this generator wrote: RuntimeError.
    """
    params = resolve_params(variant, **kwargs)
    root = Path(data_root) / dataset_name(params)
    if root.exists():
        why = cache_problem(root, params)
        if why is None:
            return root
        if not (root / "annotations").is_dir():  # nothing this generator writes: not ours to delete
            raise RuntimeError(f"{root} exists but has no annotations folder: it is not a shapes dataset written "
                               f"by this generator; delete it to regenerate")
        warnings.warn(f"the cached shapes dataset {root} is damaged ({why}): it is generated again", stacklevel=2)
        _set_aside(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for split, num in (("train", params["num_train"]), ("val", params["num_val"])):
            coco = write_split(tmp, split, num, params, progress=progress)
            ann, _ = split_paths(tmp, split)
            ann.parent.mkdir(parents=True, exist_ok=True)
            ann.write_text(json.dumps(coco, separators=(",", ":")))
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.exists():  # a real failure, not "someone else finished first"
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def preview_grid(root: Path, split: str = "train", n: int = 16, cols: int = 4,
                 cell: int = 256) -> Image.Image:
    """A grid of the first ``n`` images of ``split`` with their boxes and class names drawn."""
    from runtime.preprocess import load_image  # the one image decoder of the project

    ann, img_dir = split_paths(root, split)
    coco = json.loads(ann.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    imgs = coco["images"][:n]
    rows = max(1, math.ceil(len(imgs) / cols))
    grid = Image.new("RGB", (cols * cell, rows * cell), (40, 40, 40))
    for k, info in enumerate(imgs):
        im = Image.fromarray(load_image(img_dir / info["file_name"]))
        draw = ImageDraw.Draw(im)
        for a in by_image.get(info["id"], []):
            x, y, w, h = a["bbox"]
            draw.rectangle([x, y, x + w, y + h], outline=(255, 255, 0))
            draw.text((x + 1, y + 1), names[a["category_id"]], fill=(255, 255, 0))
        im.thumbnail((cell, cell))
        grid.paste(im, ((k % cols) * cell, (k // cols) * cell))
    return grid


@command("python -m distill.data.shapes")
def main(argv: Sequence[str] | None = None) -> None:
    ap = ProductParser(prog="python -m distill.data.shapes", description=__doc__.split("\n")[0],
                                 allow_abbrev=False)
    ap.add_argument("--out", default="data", help="data root; the dataset goes to OUT/shapes-v*-<hash>")
    ap.add_argument("--num-train", type=int, default=DEFAULT_PARAMS["num_train"])
    ap.add_argument("--num-val", type=int, default=DEFAULT_PARAMS["num_val"])
    ap.add_argument("--seed", type=int, default=DEFAULT_PARAMS["seed"])
    ap.add_argument("--size-range", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                    help="image width and height, each uniform in [MIN, MAX] (default: 160 256; shapes-small: 512 512)")
    ap.add_argument("--variant", default="shapes", choices=list(SHAPES_VARIANTS),
                    help="'shapes' (COCO's three size buckets alike) or 'shapes-small' (most objects below 32^2 px "
                         "at a 256 px input, 512 px images)")
    ap.add_argument("--no-preview", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    root = ensure_shapes_dataset(args.out, num_train=args.num_train, num_val=args.num_val, variant=args.variant,
                                 seed=args.seed, size_range=tuple(args.size_range) if args.size_range else None)
    print(f"shapes dataset: {root} ({time.perf_counter() - t0:.1f} s)")
    for split in SPLITS:
        ann, _ = split_paths(root, split)
        coco = json.loads(ann.read_text())
        print(f"  {split}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")
    if not args.no_preview and args.num_train > 0:
        path = Path(args.out) / f"{root.name}-preview.png"
        preview_grid(root, "train").save(path)
        print(f"  preview: {path}")


if __name__ == "__main__":
    main()
