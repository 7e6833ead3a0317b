"""Anchor fit: how well a detector's default boxes cover a dataset's boxes, and what to change when they do not.

::

    python -m distill.anchors --data SPEC --img-size 256 [--model NAME] [--out DIR]
    python -m distill.anchors --data SPEC --img-size 384x512 --sizes 256,320,384 ...   (H x W, height first)

The boxes are the training boxes as the network sees them: each image's annotations through the training
resize (``--resize`` stretch / letterbox, :func:`distill.data.transforms.build_train_transform` without
augmentation, on a blank image of the record's size) to the ``--img-size`` input; crowd / difficult boxes
are left out, as the loss leaves them out of matching. Every box gets its best IoU with any anchor of the
model at that input size (``torchvision.ops.box_iou``); the matcher (:class:`distill.models.Matcher`)
makes an anchor positive at IoU >= ``--match-iou``, so a box whose best IoU is below it is learned only
through the one anchor forced onto it.

Per COCO size bucket (small < 32^2, medium < 96^2, large; measured on the box area w x h in pixels of
the resized INPUT, where COCO measures the annotation area in the original image) the report gives the
share of boxes with an anchor at IoU >= 0.5 and >= the matcher threshold, and the median best IoU. It
then tries the input sizes of ``--sizes`` (same resize; with a non-square ``--img-size`` H x W an entry S
is the input of short side S with the same aspect, both sides scaled by S / min(H, W) and rounded to whole
pixels, an entry HxW is taken as it is) and a grid of ``min_ratio`` / ``max_ratio`` of
:class:`~distill.models.anchors.DefaultBoxGenerator` (the model's aspect ratios kept) and suggests the
best. Written to ``--out``: ``anchor_fit.json``, ``anchor_fit.txt`` (the table printed) and
``anchor_fit.png`` (histogram of box sizes, sqrt(w h) in input pixels, against each feature map's anchor
sizes); an existing report is kept unless ``--overwrite``. Anchors are normalised to the input, so on an
H x W input an anchor of scale s is s W px wide and s H px high: ``anchor_sizes`` gives per map both
sides in px (``wh_px``) and the side sqrt(w h) = s sqrt(H W) the histogram compares (``sizes_px``).

``distill.train`` calls :func:`fit_warning` at the start of a run: one warning line when more than a
quarter of the training boxes (of at most 500 images) have no anchor at the matcher's threshold.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.ops import box_iou

from runtime.atomic import atomic_path, write_json_atomic, write_text_atomic
from runtime.cli import ProductParser, command, out_folder
from runtime.sizes import as_hw, size_text, size_value

#: COCO's area buckets (px^2 of the network input here): name, lower bound (inclusive), upper bound (exclusive).
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, math.inf))
IOU_50 = 0.5
#: :func:`fit_warning`: warn when more than this share of the boxes has no anchor at the matcher threshold.
WARN_SHARE = 0.25
WARN_MAX_IMAGES = 500
DEFAULT_SIZES = (256, 320, 384, 512)
MIN_RATIOS = (0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
MAX_RATIOS = (0.45, 0.6, 0.75, 0.9, 0.95)
REPORT_NAMES = ("anchor_fit.json", "anchor_fit.txt", "anchor_fit.png")


# --------------------------------------------------------------------------------------------
# Boxes as the network sees them, and their best anchors.
# --------------------------------------------------------------------------------------------
def spread_indices(n: int, max_images: int | None) -> list[int]:
    """``min(n, max_images)`` indices spread evenly over ``range(n)`` (all of them when ``max_images`` is None)."""
    if max_images is None or max_images >= n:
        return list(range(n))
    return sorted({int(i * n / max_images) for i in range(max_images)})


def input_boxes(records: Sequence[Any], img_size: int | Sequence[int], resize_mode: str = "stretch",
                max_images: int | None = None) -> tuple[torch.Tensor, int]:
    """The non-ignored boxes of ``records`` (:class:`runtime.annotations.ImageRecord`, xyxy pixels of the
    original image) after the training resize to ``img_size`` (S x S or (H, W)): (float32 [M, 4] xyxy normalised
    to the input, number of boxes the resize drops as degenerate). At most ``max_images`` records, spread
    over the set. No image is read: the transform runs on a blank image of the record's size."""
    from .data.transforms import build_train_transform

    tf = build_train_transform(img_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment=False, resize_mode=resize_mode)
    h_in, w_in = as_hw(img_size)
    scale = torch.tensor([w_in, h_in, w_in, h_in], dtype=torch.float32)  # x over W, y over H
    out, dropped = [], 0
    for i in spread_indices(len(records), max_images):
        rec = records[i]
        keep = ~torch.as_tensor(rec.ignore, dtype=torch.bool).reshape(-1)
        boxes = torch.as_tensor(rec.boxes, dtype=torch.float32).reshape(-1, 4)[keep]
        if not len(boxes):
            continue
        h, w = int(rec.height), int(rec.width)
        blank = tv_tensors.Image(torch.zeros(3, 1, 1, dtype=torch.uint8).expand(3, h, w))
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
                  "labels": torch.zeros(len(boxes), dtype=torch.int64),
                  "ignore": torch.zeros(len(boxes), dtype=torch.bool)}
        _, target = tf(blank, target)
        got = target["boxes"].as_subclass(torch.Tensor) / scale
        dropped += len(boxes) - len(got)
        out.append(got.clamp(0.0, 1.0))
    return (torch.cat(out) if out else torch.zeros(0, 4)), dropped


def best_anchor_iou(boxes: torch.Tensor, anchors_cxcywh: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Best IoU of each box (float32 [M, 4] xyxy, normalised) with any anchor (float32 [N, 4] cxcywh,
    normalised, as :class:`~distill.models.anchors.DefaultBoxGenerator` makes them): float32 [M]."""
    from .models.box_coder import cxcywh_to_xyxy

    anchors = cxcywh_to_xyxy(anchors_cxcywh.float())
    if not len(boxes):
        return torch.zeros(0)
    return torch.cat([box_iou(boxes[i:i + chunk].float(), anchors).max(1).values
                      for i in range(0, len(boxes), chunk)])


def box_areas_px(boxes: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """Areas (w x h, px^2 of the ``(H, W)`` input) of normalised xyxy boxes [M, 4]: float32 [M]."""
    h, w = input_hw
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * w * (boxes[:, 3] - boxes[:, 1]).clamp(min=0) * h


def _share(mask: torch.Tensor) -> float | None:
    return float(mask.float().mean()) if mask.numel() else None


def coverage(best_iou: torch.Tensor, areas: torch.Tensor, match_iou: float) -> dict[str, dict[str, Any]]:
    """Per size bucket (:data:`SIZE_BUCKETS`, on ``areas`` px^2) and over ``all`` boxes: ``boxes`` (count),
    ``iou50`` / ``match`` (share in [0, 1] of boxes whose best anchor IoU is >= 0.5 / >= ``match_iou``),
    ``median_iou``; the shares and the median are None for an empty bucket."""
    out = {}
    for name, lo, hi in (*SIZE_BUCKETS, ("all", -math.inf, math.inf)):
        sel = best_iou[(areas >= lo) & (areas < hi)]
        out[name] = {"boxes": int(sel.numel()), "iou50": _share(sel >= IOU_50), "match": _share(sel >= match_iou),
                     "median_iou": float(sel.quantile(0.5)) if sel.numel() else None}
    return out


# --------------------------------------------------------------------------------------------
# Anchors of a model, and of other min / max ratios.
# --------------------------------------------------------------------------------------------
def anchor_ratios(generator: Any) -> tuple[float, float]:
    """(min_ratio, max_ratio) a :class:`~distill.models.anchors.DefaultBoxGenerator` was built with."""
    m = len(generator.aspect_ratios)
    return float(generator.scales[0]), float(generator.scales[m - 1 if m > 1 else 1])


def anchors_with(model: Any, img_size: int | Sequence[int], min_ratio: float, max_ratio: float,
                 feature_sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
    """The model's anchors at ``img_size`` (S or (H, W); its feature maps, or ``feature_sizes`` when given; its
    aspect ratios and clipping) with other scales: float32 [N, 4] normalised cxcywh."""
    from .models.anchors import DefaultBoxGenerator

    gen = model.anchor_generator
    other = DefaultBoxGenerator(gen.aspect_ratios, min_ratio, max_ratio, clip=gen.clip)
    return other(feature_sizes or model.feature_sizes(img_size))


def check_model(model: Any, name: str) -> None:
    """ValueError unless ``model`` has SSD default boxes (``anchor_generator`` and ``anchors(img_size)``)."""
    if not (hasattr(model, "anchor_generator") and hasattr(model, "anchors")):
        raise ValueError(f"--model {name}: has no SSD default boxes (anchor_generator); the anchor-fit report "
                         f"needs an SSD-family model")


def grid_search(boxes: torch.Tensor, model: Any, img_size: int | Sequence[int], match_iou: float,
                min_ratios: Sequence[float] = MIN_RATIOS, max_ratios: Sequence[float] = MAX_RATIOS) -> list[dict]:
    """Share of ``boxes`` (normalised xyxy [M, 4]) with an anchor at IoU >= ``match_iou`` on the ``img_size``
    (S or (H, W)) input for every (min_ratio, max_ratio) of the grid: ``[{"min_ratio", "max_ratio", "match"}]``,
    best first (ties: grid order)."""
    rows, fs = [], model.feature_sizes(img_size)
    for lo in min_ratios:
        for hi in max_ratios:
            if not lo < hi:
                continue
            best = best_anchor_iou(boxes, anchors_with(model, img_size, lo, hi, fs))
            rows.append({"min_ratio": lo, "max_ratio": hi, "match": _share(best >= match_iou)})
    return sorted(rows, key=lambda r: -(r["match"] or 0.0))


# --------------------------------------------------------------------------------------------
# The start-of-training warning.
# --------------------------------------------------------------------------------------------
def fit_warning(dataset: Any, anchors_cxcywh: torch.Tensor, match_iou: float,
                max_images: int = WARN_MAX_IMAGES, spec: str = "SPEC") -> str | None:
    """One warning line when more than :data:`WARN_SHARE` of the training boxes of ``dataset`` (a training
    :class:`~distill.data.DetectionDataset`; at most ``max_images`` images) have no anchor (float32 [N, 4]
    normalised cxcywh) at IoU >= ``match_iou``; None otherwise. ``spec``: the ``--data`` the line suggests."""
    boxes, _ = input_boxes(dataset.records, dataset.img_size, dataset.resize_mode, max_images)
    if not len(boxes):
        return None
    missed = float((best_anchor_iou(boxes, anchors_cxcywh.cpu()) < match_iou).float().mean())
    if missed <= WARN_SHARE:
        return None
    n = len(spread_indices(len(dataset.records), max_images))
    return (f"warning: {100 * missed:.0f} % of the training boxes ({len(boxes)} boxes of {n} images) have no anchor "
            f"at IoU >= {match_iou:g} at {size_text(dataset.img_size)} px: small objects are learned poorly; see "
            f"python -m distill.anchors --data {spec} --img-size {size_text(dataset.img_size)} for a better input "
            "size and anchor ratios")


def print_fit_warning(anchors_cxcywh: torch.Tensor, dataset: Any, match_iou: float, spec: str = "SPEC") -> None:
    """Print :func:`fit_warning`'s line on stderr when there is one (the start of a training run)."""
    line = fit_warning(dataset, anchors_cxcywh, match_iou, spec=spec)
    if line:
        print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------------------------
def sweep_sizes(text: str, img_size: int | Sequence[int]) -> list[tuple[int, int]]:
    """``--sizes`` (comma-separated ``S`` or ``HxW``) -> input sizes (H, W). With a non-square ``img_size``
    H0 x W0 an ``S`` keeps its aspect: both sides scaled by S / min(H0, W0), rounded to whole pixels (short
    side S); ``HxW`` entries are taken as they are. ValueError (one line) for a bad list or a side < 32."""
    h0, w0 = as_hw(img_size)
    out = []
    try:
        for v in (v.strip() for v in text.split(",")):
            if not v:
                continue
            h, w = as_hw(v)
            if "x" not in v.lower() and h0 != w0:
                h, w = round(h0 * h / min(h0, w0)), round(w0 * h / min(h0, w0))
            out.append((h, w))
    except ValueError:
        out = []
    if not out or min(min(hw) for hw in out) < 32:
        raise ValueError(f"--sizes {text!r}: expected comma-separated input sizes S or HxW with sides >= 32, e.g. "
                         f"256,320,384,512 (with a non-square --img-size, S is the short side, the aspect kept)")
    return out


def size_row(records: Sequence[Any], model: Any, size: int | Sequence[int], resize_mode: str, match_iou: float,
             max_images: int | None, grid: bool) -> tuple[dict[str, Any], torch.Tensor]:
    """Coverage of one input size (S or (H, W)) with the model's ratios (and, with ``grid``, the best grid
    ratios), and the boxes measured (float32 [M, 4] xyxy normalised to the input). The row's ``img_size`` is
    the config's form (S when square, else [H, W]), ``size`` its text (``"384x512"``)."""
    boxes, dropped = input_boxes(records, size, resize_mode, max_images)
    best = best_anchor_iou(boxes, model.anchors(as_hw(size)))
    areas = box_areas_px(boxes, as_hw(size))
    row: dict[str, Any] = {"img_size": size_value(size), "size": size_text(size), "boxes": len(boxes),
                           "dropped": dropped,
                           "coverage": coverage(best, areas, match_iou),
                           "small_share": _share(areas < SIZE_BUCKETS[0][2])}
    if grid:
        row["grid"] = grid_search(boxes, model, size, match_iou)
        row["best_ratios"] = row["grid"][0] if row["grid"] else None
    return row, boxes


def suggest(rows: list[dict[str, Any]], tolerance: float = 0.005) -> dict[str, Any]:
    """The smallest input size (fewest pixels) whose coverage at the matcher threshold, with its best grid
    ratios, is within ``tolerance`` of the best size's; with those ratios."""
    def score(r: dict) -> float:
        return (r.get("best_ratios") or {}).get("match") or 0.0
    top = max(score(r) for r in rows)
    pick = min((r for r in rows if score(r) >= top - tolerance), key=lambda r: _area_key(r["img_size"]))
    ratios = pick.get("best_ratios") or {}
    return {"img_size": pick["img_size"], "size": size_text(pick["img_size"]), "min_ratio": ratios.get("min_ratio"),
            "max_ratio": ratios.get("max_ratio"), "match": score(pick)}


def _area_key(img_size: Any) -> tuple[int, int]:
    h, w = as_hw(img_size)
    return h * w, h


def anchor_sizes_px(model: Any, img_size: int | Sequence[int]) -> list[dict[str, Any]]:
    """Per feature map at the ``img_size`` (S or (H, W)) input: its grid [h, w], ``sizes_px`` the side
    sqrt(w h) in input px of its two square-ratio anchors (scales s_k and sqrt(s_k s_k+1): s sqrt(H W)) and
    ``wh_px`` their [width, height] in px (s W, s H: anchors are normalised to the input)."""
    gen = model.anchor_generator
    h, w = as_hw(img_size)
    out = []
    for k, (fh, fw) in enumerate(model.feature_sizes((h, w))):
        scales = (gen.scales[k], math.sqrt(gen.scales[k] * gen.scales[k + 1]))
        out.append({"map": k, "grid": [int(fh), int(fw)], "sizes_px": [s * math.sqrt(h * w) for s in scales],
                    "wh_px": [[s * w, s * h] for s in scales]})
    return out


def build_report(cfg: Any, sizes: Sequence[int | Sequence[int]], max_images: int | None) -> dict[str, Any]:
    """The whole report of a resolved :class:`~distill.config.TrainConfig` (data, model, input size, resize,
    matcher threshold) at ``cfg.data.img_size`` and at each of ``sizes`` (S or (H, W) each)."""
    from .data import build_dataset
    from .models import Matcher, create_model

    d = cfg.data
    ds = build_dataset(d.data, "train", img_size=d.img_size, mean=d.mean, std=d.std, train=True, augment="none",
                       on_bad_sample=d.on_bad_sample, data_root=d.data_root, resize_mode=d.resize_mode,
                       shapes_kwargs={"num_train": d.shapes_train, "num_val": d.shapes_val, "seed": d.shapes_seed})
    model = create_model(cfg.model.name, ds.num_classes, **cfg.model.kwargs).eval()
    check_model(model, cfg.model.name)
    match_iou = Matcher(cfg.model.match_iou).iou_threshold
    n_images = len(spread_indices(len(ds.records), max_images))
    hw = as_hw(d.img_size)
    main, boxes = size_row(ds.records, model, hw, d.resize_mode, match_iou, max_images, grid=True)
    rows = [main] + [size_row(ds.records, model, s, d.resize_mode, match_iou, max_images, grid=True)[0]
                     for s in sorted({as_hw(s) for s in sizes} - {hw}, key=_area_key)]
    rows.sort(key=lambda r: _area_key(r["img_size"]))
    lo, hi = anchor_ratios(model.anchor_generator)
    return {"data": d.data, "dataset": ds.name, "images": n_images, "model": cfg.model.name,
            "model_kwargs": dict(cfg.model.kwargs), "img_size": size_value(hw), "size": size_text(hw),
            "resize": d.resize_mode, "match_iou": match_iou, "min_ratio": lo, "max_ratio": hi,
            "area_measured_on": f"box w x h in pixels of the {hw[0]} x {hw[1]} (H x W) network input after the "
                                f"'{d.resize_mode}' resize (COCO measures the annotation area in the original image)",
            "coverage": main["coverage"], "boxes": main["boxes"], "dropped": main["dropped"],
            "sizes": [{k: v for k, v in r.items() if k != "grid"} for r in rows], "grid": main["grid"],
            "suggestion": suggest(rows), "anchor_sizes": anchor_sizes_px(model, hw),
            "box_sides_px": [round(float(v), 2) for v in box_areas_px(boxes, hw).sqrt()]}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_report(r: dict[str, Any]) -> str:
    """The human table of :func:`build_report`."""
    lines = [f"Anchor fit of {r['model']} {r['model_kwargs'] or ''} on {r['dataset']}: {r['boxes']} boxes of "
             f"{r['images']} images at {size_text(r['img_size'])} px ({r['resize']}); anchors min_ratio "
             f"{r['min_ratio']:g}, max_ratio {r['max_ratio']:g}; matcher IoU {r['match_iou']:g}",
             f"Size buckets on the {r['area_measured_on']}.", "",
             f"{'bucket':<8} {'boxes':>6} {'IoU>=0.5 %':>11} "
             f"{'matcher IoU>=' + format(r['match_iou'], 'g') + ' %':>19} {'median IoU':>10}"]
    for name in (*(b[0] for b in SIZE_BUCKETS), "all"):
        c = r["coverage"][name]
        med = "-" if c["median_iou"] is None else f"{c['median_iou']:.3f}"
        lines.append(f"{name:<8} {c['boxes']:>6} {_pct(c['iou50']):>11} {_pct(c['match']):>19} {med:>10}")
    lines += ["", f"Input sizes (same resize; coverage at IoU >= {r['match_iou']:g}, all boxes):",
              f"{'size':>9} {'small %':>8} {'this model %':>13} {'best grid %':>12}  best min/max ratio"]
    for s in r["sizes"]:
        b = s.get("best_ratios") or {}
        lines.append(f"{size_text(s['img_size']):>9} {_pct(s['small_share']):>8} "
                     f"{_pct(s['coverage']['all']['match']):>13} {_pct(b.get('match')):>12}  "
                     f"{b.get('min_ratio', '-')}/{b.get('max_ratio', '-')}")
    sug = r["suggestion"]
    lines += ["", f"Suggestion: --img-size {size_text(sug['img_size'])} --model-kwargs "
                  f"'{json.dumps({'min_ratio': sug['min_ratio'], 'max_ratio': sug['max_ratio']})}' "
                  f"({_pct(sug['match'])} % of the boxes with an anchor at IoU >= {r['match_iou']:g}; the smallest "
                  f"size within 0.5 points of the best). A larger input also gives small objects more pixels: see "
                  f"the 'small %' column."]
    return "\n".join(lines)


def write_histogram(r: dict[str, Any], path: Path) -> Path | None:
    """Histogram of the boxes' sides (sqrt(w h), input px, log scale) with each map's anchor sizes and the
    32 / 96 px bucket limits; None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sides = np.asarray(r["box_sides_px"], dtype=np.float64)
    sides = sides[sides > 0]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lo = max(1.0, min([sides.min() if sides.size else 1.0] + [a["sizes_px"][0] for a in r["anchor_sizes"]]) / 1.5)
    bins = np.geomspace(lo, max(as_hw(r["img_size"])) * 1.5, 40)
    ax.hist(sides, bins=bins, color="0.6", label=f"boxes ({sides.size})")
    for a in r["anchor_sizes"]:
        for j, v in enumerate(a["sizes_px"]):
            ax.axvline(v, color=f"C{a['map']}", ls="-" if j == 0 else ":", lw=1.2,
                       label=f"map {a['map']} ({a['grid'][0]}x{a['grid'][1]})" if j == 0 else None)
    for v in (32, 96):
        ax.axvline(v, color="k", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"box side sqrt(w h), px of the {size_text(r['img_size'])} px input (H x W; dashed: COCO 32 / "
                  "96 px)")
    ax.set_ylabel("boxes")
    ax.set_title(f"{r['model']} anchors vs {r['dataset']} boxes\n(anchor sides per map, solid: s_k, dotted: "
                 f"sqrt(s_k s_k+1))", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m distill.anchors", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="training set: shapes | shapes-small | coco:ANN.json:IMG_DIR | "
                                                "voc:ROOT:SPLIT (default: the preset's, shapes)")
    p.add_argument("--img-size", default=None, help="network input size in pixels: S (square) or HxW, height first "
                                                    "(384x512: 384 high, 512 wide; default: the preset's, 256)")
    p.add_argument("--model", default=None, help="registered model whose anchors are measured (default: "
                                                 "ssdlite_mobilenetv2)")
    p.add_argument("--model-kwargs", default=None, help="builder kwargs as JSON, e.g. '{\"min_ratio\": 0.05}' "
                                                        "(default: the preset's)")
    p.add_argument("--preset", default="quick", help="training preset the other values come from (default: quick, "
                                                     "as distill.train)")
    p.add_argument("--config", default=None, help="YAML config (e.g. a run's config.yaml) the values come from")
    p.add_argument("--match-iou", type=float, default=None, help="matcher IoU threshold (default: the config's, 0.5)")
    p.add_argument("--resize", default=None, choices=["stretch", "letterbox"], help="training resize (default: "
                                                                                     "the config's, stretch)")
    p.add_argument("--data-root", default=None, help="where the embedded datasets are generated (default: data)")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="input sizes tried for the suggestion, comma-separated S or HxW; with a non-square "
                        "--img-size an S is the short side, the aspect kept (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=None, help="use at most N training images, spread over the "
                                                                "set (default: all)")
    p.add_argument("--out", default="runs/anchor_fit", help="report folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    return p


def _config(args: argparse.Namespace) -> Any:
    from .config import resolve
    from .presets import PRESETS

    given = {"data": args.data, "img_size": args.img_size, "model": args.model, "model_kwargs": args.model_kwargs,
             "preset": args.preset, "config": args.config, "match_iou": args.match_iou, "resize": args.resize,
             "data_root": args.data_root}
    return resolve({k: v for k, v in given.items() if v is not None}, PRESETS)


@command("python -m distill.anchors")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.img_size is not None:
        args.img_size = size_value(args.img_size, "--img-size")
    sweep_sizes(args.sizes, args.img_size or 256)    # a bad list fails before the data is built
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images {args.max_images}: expected an integer >= 1")
    out = out_folder(args.out)
    existing = [n for n in REPORT_NAMES if (out / n).exists()]
    if existing and not args.overwrite:
        raise ValueError(f"--out {out} already holds an anchor-fit report ({', '.join(existing)}); pass --overwrite "
                         f"to replace it")
    cfg = _config(args)
    report = build_report(cfg, sweep_sizes(args.sizes, cfg.data.img_size), args.max_images)
    text = format_report(report)
    print(text)
    write_json_atomic(out / "anchor_fit.json", report)
    write_text_atomic(out / "anchor_fit.txt", text + "\n")
    png = write_histogram(report, out / "anchor_fit.png")
    print(f"\nwrote {out / 'anchor_fit.json'}, anchor_fit.txt" + (", anchor_fit.png" if png else
                                                                    " (install matplotlib for anchor_fit.png)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
