"""The graph I/O contract (DESIGN.md, "Graph outputs"), defined once for export and every runtime.

* input ``images``: float32 [B, 3, H, W], normalised pixels (see :mod:`runtime.preprocess`);
* NMS graphs (TensorRT plugin graph, ONNX-NMS graph, engines built from them):
  ``num_detections`` int32 [B, 1], ``detection_boxes`` float32 [B, K, 4] normalised xyxy,
  ``detection_scores`` float32 [B, K], ``detection_classes`` int32 [B, K] 0-based object class;
  only the first ``num_detections[b]`` rows of image b are valid;
* raw graphs: ``boxes`` float32 [B, N, 4] decoded normalised xyxy and ``scores`` float32
  [B, N, C + 1] softmax, column 0 background.

Imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["INPUT_NAME", "NMS_OUTPUTS", "RAW_OUTPUTS", "output_kind"]

INPUT_NAME = "images"
NMS_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
RAW_OUTPUTS = ("boxes", "scores")


def output_kind(names: Iterable[str]) -> str:
    """``"nms"`` or ``"raw"`` from a graph's output names; ValueError for anything else."""
    names = set(names)
    if set(NMS_OUTPUTS) <= names:
        return "nms"
    if set(RAW_OUTPUTS) <= names:
        return "raw"
    raise ValueError(
        f"graph outputs {sorted(names)} are neither the NMS outputs {list(NMS_OUTPUTS)} nor the "
        f"raw outputs {list(RAW_OUTPUTS)} (DESIGN.md, 'Graph outputs')"
    )
