"""CPU reference of the TensorRT plugin graph (``model_trt.onnx``) as a Detector: no GPU needed.

The exact exported file runs: ONNX Runtime up to the inputs of its ``EfficientNMS_TRT`` node,
then the numpy reference of the plugin with the node's own attributes
(:class:`runtime.trt_reference.TrtGraphReference`). Selected with
``load_detector(path, provider="reference")``; report name ``trt-reference-cpu``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import cpu_cores
from runtime.detector import Detector
from runtime.errors import BackendUnavailable
from runtime.metadata import ModelMeta, read_model_meta
from runtime.outputs import NMS_OUTPUTS


class TRTReferenceDetector(Detector):
    """``model_trt.onnx`` + sidecar -> Detector whose ``infer`` returns the plugin's four outputs."""

    kind = "nms"
    name = "trt-reference-cpu"

    def __init__(self, path: Any, meta: ModelMeta | None = None, threads: int | None = None) -> None:
        from runtime.trt_reference import TrtGraphReference

        path = Path(path)
        meta = meta or read_model_meta(path)
        if meta.graph != "trt":
            raise ValueError(f"{path.name} is graph {meta.graph!r}; the TensorRT CPU reference runs 'trt' graphs")
        super().__init__(meta)
        self.path = path
        try:
            self.reference = TrtGraphReference(path, intra_op_threads=int(threads) if threads else cpu_cores())
        except ImportError as e:
            raise BackendUnavailable(f"TensorRT CPU reference unavailable: {e}") from None
        k = int(self.reference.attrs["max_output_boxes"])
        if k != meta.nms.max_detections:
            raise ValueError(f"{path.name}: plugin max_output_boxes {k} differs from the sidecar's "
                             f"nms.max_detections {meta.nms.max_detections}")

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(NMS_OUTPUTS, self.reference(batch)))

    def close(self) -> None:
        self.reference = None
