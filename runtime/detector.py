"""The ``Detector`` interface every backend implements, and the output parsing they share.

::

    det = load_detector("exports/kd/model_nms.onnx")     # runtime.load: picks the backend
    dets = det(["a.jpg", pil_image, hwc_uint8])          # list of Results (runtime.results)
    r = det("a.jpg", conf=0.3)                           # one image: one Results; r.boxes, r["boxes"]

A detector is three steps, each callable on its own so benchmarks can time them separately:

    preprocess(images)          -> (float32 [B, 3, H, W], int64 [B, 2] original (h, w))
    infer(batch)                -> raw graph outputs, dict name -> numpy array   (model only)
    postprocess(outputs, hw)    -> per image {"boxes" float32 [K, 4] xyxy original pixels,
                                              "scores" float32 [K], "labels" int64 [K] in 1..C}

Graph outputs (:mod:`runtime.outputs`) come in two kinds, told apart by their names:

* ``"nms"``: ``num_detections`` int32 [B, 1], ``detection_boxes`` float32 [B, K, 4] normalised
  xyxy, ``detection_scores`` [B, K], ``detection_classes`` int32 [B, K] 0-based object class;
* ``"raw"``: ``boxes`` [B, N, 4] normalised xyxy and ``scores`` [B, N, C + 1] softmax (column 0
  background); NMS is then done by :func:`runtime.nms_reference.efficient_nms` semantics with the
  sidecar's :class:`~runtime.metadata.NMSConfig` (thresholds are never re-typed here).

This module imports numpy and pillow only, and no backend: backends import it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from runtime.metadata import ModelMeta, NMSConfig
from runtime.nms_fast import efficient_nms_fast
from runtime.nms_reference import efficient_nms
from runtime.outputs import NMS_OUTPUTS
from runtime.preprocess import Preprocessor, scale_boxes
from runtime.results import Results

# One image's detections: boxes float32 [K, 4] xyxy original pixels, scores float32 [K],
# labels int64 [K] in 1..C.
Detections = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# Output parsing (pure numpy; shared by every backend, tested without any runtime).
# --------------------------------------------------------------------------------------------
def detections_from_nms(
    num_detections: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    orig_hw: np.ndarray,
    num_classes: int,
    resize_mode: str = "stretch",
    input_size: Sequence[int] | None = None,
) -> list[Detections]:
    """NMS graph outputs -> detections in original-image pixels.

    ``num_detections`` int [B, 1]; ``boxes`` [B, K, 4] normalised xyxy; ``scores`` [B, K];
    ``classes`` int [B, K] 0-based object class; ``orig_hw`` int [B, 2]. Only the first
    ``num_detections[b]`` rows of image b are read. Labels are ``class + 1`` (1..C). Boxes go back
    to original pixels by :func:`runtime.preprocess.scale_boxes` (``input_size`` (H, W) is needed
    for ``resize_mode="letterbox"``).
    """
    num = np.asarray(num_detections).reshape(-1)
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    classes = np.asarray(classes)
    orig_hw = np.asarray(orig_hw)
    b = num.shape[0]
    if boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[2] != 4:
        raise ValueError(f"detection_boxes must be [B, K, 4] with B={b}, got {boxes.shape}")
    k = boxes.shape[1]
    if scores.shape != (b, k) or classes.shape != (b, k):
        raise ValueError(
            f"detection_scores and detection_classes must be [B, K] = [{b}, {k}], got "
            f"{scores.shape} and {classes.shape}"
        )
    if orig_hw.shape != (b, 2):
        raise ValueError(f"orig_hw must be [B, 2] with B={b}, got {orig_hw.shape}")
    out = []
    for i in range(b):
        n = int(num[i])
        if not 0 <= n <= k:
            raise ValueError(f"num_detections[{i}] = {n} is outside 0..K={k}")
        cls = classes[i, :n].astype(np.int64)
        if n and (cls.min() < 0 or cls.max() >= num_classes):
            raise ValueError(
                f"detection_classes of image {i} must be 0-based object classes in 0..{num_classes - 1}, "
                f"got values in {int(cls.min())}..{int(cls.max())}"
            )
        out.append({
            "boxes": scale_boxes(boxes[i, :n].reshape(n, 4), orig_hw[i], resize_mode, input_size),
            "scores": scores[i, :n].astype(np.float32),
            "labels": cls + 1,
        })
    return out


def nms_of_raw(boxes: np.ndarray, scores: np.ndarray, nms: NMSConfig, exact_reference: bool = False
               ) -> tuple[np.ndarray, ...]:
    """Raw outputs (boxes [B, N, 4] normalised xyxy, scores [B, N, C+1]) -> the four NMS outputs.

    EfficientNMS_TRT semantics with the sidecar's settings; the background column is dropped so
    the classes come out 0-based exactly as the NMS graphs emit them. By default the blocked
    implementation :func:`runtime.nms_fast.efficient_nms_fast` (bit-identical results,
    tested); ``exact_reference=True`` runs :func:`runtime.nms_reference.efficient_nms` itself.
    """
    scores = np.asarray(scores)
    if scores.ndim != 3 or scores.shape[2] < 2:
        raise ValueError(f"raw scores must be [B, N, C + 1] with C >= 1, got {scores.shape}")
    if not exact_reference:
        return efficient_nms_fast(
            boxes, scores[:, :, 1:],
            score_threshold=nms.score_threshold, iou_threshold=nms.iou_threshold,
            max_output_boxes=nms.max_detections, pre_nms_top_k=nms.pre_nms_top_k,
            class_agnostic=nms.class_agnostic,
        )
    return efficient_nms(
        boxes, scores[:, :, 1:],
        score_threshold=nms.score_threshold, iou_threshold=nms.iou_threshold,
        max_output_boxes=nms.max_detections, pre_nms_top_k=nms.pre_nms_top_k,
        class_agnostic=nms.class_agnostic, background_class=-1,
    )


# --------------------------------------------------------------------------------------------
# The interface.
# --------------------------------------------------------------------------------------------
class Detector(abc.ABC):
    """Base class of every backend.

    Subclasses set ``meta`` (the sidecar :class:`ModelMeta`), ``name`` (report name, e.g.
    ``"onnxruntime-cpu-nms"``), ``kind`` (``"raw"`` or ``"nms"``: what :meth:`infer` returns)
    and ``max_batch`` (largest batch one :meth:`infer` call takes; None = unlimited; a graph
    with a fixed batch dimension sets ``fixed_batch`` and gets padded batches), and implement
    :meth:`infer`.

    A detector reuses its input buffer between calls: use one detector per thread.
    """

    name: str = "detector"
    kind: str = "raw"
    max_batch: int | None = None
    fixed_batch: int | None = None

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = meta
        self._pre = Preprocessor.from_meta(meta, reuse_buffer=True)

    # -- the three steps -------------------------------------------------------------------
    def preprocess(self, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Images -> (float32 [B, 3, H, W] network input (reused buffer), int64 [B, 2] orig (h, w))."""
        return self._pre(images)

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [B, 3, H, W] -> raw graph outputs (see the module docstring); model only."""

    def postprocess(self, outputs: dict[str, np.ndarray], orig_hw: np.ndarray) -> list[Detections]:
        """Outputs of :meth:`infer` + original sizes -> detections in original-image pixels."""
        if self.kind == "raw":
            nms_out = nms_of_raw(outputs["boxes"], outputs["scores"], self.meta.nms)
        else:
            nms_out = tuple(outputs[k] for k in NMS_OUTPUTS)
        return detections_from_nms(*nms_out, orig_hw, self.meta.num_classes, self.meta.resize_mode,
                                   self.meta.input_size)

    # -- conveniences ----------------------------------------------------------------------
    def run_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`infer` with the batch padded to ``fixed_batch`` / split at ``max_batch``."""
        n = batch.shape[0]
        if self.fixed_batch is not None and n != self.fixed_batch:
            if n > self.fixed_batch:
                parts = [self.run_batch(batch[i:i + self.fixed_batch]) for i in range(0, n, self.fixed_batch)]
                return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            pad = np.zeros((self.fixed_batch - n,) + batch.shape[1:], dtype=batch.dtype)
            out = self.infer(np.concatenate([batch, pad]))
            return {k: v[:n] for k, v in out.items()}
        if self.max_batch is not None and n > self.max_batch:
            parts = [self.infer(batch[i:i + self.max_batch]) for i in range(0, n, self.max_batch)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self.infer(batch)

    def __call__(self, images: Any, conf: float | None = None) -> Any:
        """A list of images -> a list of :class:`~runtime.results.Results`; a single image -> its Results.

        Images: paths, ``PIL.Image`` s or uint8 HWC RGB arrays, of any sizes. Each Results holds
        ``boxes`` float32 [K, 4] xyxy in original-image pixels, ``scores`` float32 [K] sorted by
        descending score, ``labels`` int64 [K] in 1..C, the sidecar's class names and category
        ids, and reads like the plain dict (``r["boxes"]``). ``conf``: keep scores >= conf only
        (None: everything the model's NMS score threshold kept).
        """
        single = isinstance(images, (str, os.PathLike, np.ndarray, Image.Image))
        sources = [images] if single else list(images)
        batch, orig = self.preprocess(sources)
        dets = self.postprocess(self.run_batch(batch), orig)
        out = [Results.from_detections(d, self.meta, hw, src) for d, hw, src in zip(dets, orig, sources)]
        if conf is not None:
            out = [r.filter(conf) for r in out]
        return out[0] if single else out

    def close(self) -> None:
        """Release runtime resources (sessions, device buffers). Idempotent."""

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.meta.model_name!r}, kind={self.kind!r})"
