"""Negative anchor filtering, measured: what the ARM removes at a threshold theta, objects included.

``python -m distill.arm_filter --checkpoint runs/refinedet/best.pt [--thetas 0.9,0.99,0.999] [--out DIR]``

RefineDet (Zhang et al. 2018, sec. 3.2, "Negative Anchor Filtering") drops every anchor whose ARM background
confidence is above theta = 0.99 from the ODM's training and zeroes its scores at inference. Filtering helps when
what it drops is background; it hurts when it drops anchors that an object needs. For a RefineDet checkpoint
(with its ARM) on its validation images, this measures per theta:

* ``anchors``: the share of all anchors filtered (the paper's point: most easy negatives go);
* ``arm_positives``: the share of the ARM's positives (tiled anchors matched to a box, IoU >= the matcher's
  threshold or a box's best anchor) that are filtered;
* ``odm_positives``: the share of the ODM's would-be positives (REFINED anchors matched to a box, before any
  filtering) that are filtered -- the positives ODM training loses;
* ``boxes_lost``: the share of ground-truth boxes all of whose ODM positives are filtered: objects the ODM cannot
  learn from in this image and scores 0 on at inference.

The boxes are the validation annotations through the evaluation resize (stretch or letterbox, as the run),
crowd / difficult boxes left out as the loss leaves them out. ``distill.train`` adds the row at the model's theta
(and 0.99 when it is 1.0) to a RefineDet run's ``summary.json`` (``arm_filtering``); ``distill.ablate_arch``
reads it. Writes ``--out``/``arm_filter.json`` beside the printed table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from runtime.atomic import write_json_atomic
from runtime.cli import ProductParser, command
from runtime.evaluation import iter_batches
from runtime.preprocess import _letterbox_to_orig, preprocess_batch
from runtime.sizes import as_hw

from .models.matcher import BACKGROUND, Matcher

KEYS = ("anchors", "arm_positives", "odm_positives", "boxes_lost")
DEFAULT_THETAS = (0.9, 0.99, 0.999)


def has_arm(model: Any) -> bool:
    """True for a RefineDet with its anchor refinement module (the only models that filter anchors)."""
    return getattr(model, "family", None) == "refinedet" and getattr(model.box_coder, "arm", False)


def input_boxes(record: Any, orig_hw: Sequence[int], size_hw: tuple[int, int], resize_mode: str) -> torch.Tensor:
    """An image record's boxes (xyxy original pixels; crowd / difficult dropped) -> normalised xyxy of the
    network input."""
    boxes = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)
    ignore = np.asarray(record.ignore, dtype=bool).reshape(-1)
    boxes = boxes[~ignore] if len(ignore) == len(boxes) else boxes
    hw = np.asarray([orig_hw], dtype=np.float32)
    if resize_mode == "letterbox":
        mul, off = _letterbox_to_orig(hw, size_hw)
    else:
        mul, off = np.array([[hw[0, 1], hw[0, 0], hw[0, 1], hw[0, 0]]], np.float32), np.zeros((1, 4), np.float32)
    return torch.from_numpy(np.clip((boxes - off) / mul, 0.0, 1.0))


class FilterCounts:
    """Running counts of :data:`KEYS` at each theta (numerators) and their denominators."""

    def __init__(self, thetas: Sequence[float]):
        self.thetas = [float(t) for t in thetas]
        self.num = {t: dict.fromkeys(KEYS, 0) for t in self.thetas}
        self.den = dict.fromkeys(KEYS, 0)

    def add(self, p_bg: torch.Tensor, anchors: torch.Tensor, refined: torch.Tensor, boxes: torch.Tensor,
            matcher: Matcher) -> None:
        """One image: ARM background probabilities [N], tiled anchors [N,4] and refined anchors [N,4] (cxcywh),
        boxes [M,4] normalised xyxy."""
        arm_pos = matcher(boxes, anchors)[0] != BACKGROUND if len(boxes) else torch.zeros_like(p_bg, dtype=torch.bool)
        odm_match = matcher(boxes, refined)[0] if len(boxes) else torch.full_like(p_bg, BACKGROUND, dtype=torch.long)
        odm_pos = odm_match != BACKGROUND
        self.den["anchors"] += p_bg.numel()
        self.den["arm_positives"] += int(arm_pos.sum())
        self.den["odm_positives"] += int(odm_pos.sum())
        self.den["boxes_lost"] += len(boxes)
        for t in self.thetas:
            gone = p_bg > t
            self.num[t]["anchors"] += int(gone.sum())
            self.num[t]["arm_positives"] += int((gone & arm_pos).sum())
            self.num[t]["odm_positives"] += int((gone & odm_pos).sum())
            kept_idx = odm_match[odm_pos & ~gone]
            kept_boxes = torch.zeros(len(boxes), dtype=torch.bool)
            kept_boxes[kept_idx.cpu()] = True
            self.num[t]["boxes_lost"] += int((~kept_boxes).sum())

    def shares(self) -> dict[str, dict[str, float | None]]:
        """{theta as text: {key: percent, or None when the denominator is 0}} plus the denominators."""
        out: dict[str, Any] = {f"{t:g}": {k: (100.0 * self.num[t][k] / self.den[k] if self.den[k] else None)
                                          for k in KEYS} for t in self.thetas}
        out["counts"] = dict(self.den)
        return out


@torch.no_grad()
def arm_filtering(model: Any, dataset: Any, device: Any, *, img_size: Any, mean: Sequence[float],
                  std: Sequence[float], thetas: Sequence[float] = DEFAULT_THETAS, match_iou: float = 0.5,
                  resize_mode: str | None = None, batch_size: int = 16, max_images: int | None = None) -> dict:
    """Per theta, the shares (percent) of :data:`KEYS` on an eval-mode ``dataset`` (see the module docstring)."""
    if not has_arm(model):
        raise ValueError(f"{type(model).__name__}: negative anchor filtering needs a RefineDet with its ARM "
                         "(Table 2's 'no TCB' model and SSD models have none)")
    model.eval()
    size = as_hw(img_size)
    resize_mode = resize_mode or getattr(dataset, "resize_mode", "stretch")
    anchors = model.anchors(size).to(device)
    matcher = Matcher(match_iou)
    counts = FilterCounts(thetas)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    records = {int(r.image_id): r for r in dataset.records}
    for images, targets in iter_batches(dataset, range(n), batch_size):
        x, orig = preprocess_batch(images, size, mean, std, resize_mode)
        loc, conf = model(torch.from_numpy(x).to(device))
        h = model.box_coder.split(loc.float(), conf.float())
        p_bg = h.arm_conf.softmax(-1)[..., 0]
        refined = model.box_coder.refine(h.arm_loc, anchors)
        for i, t in enumerate(targets):
            boxes = input_boxes(records[int(t["image_id"])], orig[i], size, resize_mode).to(device)
            counts.add(p_bg[i], anchors, refined[i], boxes, matcher)
    return counts.shares()


def summary_rows(model: Any, dataset: Any, device: Any, cfg: Any) -> dict | None:
    """What ``distill.train`` adds to a RefineDet run's summary: the shares at the model's theta and at the
    paper's 0.99 (None for models without an ARM)."""
    if not has_arm(model):
        return None
    thetas = sorted({float(model.box_coder.theta), 0.99})
    return arm_filtering(model, dataset, device, img_size=cfg.data.img_size, mean=cfg.data.mean, std=cfg.data.std,
                         thetas=thetas, match_iou=cfg.model.match_iou, batch_size=cfg.optim.batch_size)


def format_table(shares: dict, source: str) -> str:
    lines = [f"Negative anchor filtering of {source} ({shares['counts']['boxes_lost']} boxes, "
             f"{shares['counts']['anchors']} anchors): percent filtered", "",
             f"{'theta':>7}  {'anchors':>8}  {'ARM pos.':>8}  {'ODM pos.':>8}  {'boxes lost':>10}"]
    for t, row in shares.items():
        if t == "counts":
            continue
        cells = [("-" if row[k] is None else f"{row[k]:.2f}") for k in KEYS]
        lines.append(f"{t:>7}  {cells[0]:>8}  {cells[1]:>8}  {cells[2]:>8}  {cells[3]:>10}")
    return "\n".join(lines)


def thetas_value(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or any(not 0.0 <= v <= 1.0 for v in vals):
        raise ValueError(f"--thetas {text!r}: expected comma-separated thresholds in [0, 1], e.g. 0.9,0.99,0.999")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m distill.arm_filter", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a RefineDet checkpoint (.pt) or its run folder")
    p.add_argument("--thetas", default=",".join(f"{t:g}" for t in DEFAULT_THETAS),
                   help="comma-separated background-confidence thresholds (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=None, help="the first N validation images (default: all)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--out", default=None, help="folder for arm_filter.json (default: beside the checkpoint)")
    return p


@command("python -m distill.arm_filter")
def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import Checkpoint
    from .config import TrainConfig
    from .runs import build_val_set

    args = build_parser().parse_args(argv)
    thetas = thetas_value(args.thetas)
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images {args.max_images}: expected an integer >= 1")
    ck = Checkpoint.load(args.checkpoint)
    model = ck.build_model()
    if not has_arm(model):
        raise ValueError(f"--checkpoint {args.checkpoint}: a {ck.model_name} checkpoint; expected a RefineDet with "
                         "its ARM (negative anchor filtering needs the ARM's background confidence)")
    cfg = TrainConfig.from_dict(ck.config, source=f"{args.checkpoint} (its config)")
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent)
    device = torch.device(args.device)
    shares = arm_filtering(model.to(device), build_val_set(cfg), device, img_size=cfg.data.img_size,
                           mean=cfg.data.mean, std=cfg.data.std, thetas=thetas, match_iou=cfg.model.match_iou,
                           batch_size=cfg.optim.batch_size, max_images=args.max_images)
    print(format_table(shares, f"{args.checkpoint} (model theta {model.box_coder.theta:g})"))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "arm_filter.json", {"checkpoint": str(args.checkpoint), "model": ck.model_name,
                                                "model_theta": float(model.box_coder.theta), "shares": shares})
    print(f"\nwrote {out / 'arm_filter.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
