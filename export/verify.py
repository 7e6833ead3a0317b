"""Parity and speed of exported graphs, as numbers with tolerances.

* :func:`torch_raw` / :func:`torch_detections`: the PyTorch references (``distill.postprocess``).
* :func:`compare_raw`: max abs diff and allclose of the raw outputs.
* :func:`match_detections`: NMS outputs equal up to tolerances, robust to the order of exactly
  tied scores (the plugin's own order among equal scores is not deterministic either).
* :func:`latency`: ORT latency with warm-up excluded.
* :func:`evaluate_map`: COCO mAP of a raw-output function over a dataset (runtime.metrics).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

Dets = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # num [B,1], boxes [B,K,4], scores [B,K], classes [B,K]

RAW_RTOL, RAW_ATOL = 1e-3, 1e-5
BOX_TOL, SCORE_TOL = 1e-4, 1e-4


def ort_session(model: Any, threads: int = 0, spinning: bool = False):
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


def torch_raw(model, anchors, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """PyTorch raw outputs: boxes [B,N,4] normalised xyxy, scores [B,N,C+1] softmax."""
    import torch

    from distill.postprocess import decode_outputs
    with torch.no_grad():
        loc, conf = model(torch.from_numpy(np.ascontiguousarray(x)))
        b, s = decode_outputs(loc, conf, anchors, model.box_coder)
    return b.numpy(), s.numpy()


def pad_detections(dets: Sequence[Dict[str, Any]], k: int) -> Dets:
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


def torch_detections(model, anchors, x: np.ndarray, nms) -> Dets:
    """PyTorch postprocess (EfficientNMS semantics) in the graphs' output format."""
    import torch

    from distill.postprocess import postprocess
    with torch.no_grad():
        loc, conf = model(torch.from_numpy(np.ascontiguousarray(x)))
        dets = postprocess(loc, conf, anchors, model.box_coder, nms)
    return pad_detections(dets, int(nms.max_detections))


def padding_is_zero(dets: Dets) -> bool:
    """Rows past ``num_detections[b]`` are all zero in boxes, scores and classes."""
    num, boxes, scores, classes = (np.asarray(a) for a in dets)
    return all(not (boxes[i, int(num[i, 0]):].any() or scores[i, int(num[i, 0]):].any()
                    or classes[i, int(num[i, 0]):].any()) for i in range(num.shape[0]))


def compare_raw(got: Sequence[np.ndarray], ref: Sequence[np.ndarray], rtol: float = RAW_RTOL,
                atol: float = RAW_ATOL) -> Dict[str, Any]:
    diffs = [float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(r, np.float64)))) if np.size(r) else 0.0
             for g, r in zip(got, ref)]
    ok = all(np.allclose(g, r, rtol=rtol, atol=atol) for g, r in zip(got, ref))
    return {"max_abs_diff": max(diffs), "allclose": bool(ok), "rtol": rtol, "atol": atol}


def match_detections(got: Dets, ref: Dets, box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL,
                     raw: Optional[Tuple[np.ndarray, np.ndarray]] = None, tie_tol: float = 1e-6) -> Dict[str, Any]:
    """Do two sets of NMS outputs describe the same detections?

    Per image: same ``num_detections``; scores non-increasing; every valid row of ``ref`` pairs
    with one valid row of ``got`` of the same class whose score and box agree within the
    tolerances (pairing is by value, so rows of exactly equal score may come in either order);
    padding rows are all zero.

    Exact ties: when several anchors have the same score for a class (saturated features of an
    untrained net do that), which of them survives NMS depends on the sort's tie order, which no
    implementation fixes (the plugin's GPU sort neither). Given ``raw`` = the reference's
    (boxes [B,N,4], scores [B,N,C+1]), a box of any anchor tied (within ``tie_tol``) with the
    reference detection is accepted too; such pairs are counted in ``tie_swaps``. Likewise, when
    the K output rows are full, rows whose score ties the last (K-th) score may belong to any of
    the tied (anchor, class) pairs: those are compared by count only.
    Returns {"match", "max_box_diff", "max_score_diff", "tie_swaps", "num_got", "num_ref", "why"}.
    """
    gn, gb, gs, gc = (np.asarray(a) for a in got)
    rn, rb, rs, rc = (np.asarray(a) for a in ref)
    out: Dict[str, Any] = {"match": True, "max_box_diff": 0.0, "max_score_diff": 0.0, "tie_swaps": 0,
                           "num_got": gn.reshape(-1).tolist(), "num_ref": rn.reshape(-1).tolist(), "why": ""}

    def fail(why: str) -> Dict[str, Any]:
        out["match"], out["why"] = False, out["why"] or why
        return out

    if gb.shape != rb.shape or gn.shape != rn.shape:
        return fail(f"shapes differ: {gb.shape} vs {rb.shape}")
    if gn.dtype != np.int32 or gc.dtype != np.int32:
        return fail(f"num_detections / detection_classes must be int32, got {gn.dtype} / {gc.dtype}")
    for i in range(gn.shape[0]):
        n, m = int(gn[i, 0]), int(rn[i, 0])
        if n != m:
            fail(f"image {i}: {n} detections vs {m}")
            continue
        if np.any(np.diff(gs[i, :n]) > 1e-7):
            fail(f"image {i}: scores not in descending order")
        if np.any(gb[i, n:] != 0) or np.any(gs[i, n:] != 0) or np.any(gc[i, n:] != 0):
            fail(f"image {i}: padding rows are not zero")
        used = np.zeros(n, bool)
        if m == gb.shape[1] and m:  # truncated at K: pairs tied with the K-th score are interchangeable
            cut = float(rs[i, m - 1])
            g_tail = np.abs(gs[i, :n] - cut) <= tie_tol
            r_tail = np.abs(rs[i, :m] - cut) <= tie_tol
            if g_tail.sum() != r_tail.sum():
                fail(f"image {i}: {int(g_tail.sum())} vs {int(r_tail.sum())} rows tied with the last score")
            used |= g_tail
        else:
            r_tail = np.zeros(m, bool)
        for j in range(m):
            if r_tail[j]:
                continue
            cand = np.flatnonzero(~used & (gc[i, :n] == rc[i, j]) & (np.abs(gs[i, :n] - rs[i, j]) <= score_tol))
            if cand.size == 0:
                fail(f"image {i}: no detection of class {int(rc[i, j])} with score {float(rs[i, j]):.6f}")
                continue
            d = np.max(np.abs(gb[i, cand] - rb[i, j]), axis=1)
            if d.min() > box_tol and raw is not None:
                tied = np.abs(raw[1][i, :, int(rc[i, j]) + 1] - rs[i, j]) <= tie_tol      # anchors tied with j
                alt = raw[0][i, tied]                                                   # [T, 4]
                d_alt = np.min(np.max(np.abs(gb[i, cand][:, None, :] - alt[None]), axis=2), axis=1) \
                    if len(alt) else np.full(len(cand), np.inf)
                if d_alt.min() <= box_tol:
                    out["tie_swaps"] += 1
                    d = np.where(d_alt <= box_tol, 0.0, d)
            best = cand[int(np.argmin(d))]
            used[best] = True
            out["max_box_diff"] = max(out["max_box_diff"], float(d.min()))
            out["max_score_diff"] = max(out["max_score_diff"], float(abs(gs[i, best] - rs[i, j])))
            if d.min() > box_tol:
                fail(f"image {i}: box of class {int(rc[i, j])} (score {float(rs[i, j]):.6f}) differs by {d.min():.2e}")
    return out


def has_score_ties(scores: np.ndarray, score_threshold: float) -> bool:
    """Whether any image has two (anchor, class) candidates with exactly the same score
    (``scores`` [B, N, C+1] softmax, background column ignored)."""
    for s in np.asarray(scores)[:, :, 1:]:
        cand = s[s >= score_threshold]
        if np.unique(cand).size < cand.size:
            return True
    return False


def plugin_reference_detections(raw: Tuple[np.ndarray, np.ndarray], nms) -> Dets:
    """The numpy EfficientNMS reference (runtime.nms_reference) on raw outputs: the same
    semantics as the PyTorch postprocess, with one defined order among exactly tied scores
    (ascending flat index anchor * C + class)."""
    from runtime.nms_reference import efficient_nms
    boxes, scores = raw
    return efficient_nms(boxes, scores[:, :, 1:], score_threshold=nms.score_threshold,
                         iou_threshold=nms.iou_threshold, max_output_boxes=int(nms.max_detections),
                         class_agnostic=bool(nms.class_agnostic), pre_nms_top_k=int(nms.pre_nms_top_k))


def match_nms_outputs(got: Dets, ref: Dets, raw: Tuple[np.ndarray, np.ndarray], nms) -> Dict[str, Any]:
    """:func:`match_detections` against PyTorch; when that fails on a model whose scores have
    exact ties, the outcome of NMS depends on the tie order, which PyTorch leaves unspecified: the
    comparison is then repeated against :func:`plugin_reference_detections` (its tie order is
    fixed) and the result says so (``tie_fallback``)."""
    m = match_detections(got, ref, raw=raw)
    if m["match"] or not has_score_ties(raw[1], nms.score_threshold):
        return m
    m2 = match_detections(got, plugin_reference_detections(raw, nms), raw=raw)
    m2["tie_fallback"] = True
    m2["torch_mismatch"] = m["why"]
    return m2


def latency(fn: Callable[[], Any], warmup: int = 5, iters: int = 30, min_seconds: float = 0.0) -> Dict[str, float]:
    """Wall-clock ms of ``fn()``: warm-up calls excluded; at least ``iters`` calls and ``min_seconds``."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < iters or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(times)
    return {"mean_ms": float(a.mean()), "std_ms": float(a.std()), "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "iters": int(a.size)}


def evaluate_map(raw_fn: Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]], dataset: Any, meta: Any, *,
                 batch_size: int = 16, max_images: Optional[int] = None, desc: str = "eval") -> Dict[str, Any]:
    """COCO metrics (points) of a raw-output function ``images -> (boxes, scores)`` over an
    eval-mode dataset, postprocessed with ``distill.postprocess.select_detections`` and the
    sidecar's NMS settings (the same path as ``distill.engine.evaluate``)."""
    import torch
    from tqdm import tqdm

    from distill.postprocess import select_detections
    from runtime.metrics import CocoEvaluator
    from runtime.preprocess import preprocess_batch, scale_boxes

    n = len(dataset) if max_images is None else min(int(max_images), len(dataset))
    gt = dataset.coco_gt()
    ids = {dataset.image_ids[i] for i in range(n)} if hasattr(dataset, "image_ids") else None
    if ids is not None and n < len(dataset):
        gt = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    evaluator = CocoEvaluator(gt, dataset.category_ids)
    nms = meta.nms
    t0 = time.perf_counter()
    for start in tqdm(range(0, n, batch_size), desc=desc, leave=False, dynamic_ncols=True):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        x, orig = preprocess_batch([im for im, _ in items], meta.input_size, meta.mean, meta.std, meta.resize_mode)
        boxes, scores = raw_fn(x)
        dets = select_detections(torch.from_numpy(np.asarray(boxes)), torch.from_numpy(np.asarray(scores)),
                                 score_threshold=nms.score_threshold, iou_threshold=nms.iou_threshold,
                                 max_detections=nms.max_detections, pre_nms_top_k=nms.pre_nms_top_k,
                                 class_agnostic=nms.class_agnostic)
        for d, hw, (_, t) in zip(dets, orig, items):
            evaluator.process(t["image_id"], scale_boxes(d["boxes"].numpy(), hw, meta.resize_mode),
                              d["scores"].numpy(), d["labels"].numpy())
    metrics = evaluator.evaluate(per_class=False)
    metrics["eval_images"] = n
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics
