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
and engine of an export folder; exit status 1 when a candidate fails or a model file is broken
(an ``ERROR`` row: empty, truncated, changed since export), 2 on unusable arguments. A backend or
device this host lacks is ``unavailable``, not a failure.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import write_json_atomic
from runtime.cli import command, fail, ProductParser, report_file
from runtime.integrity import add_accept_modified
from runtime.errors import BackendUnavailable
from runtime.evaluate import check_classes, data_for, open_dataset
from runtime.evaluation import eval_subset, inference_on_dataset
from runtime.matching import LEFT_OUT, MATCH_IOU, compared_summary, match_by_iou
from runtime.metrics import CocoEvaluator

# bf16 keeps 8 significand bits (fp16 11): its gate is looser than fp16's, tighter than INT8's.
MAP_TOLERANCE = {"fp32": 0.2, "fp16": 0.3, "bf16": 0.5, "int8": 1.0, "best": 1.0}
MIN_AGREEMENT: dict[str, float | None] = {"fp32": 0.95, "fp16": 0.80, "bf16": 0.70, "int8": None, "best": None}


@dataclass
class Tolerances:
    """Per-precision bounds; a missing precision falls back to the loosest one (int8)."""

    map_points: dict[str, float] = field(default_factory=lambda: dict(MAP_TOLERANCE))
    min_agreement: dict[str, float | None] = field(default_factory=lambda: dict(MIN_AGREEMENT))
    match_iou: float = MATCH_IOU

    def for_precision(self, precision: str) -> dict[str, Any]:
        return {"max_abs_delta_map": self.map_points.get(precision, self.map_points["int8"]),
                "min_agreement": self.min_agreement.get(precision, self.min_agreement.get("int8")),
                "match_iou": self.match_iou}


@dataclass
class EvalResult:
    """One backend's detections on a fixed list of images, and their COCO metrics."""

    name: str
    precision: str
    image_ids: list[int]
    detections: list[dict[str, np.ndarray]]
    metrics: dict[str, Any]
    max_detections: int | None = None  # K of the NMS (the top-K cut), from the sidecar


# --------------------------------------------------------------------------------------------
# Detection-level agreement.
# --------------------------------------------------------------------------------------------
def agreement(ref_dets: Sequence[dict[str, np.ndarray]], cand_dets: Sequence[dict[str, np.ndarray]],
              iou_threshold: float = MATCH_IOU, max_detections: int | None = None) -> dict[str, Any]:
    """Agreement over a list of images (same order in both lists).

    ``agreement``: matched / compared reference detections (1.0 when the reference has none and
    the candidate has none either, 0.0 when only the candidate has some); ``max_score_diff`` over
    matched pairs (0 if none). With ``max_detections`` (K of the NMS) the reference detections
    tied at a full top-K cut are left out (:func:`runtime.matching.match_by_iou`): ``compared`` of
    ``reference_detections`` were compared, ``tied_at_cut`` left out, ``summary`` says so.
    """
    if len(ref_dets) != len(cand_dets):
        raise ValueError(f"reference has {len(ref_dets)} images, candidate {len(cand_dets)}")
    n_ref = n_cand = matched = tied = 0
    max_diff, cut_scores = 0.0, []
    for r, c in zip(ref_dets, cand_dets):
        m = match_by_iou(r, c, iou_threshold, max_detections)
        n_ref += len(m)
        n_cand += len(np.asarray(c["scores"]).reshape(-1))
        left = m == LEFT_OUT
        if left.any():
            tied += int(left.sum())
            cut_scores.append(float(np.asarray(r["scores"], np.float64).reshape(-1)[left].min()))
        hit = m >= 0
        matched += int(hit.sum())
        if hit.any():
            d = np.abs(np.asarray(r["scores"], np.float64)[hit] - np.asarray(c["scores"], np.float64)[m[hit]])
            max_diff = max(max_diff, float(d.max()))
    compared = n_ref - tied
    frac = matched / compared if compared else (1.0 if n_cand == 0 or tied else 0.0)
    return {"reference_detections": n_ref, "candidate_detections": n_cand, "matched": matched,
            "agreement": frac, "max_score_diff": max_diff, "match_iou": iou_threshold, "compared": compared,
            "tied_at_cut": tied,
            "summary": compared_summary(compared, n_ref, tied, cut_scores, "left out (any of them may fill the "
                                                                           "last rows)")}


# --------------------------------------------------------------------------------------------
# Verdicts.
# --------------------------------------------------------------------------------------------
def _delta(a: Any, b: Any) -> float:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return math.nan
    return float(a) - float(b)


def compare_results(reference: EvalResult, candidate: EvalResult,
                    tolerances: Tolerances | None = None) -> dict[str, Any]:
    """Parity of one candidate against the reference: deltas, agreement and the verdict."""
    tol = (tolerances or Tolerances()).for_precision(candidate.precision)
    if list(reference.image_ids) != list(candidate.image_ids):
        raise ValueError(f"{candidate.name} ran on other images than the reference {reference.name}")
    ks = [k for k in (reference.max_detections, candidate.max_detections) if k]
    agree = agreement(reference.detections, candidate.detections, tol["match_iou"], min(ks) if ks else None)
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


class _Recorder:
    """An evaluator that also keeps every image's detections (parity compares them one by one)."""

    def __init__(self, evaluator: CocoEvaluator) -> None:
        self.evaluator = evaluator
        self.image_ids: list[int] = []
        self.detections: list[dict[str, np.ndarray]] = []

    def reset(self) -> None:
        self.evaluator.reset()
        self.image_ids, self.detections = [], []

    def process(self, image_id: int, boxes: Any, scores: Any, labels: Any) -> None:
        self.evaluator.process(image_id, boxes, scores, labels)
        self.image_ids.append(int(image_id))
        self.detections.append({"boxes": boxes, "scores": scores, "labels": labels})

    def evaluate(self, per_class: bool = True) -> dict[str, Any]:
        return self.evaluator.evaluate(per_class=per_class)


def run_eval(det: Any, dataset: Any, indices: Sequence[int], gt: dict[str, Any], *, batch_size: int = 8,
             progress: bool = False) -> EvalResult:
    """Detections of ``det`` on ``dataset[indices]`` and their COCO metrics against ``gt``."""
    check_classes(dataset, det.meta)
    rec = _Recorder(CocoEvaluator(gt, det.meta.category_ids, det.meta.class_names))
    metrics = inference_on_dataset(det, dataset, rec, indices=indices, batch_size=batch_size, progress=progress,
                                   desc=det.name)
    precision = getattr(det, "eval_precision", None) or det.meta.precision   # OpenVINO may run bf16
    return EvalResult(det.name, precision, rec.image_ids, rec.detections, metrics,
                      max_detections=int(det.meta.nms.max_detections))


def check_parity(reference: Any, candidates: Sequence[Any], dataset: Any, *, max_images: int | None = None,
                 batch_size: int = 8, tolerances: Tolerances | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Reference detector vs candidate detectors on the same images of ``dataset``.

    Returns ``{"reference": {name, mAP, per_class}, "candidates": [compare_results(...)], "ok"}``.
    """
    indices, gt = eval_subset(dataset, max_images)
    ref = run_eval(reference, dataset, indices, gt, batch_size=batch_size, progress=progress)
    rows = []
    for c in candidates:
        try:
            result = run_eval(c, dataset, indices, gt, batch_size=batch_size, progress=progress)
        except Exception as e:  # noqa: BLE001 - a model that loads but cannot run is an error row, not a crash
            rows.append(error_row(c.name, f"cannot run: {type(e).__name__}: {_first_line(e)}"))
            continue
        rows.append(compare_results(ref, result, tolerances))
    return {"reference": {"name": ref.name, "mAP": ref.metrics["mAP"], "per_class": ref.metrics.get("per_class"),
                          "images": len(indices)},
            "candidates": rows, "ok": all(r["ok"] for r in rows)}


def format_rows(report: dict[str, Any]) -> str:
    ref = report["reference"]
    lines = [f"reference {ref['name']}: mAP {ref['mAP']:.2f} on {ref.get('images', '?')} images",
             f"{'candidate':<28} {'prec':<5} {'mAP':>6} {'ΔmAP':>7} {'agree':>6} {'maxΔs':>7}  verdict"]
    for r in report["candidates"]:
        if "delta_map" not in r:
            status = "ERROR" if r["status"] == "error" else r["status"]
            lines.append(f"{r['name']:<28} {'':<5} {'':>6} {'':>7} {'':>6} {'':>7}  {status}: {r['reason']}")
            continue
        verdict = "ok" if r["ok"] else "FAIL: " + "; ".join(r["reasons"])
        verdict += f" ({r['summary']})" if r.get("tied_at_cut") else ""
        lines.append(f"{r['name']:<28} {r['precision']:<5} {r['mAP']:6.2f} {r['delta_map']:+7.3f} "
                     f"{r['agreement']:6.3f} {r['max_score_diff']:7.4f}  {verdict}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------
MODEL_SUFFIXES = (".onnx", ".engine", ".plan")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def error_row(name: str, reason: str) -> dict[str, Any]:
    """The row of a model file that is broken (empty, truncated, not what its sidecar describes):
    an error, never ``unavailable`` (that is for a backend or device this host lacks)."""
    return {"name": name, "status": "error", "reason": reason, "ok": False}


def _unreadable_onnx(path: Path) -> str:
    """Why ``path`` cannot be an ONNX file at all (empty, or not a protobuf), or ""."""
    from runtime.onnx_props import read_metadata_props

    try:
        if path.stat().st_size == 0:
            return f"{path.name} is empty (0 bytes): not an ONNX file"
        read_metadata_props(path)
    except (OSError, ValueError) as e:
        return f"{path.name} is not a readable ONNX file: {_first_line(e)}"
    return ""


def export_files(folder: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """The graphs and engines of an export folder, in a stable order, and the model files skipped,
    each with why (``{"name", "status": "skipped", "reason", "ok": True}``). An ``.onnx`` whose
    sidecar is missing is still checked when it carries the copy in its ``metadata_props``; one
    that is not an ONNX file at all (empty, random bytes) is an :func:`error_row`."""
    from runtime.metadata import read_onnx_mirror, sidecar_path

    files, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.suffix not in MODEL_SUFFIXES:
            continue
        if sidecar_path(p).is_file():
            files.append(p)
            continue
        why = "an engine is run only with its sidecar (python -m export.trt writes it)"
        if p.suffix == ".onnx":
            broken = _unreadable_onnx(p)
            if broken:
                skipped.append(error_row(p.name, broken))
                continue
            try:
                read_onnx_mirror(p)
                files.append(p)
                continue
            except ValueError as e:
                why = str(e)
        skipped.append({"name": p.name, "status": "skipped", "ok": True,
                        "reason": f"no sidecar {sidecar_path(p).name}; {why}"})
    return files, skipped


def load_candidates(files: Sequence[Path], device: str, accept_modified: bool = False
                    ) -> tuple[list[Any], list[dict[str, Any]]]:
    """Detectors of ``files`` (the TensorRT plugin graph through its CPU reference), and a row for
    each file this host cannot run (``unavailable``, ok: BackendUnavailable only) or that is broken
    (:func:`error_row`: corrupt, changed since export unless ``accept_modified``, unloadable)."""
    from runtime.load import load_detector
    from runtime.metadata import read_model_meta

    candidates, rows = [], []
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # load_detector warns about a missing sidecar itself
                graph = read_model_meta(f).graph if f.suffix == ".onnx" else None
            candidates.append(load_detector(f, device=device, provider="reference" if graph == "trt" else None,
                                            accept_modified=accept_modified))
        except BackendUnavailable as e:  # this host cannot run it: not a parity failure
            rows.append({"name": f.name, "status": "unavailable", "reason": str(e), "ok": True})
        except (ValueError, RuntimeError) as e:  # a broken artefact, said in one line
            rows.append(error_row(f.name, _first_line(e)))
        except Exception as e:  # noqa: BLE001 - e.g. a protobuf DecodeError: a broken artefact too
            rows.append(error_row(f.name, f"cannot load: {type(e).__name__}: {_first_line(e)}"))
    return candidates, rows


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m runtime.parity", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--reference", required=True, help="PyTorch checkpoint (.pt or run folder)")
    p.add_argument("--exports", default=None, help="export folder: every .onnx / .engine in it (files that cannot "
                                                   "be checked are named with the reason)")
    p.add_argument("--candidates", nargs="*", default=[], help="model files to check (added to --exports)")
    p.add_argument("--data", default=None, help="dataset spec (default: the checkpoint's validation data)")
    p.add_argument("--data-root", default=None, help="where the embedded shapes dataset lives")
    p.add_argument("--max-images", type=int, default=None, help="check on the first N images only")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--out", default=None, help="folder (created) for parity.json; a path ending in .json is that file")
    add_accept_modified(p)
    return p


@command("python -m runtime.parity")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.load import load_detector

    try:
        out = report_file(args.out, "parity.json") if args.out else None
        ref = load_detector(args.reference, device=args.device)
        files, skipped = [Path(c) for c in args.candidates], []
        if args.exports:
            if not Path(args.exports).is_dir():
                raise ValueError(f"--exports {args.exports} is not a folder")
            found, skipped = export_files(Path(args.exports))
            files += found
        if not files:
            raise ValueError("no candidates: pass --exports DIR and/or --candidates FILE ..."
                             + "".join(f"; {s['status']} {s['name']}: {s['reason']}" for s in skipped))
        data = data_for(ref, args.data, args.data_root)
        dataset = open_dataset(data, ref.meta)
    except (ValueError, RuntimeError) as e:
        return fail(e)
    candidates, rows = load_candidates(files, args.device, accept_modified=args.accept_modified)
    report = check_parity(ref, candidates, dataset, max_images=args.max_images, batch_size=args.batch_size,
                          progress=True)
    report["candidates"] += rows + skipped
    report["ok"] = all(r["ok"] for r in report["candidates"])
    report["data"] = data.spec
    print(format_rows(report))
    if out is not None:
        write_json_atomic(out, report)
        print(f"wrote {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
