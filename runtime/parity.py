"""Parity: is a deployed model (ONNX graph, TensorRT engine) as accurate as its PyTorch checkpoint?

Numbers with tolerances, on the same images:

* ``delta_map``: candidate mAP - reference mAP, in COCO points (0..100), and per-class ΔAP;
* detection-level agreement: the fraction of reference detections that have a candidate
  detection of the same class with IoU >= 0.95 (one-to-one, greedy by reference score), and the
  largest score difference over the matched pairs.

Default tolerances by the precision the candidate was built in (its sidecar's ``precision``):

    precision   |ΔmAP| <=   agreement >=
    fp32        0.2         0.95
    fp16        0.3         0.80
    int8        1.0         -            (INT8 moves boxes: only the mAP is held to a bound)

``python -m runtime.parity --reference runs/kd/best.pt --exports exports/kd`` checks every graph
and engine of an export folder; exit status 1 when a candidate fails, 2 on unusable arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from runtime.metadata import write_json_atomic
from runtime.nms_reference import iou_one_to_many

MATCH_IOU = 0.95
MAP_TOLERANCE = {"fp32": 0.2, "fp16": 0.3, "int8": 1.0, "best": 1.0}
MIN_AGREEMENT: Dict[str, Optional[float]] = {"fp32": 0.95, "fp16": 0.80, "int8": None, "best": None}


@dataclass
class Tolerances:
    """Per-precision bounds; a missing precision falls back to the loosest one (int8)."""

    map_points: Dict[str, float] = field(default_factory=lambda: dict(MAP_TOLERANCE))
    min_agreement: Dict[str, Optional[float]] = field(default_factory=lambda: dict(MIN_AGREEMENT))
    match_iou: float = MATCH_IOU

    def for_precision(self, precision: str) -> Dict[str, Any]:
        return {"max_abs_delta_map": self.map_points.get(precision, self.map_points["int8"]),
                "min_agreement": self.min_agreement.get(precision, self.min_agreement.get("int8")),
                "match_iou": self.match_iou}


@dataclass
class EvalResult:
    """One backend's detections on a fixed list of images, and their COCO metrics."""

    name: str
    precision: str
    image_ids: List[int]
    detections: List[Dict[str, np.ndarray]]
    metrics: Dict[str, Any]


# --------------------------------------------------------------------------------------------
# Detection-level agreement.
# --------------------------------------------------------------------------------------------
def match_detections(ref: Dict[str, np.ndarray], cand: Dict[str, np.ndarray],
                     iou_threshold: float = MATCH_IOU) -> np.ndarray:
    """Greedy one-to-one matching of one image's detections.

    Reference detections in descending score order each take the unmatched candidate detection
    of the same label with the highest IoU, if that IoU >= ``iou_threshold``. Boxes: xyxy, same
    frame for both. Returns int64 [K_ref]: the matched candidate index, or -1.
    """
    rb = np.asarray(ref["boxes"], np.float32).reshape(-1, 4)
    cb = np.asarray(cand["boxes"], np.float32).reshape(-1, 4)
    rl = np.asarray(ref["labels"]).reshape(-1)
    cl = np.asarray(cand["labels"]).reshape(-1)
    out = np.full(len(rb), -1, dtype=np.int64)
    if len(rb) == 0 or len(cb) == 0:
        return out
    taken = np.zeros(len(cb), dtype=bool)
    for i in np.argsort(-np.asarray(ref["scores"], np.float32).reshape(-1), kind="stable"):
        ok = np.flatnonzero((cl == rl[i]) & ~taken)
        if ok.size == 0:
            continue
        ious = iou_one_to_many(rb[i], cb[ok])
        j = int(np.argmax(ious))
        if ious[j] >= iou_threshold:
            out[i] = ok[j]
            taken[ok[j]] = True
    return out


def agreement(ref_dets: Sequence[Dict[str, np.ndarray]], cand_dets: Sequence[Dict[str, np.ndarray]],
              iou_threshold: float = MATCH_IOU) -> Dict[str, Any]:
    """Agreement over a list of images (same order in both lists).

    ``agreement``: matched / reference detections (1.0 when the reference has none and the
    candidate has none either, 0.0 when only the candidate has some); ``max_score_diff`` over
    matched pairs (0 if none).
    """
    if len(ref_dets) != len(cand_dets):
        raise ValueError(f"reference has {len(ref_dets)} images, candidate {len(cand_dets)}")
    n_ref = n_cand = matched = 0
    max_diff = 0.0
    for r, c in zip(ref_dets, cand_dets):
        m = match_detections(r, c, iou_threshold)
        n_ref += len(m)
        n_cand += len(np.asarray(c["scores"]).reshape(-1))
        hit = m >= 0
        matched += int(hit.sum())
        if hit.any():
            d = np.abs(np.asarray(r["scores"], np.float64)[hit] - np.asarray(c["scores"], np.float64)[m[hit]])
            max_diff = max(max_diff, float(d.max()))
    frac = matched / n_ref if n_ref else (1.0 if n_cand == 0 else 0.0)
    return {"reference_detections": n_ref, "candidate_detections": n_cand, "matched": matched,
            "agreement": frac, "max_score_diff": max_diff, "match_iou": iou_threshold}


# --------------------------------------------------------------------------------------------
# Verdicts.
# --------------------------------------------------------------------------------------------
def _delta(a: Any, b: Any) -> float:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return math.nan
    return float(a) - float(b)


def compare_results(reference: EvalResult, candidate: EvalResult,
                    tolerances: Optional[Tolerances] = None) -> Dict[str, Any]:
    """Parity of one candidate against the reference: deltas, agreement and the verdict."""
    tol = (tolerances or Tolerances()).for_precision(candidate.precision)
    if list(reference.image_ids) != list(candidate.image_ids):
        raise ValueError(f"{candidate.name} ran on other images than the reference {reference.name}")
    agree = agreement(reference.detections, candidate.detections, tol["match_iou"])
    d_map = _delta(candidate.metrics.get("mAP"), reference.metrics.get("mAP"))
    ref_pc = reference.metrics.get("per_class") or {}
    cand_pc = candidate.metrics.get("per_class") or {}
    per_class = {k: _delta(cand_pc.get(k), v) for k, v in ref_pc.items()}
    reasons = []
    if math.isnan(d_map) or abs(d_map) > tol["max_abs_delta_map"] + 1e-9:
        reasons.append(f"|ΔmAP| = {abs(d_map):.3f} points > {tol['max_abs_delta_map']}")
    if tol["min_agreement"] is not None and agree["agreement"] < tol["min_agreement"]:
        reasons.append(f"agreement {agree['agreement']:.3f} < {tol['min_agreement']} "
                       f"(reference detections matched at IoU >= {tol['match_iou']} with the same class)")
    return {
        "name": candidate.name, "reference": reference.name, "precision": candidate.precision,
        "ok": not reasons, "reasons": reasons,
        "mAP": candidate.metrics.get("mAP"), "reference_mAP": reference.metrics.get("mAP"),
        "delta_map": d_map, "per_class_delta_ap": per_class, **agree, "tolerance": tol,
    }


def run_eval(det: Any, dataset: Any, indices: Sequence[int], gt: Dict[str, Any], *, batch_size: int = 8,
             progress: bool = False) -> EvalResult:
    """Detections of ``det`` on ``dataset[indices]`` and their COCO metrics against ``gt``."""
    from runtime.evaluate import check_classes, predict_dataset, score

    check_classes(dataset, det.meta)
    ids, dets = predict_dataset(det, dataset, indices, batch_size, progress)
    return EvalResult(det.name, det.meta.precision, ids, dets, score(ids, dets, gt, det.meta))


def check_parity(reference: Any, candidates: Sequence[Any], dataset: Any, *, max_images: Optional[int] = None,
                 batch_size: int = 8, tolerances: Optional[Tolerances] = None,
                 progress: bool = False) -> Dict[str, Any]:
    """Reference detector vs candidate detectors on the same images of ``dataset``.

    Returns ``{"reference": {name, mAP, per_class}, "candidates": [compare_results(...)], "ok"}``.
    """
    from runtime.evaluate import subset

    indices, gt = subset(dataset, max_images)
    ref = run_eval(reference, dataset, indices, gt, batch_size=batch_size, progress=progress)
    rows = [compare_results(ref, run_eval(c, dataset, indices, gt, batch_size=batch_size, progress=progress),
                            tolerances) for c in candidates]
    return {"reference": {"name": ref.name, "mAP": ref.metrics["mAP"], "per_class": ref.metrics.get("per_class"),
                          "images": len(indices)},
            "candidates": rows, "ok": all(r["ok"] for r in rows)}


def format_rows(report: Dict[str, Any]) -> str:
    ref = report["reference"]
    lines = [f"reference {ref['name']}: mAP {ref['mAP']:.2f} on {ref.get('images', '?')} images",
             f"{'candidate':<28} {'prec':<5} {'mAP':>6} {'ΔmAP':>7} {'agree':>6} {'maxΔs':>7}  verdict"]
    for r in report["candidates"]:
        if "delta_map" not in r:
            lines.append(f"{r['name']:<28} {'':<5} {'':>6} {'':>7} {'':>6} {'':>7}  {r['status']}: {r['reason']}")
            continue
        verdict = "ok" if r["ok"] else "FAIL: " + "; ".join(r["reasons"])
        lines.append(f"{r['name']:<28} {r['precision']:<5} {r['mAP']:6.2f} {r['delta_map']:+7.3f} "
                     f"{r['agreement']:6.3f} {r['max_score_diff']:7.4f}  {verdict}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------
def export_files(folder: Path) -> List[Path]:
    """The graphs and engines of an export folder (those with a sidecar), in a stable order."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".onnx", ".engine", ".plan")
                   and p.with_suffix(".json").is_file())
    return files


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="PyTorch checkpoint (.pt or run folder)")
    p.add_argument("--exports", default=None, help="export folder: every .onnx / .engine with a sidecar")
    p.add_argument("--candidates", nargs="*", default=[], help="model files to check (added to --exports)")
    p.add_argument("--data", default=None, help="dataset spec (default: the checkpoint's validation data)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    args = p.parse_args(argv)

    from runtime.detector import load_detector
    from runtime.evaluate import DataSpec, default_data, open_dataset
    from runtime.metadata import read_sidecar

    try:
        ref = load_detector(args.reference, device=args.device)
        files = [Path(c) for c in args.candidates]
        if args.exports:
            if not Path(args.exports).is_dir():
                raise ValueError(f"--exports {args.exports} is not a folder")
            files += export_files(Path(args.exports))
        if not files:
            raise ValueError("no candidates: pass --exports DIR and/or --candidates FILE ...")
        data = DataSpec(args.data, args.data_root or "data") if args.data else default_data(ref.meta, ref.checkpoint["config"])
        if args.data_root:
            data.data_root = args.data_root
        dataset = open_dataset(data, ref.meta)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    candidates, skipped = [], []
    for f in files:
        try:
            provider = "reference" if f.suffix == ".onnx" and read_sidecar(f).graph == "trt" else None
            candidates.append(load_detector(f, device=args.device, provider=provider))
        except (ValueError, RuntimeError) as e:
            skipped.append({"name": f.name, "status": "unavailable", "reason": str(e), "ok": True})
    report = check_parity(ref, candidates, dataset, max_images=args.max_images, batch_size=args.batch_size,
                          progress=True)
    report["candidates"] += skipped
    report["data"] = data.spec
    print(format_rows(report))
    if args.out:
        write_json_atomic(args.out, report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
