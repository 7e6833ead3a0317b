"""The reduced-precision TensorRT plugin graphs (``model_trt_fp16.onnx``, ``model_trt_int8.onnx``)
against the FP32 plugin graph they were made from, on CPU, as numbers with a bound.

Both graphs run through the plugin's CPU reference (:class:`runtime.trt_reference.TrtGraphReference`:
ONNX Runtime up to the EfficientNMS_TRT inputs, then the numpy plugin), on the same preprocessed
images at batch 1 and 3. Per batch: the largest difference of the plugin inputs (deltas, scores),
whether they are finite FP32, and the detection agreement of runtime.parity (same class, IoU >=
0.95, one to one) with its bound for the variant's precision (``MIN_AGREEMENT``: FP16 0.80;
INT8 reported only, its accuracy is held by the mAP gate). ONNX Runtime's CPU provider runs FP16
nodes with FP16 storage (casting to FP32 where it has no FP16 kernel): this checks the rounding of
weights and activations to FP16, not a GPU's FP16 arithmetic -- the engine check does that.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.verify import VERIFY_BATCHES


def nms_agreement(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], meta: Any) -> dict[str, Any]:
    """runtime.parity agreement of two sets of the four NMS outputs (by name) of one batch,
    boxes taken in the network input's pixels (``meta.input_size``); tie-aware at the top-K cut
    (``meta.nms.max_detections``)."""
    from runtime.detector import detections_from_nms
    from runtime.outputs import NMS_OUTPUTS
    from runtime.parity import agreement
    h, w = meta.input_size
    hw = np.tile(np.array([[h, w]]), (np.asarray(ref[NMS_OUTPUTS[0]]).shape[0], 1))
    ref_dets, got_dets = (detections_from_nms(*(o[k] for k in NMS_OUTPUTS), hw, meta.num_classes, meta.resize_mode)
                          for o in (ref, got))
    return agreement(ref_dets, got_dets, max_detections=int(meta.nms.max_detections))


def _plugin_inputs_check(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, Any]:
    diff = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
                for a, b in zip(ref, got)), default=0.0)
    return {"plugin_inputs_max_abs_diff": diff,
            "plugin_inputs_fp32": all(np.asarray(g).dtype == np.float32 for g in got),
            "finite": all(bool(np.all(np.isfinite(g))) for g in got)}


def verify_variant(ref: Any, cand: Any, meta: Any, x_all: np.ndarray, batches: Sequence[int]) -> dict[str, Any]:
    """One variant (``cand``, a TrtGraphReference, sidecar ``meta``) against the FP32 plugin graph's
    reference ``ref`` on ``x_all`` float32 [>= max(batches), 3, H, W]. Returns the verification row
    fields: agreement (worst batch), its bound, ok, per-batch details."""
    from runtime.outputs import NMS_OUTPUTS
    from runtime.parity import MIN_AGREEMENT
    bound = MIN_AGREEMENT.get(meta.precision)
    rows, worst, diff, ok = {}, 1.0, 0.0, True
    for bs in batches:
        x = np.ascontiguousarray(x_all[:bs])
        inputs = _plugin_inputs_check(ref.plugin_inputs(x), cand.plugin_inputs(x))
        a = nms_agreement(dict(zip(NMS_OUTPUTS, ref(x))), dict(zip(NMS_OUTPUTS, cand(x))), meta)
        batch_ok = inputs["finite"] and inputs["plugin_inputs_fp32"] and (bound is None or a["agreement"] >= bound)
        rows[str(bs)] = {**inputs, **a, "ok": batch_ok}
        worst, diff, ok = min(worst, a["agreement"]), max(diff, inputs["plugin_inputs_max_abs_diff"]), ok and batch_ok
    return {"agreement": worst, "min_agreement": bound, "max_abs_diff": diff, "ok": ok, "batches": rows,
            "detections_match": (worst >= bound) if bound is not None else None}


def verify_variants(trt_fp32: str | Path, variants: Mapping[str, str | Path], images: Sequence[Any], *,
                    batches: Sequence[int] = VERIFY_BATCHES, threads: int = 0,
                    notes: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, Any]]:
    """Each variant graph (name -> ``.onnx`` with its sidecar) against ``trt_fp32`` on ``images``
    (paths or uint8 HWC RGB, at least max(batches)). Returns one row per variant in the shape of
    :func:`export.verify.verify_exports`' rows (graph, file, size_mb, max_abs_diff,
    detections_match, ok, notes, batches) plus precision, agreement and min_agreement."""
    from runtime.metadata import read_sidecar
    from runtime.preprocess import Preprocessor
    from runtime.trt_reference import TrtGraphReference
    x_all = Preprocessor.from_meta(read_sidecar(trt_fp32))(list(images))[0]
    ref = TrtGraphReference(trt_fp32, intra_op_threads=threads)
    out = {}
    for name, path in variants.items():
        meta = read_sidecar(path)
        row = verify_variant(ref, TrtGraphReference(path, intra_op_threads=threads), meta, x_all, batches)
        out[name] = {"graph": name, "file": str(path), "size_mb": round(Path(path).stat().st_size / 2**20, 3),
                     "precision": meta.precision, "notes": list((notes or {}).get(name, ())), **row}
    return out
