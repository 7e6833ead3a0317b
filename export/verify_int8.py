"""Is ``model_int8_nms.onnx`` the INT8 model with the product's NMS? Numbers with tolerances.

Per batch (1 and 3) of preprocessed verification images:

* **fused NMS** -- the INT8 NMS graph's four outputs equal, detection for detection
  (:func:`export.verify.match_nms_outputs`: same count, classes, boxes and scores within
  ``runtime.matching``'s float tolerances), the runtime's host NMS (``runtime.detector.nms_of_raw``,
  EfficientNMS semantics with the sidecar's settings) of ``model_int8.onnx``'s raw outputs: the
  graph is exactly the INT8 body + the FP32 graph's NMS tail;
* **against PyTorch** -- runtime.parity's detection agreement (same class, IoU >= 0.95, one to
  one, both ways) with the PyTorch model's detections, and the largest difference of the raw
  outputs: reported; INT8 moves numbers by design and its accuracy is held by the mAP gate
  (``export.verify.check_int8_map``), not by a per-detection bound.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.verify import VERIFY_BATCHES


def _agreement(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], meta: Any) -> float:
    from export.verify_variants import nms_agreement
    from runtime.outputs import NMS_OUTPUTS
    ref_d, got_d = dict(zip(NMS_OUTPUTS, ref)), dict(zip(NMS_OUTPUTS, got))
    return float(min(nms_agreement(ref_d, got_d, meta)["agreement"], nms_agreement(got_d, ref_d, meta)["agreement"]))


def verify_int8_nms(int8_raw: str | Path, int8_nms: str | Path, model: Any, anchors: Any, images: Sequence[Any], *,
                    batches: Sequence[int] = VERIFY_BATCHES, threads: int = 0,
                    notes: Sequence[str] = ()) -> dict[str, Any]:
    """The verification row of ``int8_nms`` (module docstring), in the shape of
    :func:`export.verify.verify_exports`' rows (graph, file, size_mb, max_abs_diff,
    detections_match, ok, notes, batches) plus precision, ``agreement_pytorch`` (worst batch) and
    ``max_raw_diff_pytorch``. ``model``: the PyTorch model, ``anchors`` its torch [N, 4] anchors;
    ``images``: paths or uint8 HWC RGB, at least max(batches)."""
    from export import verify as V
    from runtime.detector import nms_of_raw
    from runtime.metadata import read_sidecar
    from runtime.preprocess import Preprocessor
    meta = read_sidecar(int8_nms)
    x_all = Preprocessor.from_meta(read_sidecar(int8_raw))(list(images))[0]
    raw_s, nms_s = V.ort_session(int8_raw, threads), V.ort_session(int8_nms, threads)
    row = {"graph": "int8_nms", "file": str(int8_nms), "size_mb": round(Path(int8_nms).stat().st_size / 2**20, 3),
           "precision": meta.precision, "max_abs_diff": 0.0, "detections_match": True, "ok": True,
           "notes": list(notes), "batches": {}, "agreement_pytorch": 1.0, "max_raw_diff_pytorch": 0.0}
    for bs in batches:
        x = np.ascontiguousarray(x_all[:bs])
        raw_q = tuple(raw_s.run(None, {"images": x}))
        got = tuple(nms_s.run(None, {"images": x}))
        m = V.match_nms_outputs(got, nms_of_raw(raw_q[0], raw_q[1], meta.nms), raw_q, meta.nms)
        agree = _agreement(V.torch_detections(model, anchors, x, meta.nms), got, meta)
        raw_diff = V.compare_raw(raw_q, V.torch_raw(model, anchors, x))["max_abs_diff"]
        finite = all(bool(np.all(np.isfinite(a))) for a in got)
        row["batches"][str(bs)] = {**m, "finite": finite, "agreement_pytorch": agree, "max_raw_diff_pytorch": raw_diff}
        row["max_abs_diff"] = max(row["max_abs_diff"], m["max_box_diff"], m["max_score_diff"])
        row["detections_match"] = bool(row["detections_match"] and m["match"])
        row["ok"] = bool(row["ok"] and m["match"] and finite)
        row["agreement_pytorch"] = min(row["agreement_pytorch"], agree)
        row["max_raw_diff_pytorch"] = max(row["max_raw_diff_pytorch"], raw_diff)
    return row


def int8_rows(paths: Mapping[str, Path], model: Any, anchors: Any, images: Sequence[Any], *, threads: int = 0,
              notes: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, Any]]:
    """The row of the INT8 NMS graph when ``paths`` (graph name -> .onnx) has "int8" and "int8_nms"."""
    if not {"int8", "int8_nms"} <= set(paths):
        return {}
    return {"int8_nms": verify_int8_nms(paths["int8"], paths["int8_nms"], model, anchors, images, threads=threads,
                                        notes=(notes or {}).get("int8_nms", ()))}
