"""COCO metrics of any model file (checkpoint, ONNX graph, TensorRT engine) on any dataset.

::

    python -m runtime.evaluate --model exports/kd/model_nms.onnx [--data SPEC] [--out metrics.json]

``--data`` takes the training side's dataset specs: ``shapes`` | ``shapes:val`` |
``coco:ANNOTATIONS.json:IMAGE_DIR`` | ``voc:ROOT:SPLIT``. Without it, the model's own validation
data: the one recorded in the sidecar (``extra``) or in the checkpoint's resolved config.

Datasets are read by ``distill.data`` (imported here, lazily). On a deployment host without torch,
``coco:`` specs are read by a small numpy-only reader instead, with the same ground-truth rules
for what pycocotools sees (boxes as given, crowd flags honoured).

Exit status: 0 on success, 2 when the arguments, the data or the backend are not usable here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from runtime.metadata import ModelMeta, write_json_atomic
from runtime.metrics import CocoEvaluator

METRIC_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


# --------------------------------------------------------------------------------------------
# Which data.
# --------------------------------------------------------------------------------------------
@dataclass
class DataSpec:
    """A dataset spec plus what is needed to rebuild the embedded shapes dataset identically."""

    spec: str
    data_root: str = "data"
    shapes_kwargs: Dict[str, Any] = field(default_factory=dict)
    source: str = "--data"


def _from_config(cfg: Dict[str, Any], source: str) -> DataSpec:
    spec = cfg.get("val_data")
    if not spec:
        if not cfg.get("data"):
            raise ValueError(f"{source} names no dataset")
        try:
            from distill.data import default_val_spec
        except ImportError as e:
            raise ValueError(f"cannot derive the validation set of {cfg['data']!r} without distill.data "
                             f"({e}); pass --data") from None
        spec = default_val_spec(cfg["data"])
    shapes = {k_out: cfg[k_in] for k_in, k_out in (("shapes_train", "num_train"), ("shapes_val", "num_val"),
                                                   ("shapes_seed", "seed")) if cfg.get(k_in) is not None}
    return DataSpec(spec, str(cfg.get("data_root") or "data"), shapes, source)


def default_data(meta: ModelMeta, checkpoint_config: Optional[Dict[str, Any]] = None) -> DataSpec:
    """The model's own validation data: from a checkpoint config, else the sidecar's ``extra``
    (keys ``val_data`` / ``data`` / ``data_root`` / ``shapes_*``, or a nested ``config`` /
    ``train_config`` dict, or the path of the source ``checkpoint``). ValueError if none."""
    if checkpoint_config:
        return _from_config(checkpoint_config, "the checkpoint's config")
    extra = meta.extra or {}
    for key in ("config", "train_config"):
        if isinstance(extra.get(key), dict) and (extra[key].get("data") or extra[key].get("val_data")):
            return _from_config(extra[key], f"the sidecar's extra.{key}")
    if extra.get("val_data") or extra.get("data"):
        return _from_config(extra, "the sidecar's extra")
    ck = extra.get("checkpoint")
    if ck and Path(ck).is_file():
        try:
            from distill.checkpoint import load_checkpoint
        except ImportError:
            pass
        else:
            cfg = load_checkpoint(ck).get("config")
            if isinstance(cfg, dict):
                return _from_config(cfg, f"the config of {ck}")
    raise ValueError("the model's sidecar records no validation data (and no readable source checkpoint); "
                     "pass --data (shapes | coco:ANN.json:IMG_DIR | voc:ROOT:SPLIT)")


class _CocoFolder:
    """numpy-only reader of a COCO json + image folder, eval items only (no torch needed)."""

    def __init__(self, ann: str, img_dir: str) -> None:
        from runtime.preprocess import load_image

        self._load = load_image
        ann_p = Path(ann)
        if not ann_p.is_file():
            raise ValueError(f"annotation file not found: {ann_p}")
        d = json.loads(ann_p.read_text())
        cats = sorted(d["categories"], key=lambda c: int(c["id"]))
        self.category_ids = [int(c["id"]) for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        self.images = list(d["images"])
        self.image_ids = [int(im["id"]) for im in self.images]
        self.img_dir = Path(img_dir)
        anns = []
        for a in d.get("annotations", []):
            a = dict(a)
            a.setdefault("iscrowd", 0)
            a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
            anns.append(a)
        self._gt = {"images": self.images, "annotations": anns, "categories": cats}
        self.name = f"coco:{ann_p.name}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        im = self.images[i]
        img = self._load(self.img_dir / im["file_name"])
        return img, {"image_id": int(im["id"]), "orig_size": img.shape[:2]}

    def coco_gt(self) -> Dict[str, Any]:
        return self._gt


def open_dataset(data: DataSpec, meta: ModelMeta) -> Any:
    """Eval-mode dataset for ``data`` (distill.data, or the numpy COCO reader without torch)."""
    try:
        from distill.data import build_dataset
    except ImportError as e:
        kind = data.spec.split(":", 1)[0].lower()
        if kind == "coco" and data.spec.count(":") == 2:
            _, ann, img_dir = data.spec.split(":")
            return _CocoFolder(ann, img_dir)
        raise ValueError(f"dataset {data.spec!r} needs distill.data, which cannot be imported here ({e}); "
                         f"on a host without torch use a 'coco:ANN.json:IMG_DIR' spec") from None
    h, w = meta.input_size
    return build_dataset(data.spec, "val", img_size=int(h), mean=meta.mean, std=meta.std, train=False,
                         data_root=data.data_root, shapes_kwargs=data.shapes_kwargs or None)


def check_classes(dataset: Any, meta: ModelMeta) -> None:
    """The dataset must have the model's classes (same ids, same order)."""
    if list(dataset.category_ids) != list(meta.category_ids):
        raise ValueError(
            f"dataset {getattr(dataset, 'name', '')} has category ids {list(dataset.category_ids)[:10]} "
            f"({len(dataset.category_ids)} classes) but the model was trained on {list(meta.category_ids)[:10]} "
            f"({meta.num_classes} classes: {meta.class_names[:5]}...)"
        )


def subset(dataset: Any, max_images: Optional[int]) -> Tuple[List[int], Dict[str, Any]]:
    """Indices of the first ``max_images`` items (all if None) and the COCO gt restricted to them."""
    gt = dataset.coco_gt()
    n = len(dataset)
    if max_images is None or max_images >= n:
        return list(range(n)), gt
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    idx = list(range(max_images))
    ids = {int(dataset.image_ids[i]) for i in idx}
    gt = {**gt, "images": [im for im in gt["images"] if int(im["id"]) in ids],
          "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in ids]}
    return idx, gt


# --------------------------------------------------------------------------------------------
# Running and scoring.
# --------------------------------------------------------------------------------------------
def iter_batches(dataset: Any, indices: Sequence[int], batch_size: int):
    """Yields (images uint8 HWC list, image ids) in dataset order."""
    for s in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[s:s + batch_size]]
        yield [im for im, _ in items], [int(t["image_id"]) for _, t in items]


def predict_dataset(det: Any, dataset: Any, indices: Sequence[int], batch_size: int = 8,
                    progress: bool = True, desc: Optional[str] = None) -> Tuple[List[int], List[Dict[str, np.ndarray]]]:
    """Run ``det`` over the items at ``indices``; returns (image ids, detections), same order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids: List[int] = []
    dets: List[Dict[str, np.ndarray]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc=desc or getattr(det, "name", "eval"), unit="img",
                   dynamic_ncols=True, leave=False, file=sys.stderr)
    try:
        for images, image_ids in iter_batches(dataset, indices, batch_size):
            dets.extend(det(images))
            ids.extend(image_ids)
            if bar is not None:
                bar.update(len(images))
    finally:
        if bar is not None:
            bar.close()
    return ids, dets


def score(image_ids: Sequence[int], dets: Sequence[Dict[str, np.ndarray]], gt: Dict[str, Any],
          meta: ModelMeta, per_class: bool = True) -> Dict[str, Any]:
    """COCO metrics (points, 0..100) of detections against ``gt``; labels map via the sidecar ids."""
    ev = CocoEvaluator(gt, meta.category_ids, meta.class_names)
    for image_id, d in zip(image_ids, dets):
        ev.process(image_id, d["boxes"], d["scores"], d["labels"])
    return ev.evaluate(per_class=per_class)


def evaluate_detector(det: Any, dataset: Any, *, batch_size: int = 8, max_images: Optional[int] = None,
                      progress: bool = True, per_class: bool = True) -> Dict[str, Any]:
    """COCO metrics of a :class:`~runtime.detector.Detector` on an eval-mode dataset."""
    check_classes(dataset, det.meta)
    indices, gt = subset(dataset, max_images)
    t0 = time.perf_counter()
    ids, dets = predict_dataset(det, dataset, indices, batch_size, progress)
    seconds = time.perf_counter() - t0
    metrics = score(ids, dets, gt, det.meta, per_class)
    metrics.update({"images": len(ids), "seconds": seconds})
    return metrics


def _fmt(v: Any) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.1f}"


def format_table(metrics: Dict[str, Any], title: str = "") -> str:
    """The summary metrics on one row, then AP per class."""
    lines = [title] if title else []
    lines.append("  ".join(f"{k:>6}" for k in METRIC_KEYS))
    lines.append("  ".join(f"{_fmt(metrics.get(k)):>6}" for k in METRIC_KEYS))
    per = metrics.get("per_class") or {}
    if per:
        width = max(len(n) for n in per)
        lines.append("")
        lines.append(f"{'class':<{width}}  {'AP':>5}")
        lines.extend(f"{name:<{width}}  {_fmt(ap)}" for name, ap in per.items())
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint (.pt / run folder), .onnx graph or .engine")
    p.add_argument("--data", default=None, help="shapes | coco:ANN.json:IMG_DIR | voc:ROOT:SPLIT "
                                                "(default: the model's own validation data)")
    p.add_argument("--data-root", default=None, help="where the embedded shapes dataset lives "
                                                     "(default: the one recorded with the model, else 'data')")
    p.add_argument("--provider", default=None, choices=["cpu", "cuda", "tensorrt", "reference"],
                   help="ONNX Runtime execution provider; 'reference' runs the TensorRT plugin graph on CPU")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--fp16", action="store_true", help="PyTorch backend on CUDA: half precision")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.detector import load_detector

    try:
        det = load_detector(args.model, device=args.device, provider=args.provider, fp16=args.fp16)
        try:
            if args.data:
                data = DataSpec(args.data, args.data_root or "data")
            else:
                data = default_data(det.meta, getattr(det, "checkpoint", {}).get("config"))
                if args.data_root:
                    data.data_root = args.data_root
            dataset = open_dataset(data, det.meta)
            metrics = evaluate_detector(det, dataset, batch_size=args.batch_size, max_images=args.max_images,
                                        progress=not args.no_progress)
        finally:
            det.close()
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {"model": str(args.model), "backend": det.name, "data": data.spec, **metrics}
    print(format_table(metrics, f"{det.name} on {data.spec}: {metrics['images']} images, "
                                f"{metrics['num_detections']} detections, {metrics['seconds']:.1f} s"))
    if args.out:
        write_json_atomic(args.out, report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
