"""Are the exported graphs the PyTorch model? Numbers with tolerances (:func:`verify_exports`),
and the INT8 graph's accuracy gate (:func:`evaluate_graphs`, :func:`check_int8_map`).

* :func:`torch_raw` / :func:`torch_detections`: the PyTorch references (``distill.postprocess``).
* :func:`compare_raw`: max abs diff and allclose of the raw outputs.
* :func:`match_nms_outputs`: NMS outputs equal detection for detection
  (:func:`runtime.matching.match_exact`, tie-aware at the top-K cut: the rows tied there are
  compared as a set and a note says how many detections were compared one to one), with the
  plugin reference's tie order as the fallback when exactly tied scores make PyTorch's order
  unspecified.
* :func:`evaluate_graphs`: COCO mAP of ONNX graphs through the one evaluation path
  (``runtime.evaluation.inference_on_dataset`` with runtime's detectors and ``CocoEvaluator``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.matching import NmsOutputs, match_exact

RAW_RTOL, RAW_ATOL = 1e-3, 1e-5
VERIFY_BATCHES = (1, 3)


def ort_session(model: Any, threads: int = 0, spinning: bool = False) -> Any:
    """CPU ONNX Runtime session over a path, bytes or ModelProto. ``spinning`` off by default:
    parity checks alternate ORT and PyTorch runs, and spin-waiting ORT threads would steal the
    cores PyTorch needs (latency measurements turn it on, ORT's default)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    src = model if isinstance(model, (str, bytes)) else (str(model) if hasattr(model, "__fspath__")
                                                         else model.SerializeToString())
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- PyTorch references
def torch_raw(model: Any, anchors: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch raw outputs of float32 [B, 3, H, W]: boxes [B,N,4] normalised xyxy, scores [B,N,C+1] softmax."""
    import torch

    from distill.postprocess import decode_outputs
    with torch.no_grad():
        loc, conf = model(torch.from_numpy(np.ascontiguousarray(x)))
        b, s = decode_outputs(loc, conf, anchors, model.box_coder)
    return b.numpy(), s.numpy()


def pad_detections(dets: Sequence[dict[str, Any]], k: int) -> NmsOutputs:
    """``distill.postprocess`` per-image dicts (labels 1..C) -> the graphs' four padded outputs
    (0-based classes, rows past num_detections zero)."""
    b = len(dets)
    num = np.zeros((b, 1), np.int32)
    boxes = np.zeros((b, k, 4), np.float32)
    scores = np.zeros((b, k), np.float32)
    classes = np.zeros((b, k), np.int32)
    for i, d in enumerate(dets):
        n = min(len(d["scores"]), k)
        num[i, 0] = n
        boxes[i, :n] = np.asarray(d["boxes"])[:n]
        scores[i, :n] = np.asarray(d["scores"])[:n]
        classes[i, :n] = np.asarray(d["labels"])[:n] - 1
    return num, boxes, scores, classes


def torch_detections(model: Any, anchors: Any, x: np.ndarray, nms: Any) -> NmsOutputs:
    """PyTorch postprocess (EfficientNMS semantics, ``nms`` an NMSConfig) in the graphs' output format."""
    import torch

    from distill.postprocess import postprocess
    with torch.no_grad():
        loc, conf = model(torch.from_numpy(np.ascontiguousarray(x)))
        dets = postprocess(loc, conf, anchors, model.box_coder, nms)
    return pad_detections(dets, int(nms.max_detections))


# --------------------------------------------------------------------------- comparisons
def padding_is_zero(dets: NmsOutputs) -> bool:
    """Rows past ``num_detections[b]`` are all zero in boxes, scores and classes."""
    num, boxes, scores, classes = (np.asarray(a) for a in dets)
    return all(not (boxes[i, int(num[i, 0]):].any() or scores[i, int(num[i, 0]):].any()
                    or classes[i, int(num[i, 0]):].any()) for i in range(num.shape[0]))


def compare_raw(got: Sequence[np.ndarray], ref: Sequence[np.ndarray], rtol: float = RAW_RTOL,
                atol: float = RAW_ATOL) -> dict[str, Any]:
    """Max abs difference and allclose of raw outputs (boxes, scores) against the reference."""
    diffs = [float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(r, np.float64)))) if np.size(r) else 0.0
             for g, r in zip(got, ref)]
    ok = all(np.allclose(g, r, rtol=rtol, atol=atol) for g, r in zip(got, ref))
    return {"max_abs_diff": max(diffs), "allclose": bool(ok), "rtol": rtol, "atol": atol}


def has_score_ties(scores: np.ndarray, score_threshold: float) -> bool:
    """Whether any image has two (anchor, class) candidates with exactly the same score
    (``scores`` [B, N, C+1] softmax, background column ignored)."""
    for s in np.asarray(scores)[:, :, 1:]:
        cand = s[s >= score_threshold]
        if np.unique(cand).size < cand.size:
            return True
    return False


def plugin_reference_detections(raw: tuple[np.ndarray, np.ndarray], nms: Any) -> NmsOutputs:
    """The numpy EfficientNMS reference (runtime.nms_reference) on raw outputs: the same
    semantics as the PyTorch postprocess, with one defined order among exactly tied scores
    (ascending flat index anchor * C + class)."""
    from runtime.nms_reference import efficient_nms
    boxes, scores = raw
    return efficient_nms(boxes, scores[:, :, 1:], score_threshold=nms.score_threshold,
                         iou_threshold=nms.iou_threshold, max_output_boxes=int(nms.max_detections),
                         class_agnostic=bool(nms.class_agnostic), pre_nms_top_k=int(nms.pre_nms_top_k))


def match_nms_outputs(got: NmsOutputs, ref: NmsOutputs, raw: tuple[np.ndarray, np.ndarray], nms: Any
                      ) -> dict[str, Any]:
    """:func:`~runtime.matching.match_exact` against PyTorch; when that fails on a model whose
    scores have exact ties, the outcome of NMS depends on the tie order, which PyTorch leaves
    unspecified: the comparison is then repeated against :func:`plugin_reference_detections`
    (its tie order is fixed) and the result says so (``tie_fallback``)."""
    m = match_exact(got, ref, raw=raw)
    if m["match"] or not has_score_ties(raw[1], nms.score_threshold):
        return m
    m2 = match_exact(got, plugin_reference_detections(raw, nms), raw=raw)
    m2["tie_fallback"] = True
    m2["torch_mismatch"] = m["why"]
    return m2


# --------------------------------------------------------------------------- the verification table
TIE_NOTE = ("exact score ties (untrained / saturated model?): PyTorch's NMS order among ties is unspecified, "
            "compared with the plugin reference's tie order")


def _new_row(graph: str, path: Path, notes: Sequence[str]) -> dict[str, Any]:
    return {"graph": graph, "file": str(path), "size_mb": round(Path(path).stat().st_size / 2**20, 3),
            "max_abs_diff": 0.0, "detections_match": None, "ok": True, "notes": list(notes), "batches": {}}


def _merge(row: dict[str, Any], bs: int, detail: dict[str, Any], *, ok: bool, diff: float,
           match: bool | None = None) -> None:
    row["batches"][str(bs)] = detail
    row["ok"] = bool(row["ok"] and ok)
    row["max_abs_diff"] = max(row["max_abs_diff"], float(diff))
    if match is not None:
        row["detections_match"] = bool(match) if row["detections_match"] is None else bool(row["detections_match"]
                                                                                           and match)


def _check_nms(row: dict[str, Any], bs: int, got: NmsOutputs, ref: NmsOutputs,
               raw: tuple[np.ndarray, np.ndarray], nms: Any) -> None:
    m = match_nms_outputs(got, ref, raw, nms)
    _merge(row, bs, m, ok=m["match"], diff=max(m["max_box_diff"], m["max_score_diff"]), match=m["match"])
    if m.get("tie_fallback") and TIE_NOTE not in row["notes"]:
        row["notes"].append(TIE_NOTE)
    if m.get("tied_at_cut"):
        row["notes"].append(f"batch {bs}: {m['summary']}")


def _check_int8(row: dict[str, Any], bs: int, got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> None:
    """INT8 moves numbers by design: finite outputs of the right shapes; the difference is reported."""
    finite = all(np.all(np.isfinite(a)) for a in got)
    shapes_ok = [a.shape for a in got] == [a.shape for a in ref]
    c = compare_raw(got, ref)
    _merge(row, bs, {"max_abs_diff": c["max_abs_diff"], "finite": finite, "shapes_ok": shapes_ok},
           ok=finite and shapes_ok, diff=c["max_abs_diff"])


def verify_exports(graphs: Mapping[str, Path], model: Any, anchors: Any, images: Sequence[Any], *,
                   batches: Sequence[int] = VERIFY_BATCHES, threads: int = 0,
                   notes: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, Any]]:
    """Each exported graph against the PyTorch ``model`` (``anchors``: its torch [N, 4] anchors)
    on ``images`` (paths or uint8 HWC RGB, at least max(batches)) at each batch size.

    ``graphs``: graph name ("raw", "trt", "nms", optional "int8") -> ``.onnx`` with its sidecar.
    raw: allclose within RAW_RTOL / RAW_ATOL; nms: :func:`match_nms_outputs` with the sidecar's
    NMS settings; trt: the same, through the plugin's CPU reference (runtime.trt_reference) and
    the NMS settings its sidecar records; int8: finite outputs of the right shapes.
    Returns one row per graph: {graph, file, size_mb, max_abs_diff, detections_match, ok, notes, batches}.
    """
    from runtime.metadata import read_sidecar
    from runtime.preprocess import Preprocessor
    from runtime.trt_reference import TrtGraphReference
    nms, trt_nms = read_sidecar(graphs["nms"]).nms, read_sidecar(graphs["trt"]).nms
    x_all = Preprocessor.from_meta(read_sidecar(graphs["raw"]))(list(images))[0]
    sessions = {g: ort_session(graphs[g], threads) for g in ("raw", "nms", "int8") if g in graphs}
    run: dict[str, Callable[[np.ndarray], Any]] = {g: (lambda x, s=s: tuple(s.run(None, {"images": x})))
                                                  for g, s in sessions.items()}
    run["trt"] = TrtGraphReference(graphs["trt"], intra_op_threads=threads)
    rows = {g: _new_row(g, p, (notes or {}).get(g, ())) for g, p in graphs.items()}
    for bs in batches:
        x = x_all[:bs]
        ref_raw = torch_raw(model, anchors, x)
        c = compare_raw(run["raw"](x), ref_raw)
        _merge(rows["raw"], bs, c, ok=c["allclose"], diff=c["max_abs_diff"])
        ref_det = torch_detections(model, anchors, x, nms)
        # The plugin graph keeps its fixed 4096 pre-NMS candidates (recorded in its sidecar).
        ref_trt = ref_det if trt_nms == nms else torch_detections(model, anchors, x, trt_nms)
        _check_nms(rows["nms"], bs, run["nms"](x), ref_det, ref_raw, nms)
        _check_nms(rows["trt"], bs, run["trt"](x), ref_trt, ref_raw, trt_nms)
        if "int8" in run:
            _check_int8(rows["int8"], bs, run["int8"](x), ref_raw)
    return rows


# --------------------------------------------------------------------------- the INT8 accuracy gate
def evaluate_graphs(graphs: Mapping[str, Path], dataset: Any, *, max_images: int | None = None, threads: int = 0,
                    progress: bool = False) -> dict[str, dict[str, Any]]:
    """COCO metrics (points, 0..100) of ONNX graphs on the first ``max_images`` items of an
    eval-mode dataset, through the one evaluation path: runtime's ONNX Runtime detector
    (preprocess, graph, numpy EfficientNMS with the sidecar's settings) in
    ``runtime.evaluation.inference_on_dataset`` with ``runtime.metrics.CocoEvaluator``.
    TensorRT plugin graphs (sidecar graph "trt") run through the plugin's CPU reference.
    Returns graph name -> metrics plus ``eval_images`` and ``eval_seconds``."""
    from runtime.evaluation import eval_subset, inference_on_dataset
    from runtime.load import load_detector
    from runtime.metadata import read_sidecar
    from runtime.metrics import CocoEvaluator
    indices, gt = eval_subset(dataset, max_images)
    out = {}
    for name, path in graphs.items():
        provider = "reference" if read_sidecar(path).graph == "trt" else None
        with load_detector(path, threads=threads or None, provider=provider) as det:
            evaluator = CocoEvaluator(gt, det.meta.category_ids, det.meta.class_names)
            m = inference_on_dataset(det, dataset, evaluator, indices=indices, batch_size=16, progress=progress,
                                     desc=f"mAP {name}", per_class=False)
        out[name] = {**m, "eval_images": m["images"], "eval_seconds": m["seconds"]}
    return out


def check_int8_map(maps: dict[str, Any], max_drop: float, graph: str = "int8") -> str | None:
    """Record the mAP drop of ``graph`` (default the INT8 graph) against FP32 in ``maps`` (from
    :func:`evaluate_graphs`: "raw", ``graph``) as ``<graph>_map_drop`` / ``<graph>_max_map_drop``
    and return why the graph fails (more than ``max_drop`` points lost), or None."""
    if graph not in maps:
        return None
    drop = maps["raw"]["mAP"] - maps[graph]["mAP"]
    maps[f"{graph}_map_drop"] = drop
    maps[f"{graph}_max_map_drop"] = max_drop
    if drop <= max_drop:
        return None
    name = "INT8" if graph == "int8" else graph
    return (f"{name} mAP {maps[graph]['mAP']:.2f} is {drop:.2f} points below FP32 {maps['raw']['mAP']:.2f} "
            f"(allowed {max_drop})")


# --------------------------------------------------------------------------- INT8 vs FP32 on this CPU
def latency(fn: Callable[[], Any], warmup: int = 5, iters: int = 30) -> dict[str, float]:
    """Wall-clock ms of ``fn()``: warm-up calls excluded, then ``iters`` timed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(times)
    return {"mean_ms": float(a.mean()), "std_ms": float(a.std()), "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "iters": int(a.size)}


def int8_speedup(raw_onnx: Path, int8_onnx: Path, x: np.ndarray, *, threads: int = 0, iters: int = 20
                 ) -> dict[str, Any]:
    """The report's quick INT8 vs FP32 latency on this CPU (batch 1 and 8 of ``x`` float32
    [B, 3, H, W], ONNX Runtime, model only). Full measurements are the benchmark's job."""
    import platform
    out: dict[str, Any] = {"threads": threads or "ort default", "cpu": platform.processor() or platform.machine()}
    timed = {g: ort_session(p, threads, spinning=True) for g, p in (("raw", raw_onnx), ("int8", int8_onnx))}
    for bs in (1, 8):
        xb = np.ascontiguousarray(np.resize(x, (bs,) + x.shape[1:]))
        for g, s in timed.items():
            out[f"{g}_b{bs}"] = latency(lambda s=s: s.run(None, {"images": xb}), iters=iters)
        out[f"int8_speedup_b{bs}"] = out[f"raw_b{bs}"]["p50_ms"] / out[f"int8_b{bs}"]["p50_ms"]
    return out
