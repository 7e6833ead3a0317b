"""COCO metrics of any model file (checkpoint, ONNX graph, TensorRT engine) on any dataset.

::

    python -m runtime.evaluate --model exports/kd/model_nms.onnx [--data SPEC] [--out DIR]   # DIR/metrics.json

``--data`` takes the training side's dataset specs: ``shapes`` | ``shapes:val`` |
``coco:ANNOTATIONS.json:IMAGE_DIR`` | ``voc:ROOT:SPLIT``; ``text`` | ``text:DIR`` (or a text classifier
model) evaluates a text / non-text classifier instead (:mod:`runtime.text_evaluate`: P / R / F).
Without it, the model's own validation data: the one recorded in the sidecar (``extra``) or in the checkpoint's resolved config.

Datasets are read by :mod:`runtime.datasets` (numpy only, no torch): the generated shapes set must
already be on disk (the error names the command that generates it). Scoring goes through the one
evaluation path, :func:`runtime.evaluation.inference_on_dataset` with
:class:`runtime.metrics.CocoEvaluator`.

Exit status: 0 on success, 2 when the arguments, the data or the backend are not usable here.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.atomic import write_json_atomic
from runtime.cli import command, fail, ProductParser, report_file
from runtime.integrity import add_accept_modified
from runtime.datasets import EvalDataset, default_val_spec, open_eval_dataset
from runtime.evaluation import eval_subset, inference_on_dataset
from runtime.metadata import ModelMeta
from runtime.metrics import CocoEvaluator

METRIC_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


# --------------------------------------------------------------------------------------------
# Which data.
# --------------------------------------------------------------------------------------------
@dataclass
class DataSpec:
    """A dataset spec plus what is needed to find the generated shapes dataset it was trained on."""

    spec: str
    data_root: str = "data"
    shapes_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "--data"


def _from_config(cfg: dict[str, Any], source: str) -> DataSpec:
    spec = cfg.get("val_data")
    if not spec:
        if not cfg.get("data"):
            raise ValueError(f"{source} names no dataset")
        spec = default_val_spec(cfg["data"])
    shapes = {k_out: cfg[k_in] for k_in, k_out in (("shapes_train", "num_train"), ("shapes_val", "num_val"),
                                                   ("shapes_seed", "seed")) if cfg.get(k_in) is not None}
    return DataSpec(spec, str(cfg.get("data_root") or "data"), shapes, source)


def _checkpoint_config(path: str) -> dict[str, Any] | None:
    """The resolved training config of a checkpoint, or None when it cannot be read here."""
    from runtime.load import load_detector

    try:
        det = load_detector(path, device="cpu")
    except (ValueError, RuntimeError):  # no torch on this host, or not a checkpoint
        return None
    try:
        cfg = getattr(det, "checkpoint", {}).get("config")
    finally:
        det.close()
    return cfg if isinstance(cfg, dict) else None


def default_data(meta: ModelMeta, checkpoint_config: dict[str, Any] | None = None) -> DataSpec:
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
        cfg = _checkpoint_config(ck)
        if cfg is not None:
            return _from_config(cfg, f"the config of {ck}")
    raise ValueError("the model's sidecar records no validation data (and no readable source checkpoint); "
                     "pass --data (shapes | coco:ANN.json:IMG_DIR | voc:ROOT:SPLIT)")


def data_for(det: Any, data: str | None = None, data_root: str | None = None) -> DataSpec:
    """What a CLI evaluates ``det`` on: its ``--data`` spec, else the model's own validation data
    (:func:`default_data`); ``--data-root`` wins over the recorded one."""
    if data:
        return DataSpec(data, data_root or "data")
    spec = default_data(det.meta, getattr(det, "checkpoint", {}).get("config"))
    if data_root:
        spec.data_root = data_root
    return spec


def _order_note(given: list[Any], expected: list[Any]) -> str:
    if given != expected and sorted(map(str, given)) == sorted(map(str, expected)):
        return " (the same classes in another order: their labels would be scored against the wrong classes)"
    return ""


def check_classes(dataset: Any, meta: ModelMeta) -> None:
    """The dataset must have the model's classes: the same category ids and the same class names,
    in the same order (a dataset listing them in another order would give a wrong mAP)."""
    where = f"dataset {getattr(dataset, 'name', '')}".rstrip()
    ids, names = list(dataset.category_ids), [str(n) for n in getattr(dataset, "class_names", None) or []]
    if ids != list(meta.category_ids):
        raise ValueError(
            f"{where} has category ids {ids[:10]} ({len(ids)} classes: {names[:5]}...) but the model was trained on "
            f"{list(meta.category_ids)[:10]} ({meta.num_classes} classes: {meta.class_names[:5]}...)"
            f"{_order_note(names, list(meta.class_names)) or _order_note(ids, list(meta.category_ids))}")
    if names and [n.strip() for n in names] != [n.strip() for n in meta.class_names]:
        pairs = [f"id {c}: dataset {a!r}, model {b!r}" for c, a, b in zip(ids, names, meta.class_names) if a != b]
        note = _order_note(names, list(meta.class_names))
        raise ValueError(f"{where} names its classes differently from the model{note}: "
                         f"{'; '.join(pairs[:5])}{' ...' if len(pairs) > 5 else ''}")


def open_dataset(data: DataSpec, meta: ModelMeta | None = None) -> EvalDataset:
    """Eval-mode dataset of ``data`` (:func:`runtime.datasets.open_eval_dataset`); with ``meta``, it must
    have the model's classes (:func:`check_classes`)."""
    dataset = open_eval_dataset(data.spec, "val", data_root=data.data_root, shapes_kwargs=data.shapes_kwargs or None)
    if meta is not None:
        check_classes(dataset, meta)
    return dataset


# --------------------------------------------------------------------------------------------
# Scoring.
# --------------------------------------------------------------------------------------------
def evaluate_detector(det: Any, dataset: Any, *, batch_size: int = 8, max_images: int | None = None,
                      progress: bool = True, per_class: bool = True) -> dict[str, Any]:
    """COCO metrics of a :class:`~runtime.detector.Detector` on an eval-mode dataset: the summary
    metrics in points (0..100), ``per_class`` AP, ``num_detections``, ``images`` and ``seconds``.
    Detections map to dataset ids through the sidecar's category ids."""
    check_classes(dataset, det.meta)
    indices, gt = eval_subset(dataset, max_images)
    evaluator = CocoEvaluator(gt, det.meta.category_ids, det.meta.class_names, detail=per_class)
    return inference_on_dataset(det, dataset, evaluator, indices=indices, batch_size=batch_size,
                                progress=progress, desc=getattr(det, "name", "eval"), per_class=per_class)


def _fmt(v: Any) -> str:
    """A metric in points; "-" where COCO has nothing to measure (-1, NaN here: e.g. APs without small objects)."""
    return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.1f}"


def format_table(metrics: dict[str, Any], title: str = "") -> str:
    """The summary metrics on one row, then one row per class: gt instances, precision and recall
    (IoU 0.5, at the score with the best F1), AP50 and AP (AP alone when there is no detail)."""
    lines = [title] if title else []
    lines.append("  ".join(f"{k:>6}" for k in METRIC_KEYS))
    lines.append("  ".join(f"{_fmt(metrics.get(k)):>6}" for k in METRIC_KEYS))
    per = metrics.get("per_class") or {}
    detail = metrics.get("per_class_detail") or {}
    if per:
        width = max(len(n) for n in per)
        lines.append("")
        if detail:
            lines.append(f"{'class':<{width}}  {'inst':>5}  {'P':>5}  {'R':>5}  {'AP50':>5}  {'AP':>5}  conf")
            for name, d in detail.items():
                conf = "   –" if d["conf"] is None else f"{d['conf']:.2f}"
                lines.append(f"{name:<{width}}  {d['instances']:>5}  {_fmt(d['precision'])}  {_fmt(d['recall'])}  "
                             f"{_fmt(d['AP50'])}  {_fmt(d['AP'])}  {conf}")
        else:
            lines.append(f"{'class':<{width}}  {'AP':>5}")
            lines.extend(f"{name:<{width}}  {_fmt(ap)}" for name, ap in per.items())
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m runtime.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--model", required=True, help="checkpoint (.pt / run folder), .onnx graph or .engine")
    p.add_argument("--data", default=None, help="shapes | coco:ANN.json:IMG_DIR | voc:ROOT:SPLIT "
                                                "(default: the model's own validation data)")
    p.add_argument("--data-root", default=None, help="where the embedded shapes dataset lives "
                                                     "(default: the one recorded with the model, else 'data')")
    p.add_argument("--provider", default=None, choices=["cpu", "cuda", "tensorrt", "reference", "openvino"],
                   help="ONNX Runtime execution provider; 'reference' runs the TensorRT plugin graph on CPU; "
                        "'openvino' runs the ONNX graph on OpenVINO's CPU plugin")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--fp16", action="store_true", help="PyTorch backend on CUDA: half precision")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--out", default=None, help="folder (created) for metrics.json; a path ending in .json is that "
                                               "file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_accept_modified(p)
    return p


@command("python -m runtime.evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.load import load_detector

    try:
        out = report_file(args.out, "metrics.json") if args.out else None
        from runtime.classifier import model_task
        from runtime.text_evaluate import is_text_spec, run_text_evaluation
        if is_text_spec(args.data) or model_task(args.model) == "text":  # the text / non-text classifier
            return run_text_evaluation(args, out)
        det = load_detector(args.model, device=args.device, provider=args.provider, fp16=args.fp16,
                            accept_modified=args.accept_modified)
        try:
            data = data_for(det, args.data, args.data_root)
            dataset = open_dataset(data, det.meta)
            metrics = evaluate_detector(det, dataset, batch_size=args.batch_size, max_images=args.max_images,
                                        progress=not args.no_progress)
        finally:
            det.close()
    except (ValueError, RuntimeError) as e:
        return fail(e)
    report = {"model": str(args.model), "backend": det.name, "data": data.spec, **metrics}
    print(format_table(metrics, f"{det.name} on {data.spec}: {metrics['images']} images, "
                                f"{metrics['num_detections']} detections, {metrics['seconds']:.1f} s"))
    if out is not None:
        write_json_atomic(out, report)
        print(f"wrote {out}")
        write_pictures(metrics, out.parent)
    return 0


def write_pictures(metrics: dict[str, Any], folder: Path) -> None:
    """pr_curves.png and confusion.png beside metrics.json (a note when matplotlib is missing)."""
    from runtime.plots import write_confusion, write_pr_curves
    written = [p for p in (write_pr_curves(metrics["pr_iou50"], folder / "pr_curves.png") if metrics.get("pr_iou50")
                           else None,
                           write_confusion(metrics["confusion"], folder / "confusion.png") if metrics.get("confusion")
                           else None) if p is not None]
    if written:
        print("wrote " + ", ".join(str(p) for p in written))
    elif metrics.get("pr_iou50"):
        print("note: install matplotlib for pr_curves.png and confusion.png")


if __name__ == "__main__":
    sys.exit(main())
