"""One ``Detector`` interface for every backend, and ``load_detector`` that picks the backend.

::

    det = load_detector("exports/kd/model_nms.onnx")     # or .engine, or a .pt checkpoint
    dets = det(["a.jpg", pil_image, hwc_uint8])          # list of {boxes, scores, labels}

A detector is three steps, each callable on its own so benchmarks can time them separately:

    preprocess(images)          -> (float32 [B, 3, H, W], int64 [B, 2] original (h, w))
    infer(batch)                -> raw graph outputs, dict name -> numpy array   (model only)
    postprocess(outputs, hw)    -> per image {"boxes" float32 [K, 4] xyxy original pixels,
                                              "scores" float32 [K], "labels" int64 [K] in 1..C}

Graph outputs (DESIGN.md) come in two kinds, told apart by their names:

* ``"nms"``: ``num_detections`` int32 [B, 1], ``detection_boxes`` float32 [B, K, 4] normalised
  xyxy, ``detection_scores`` [B, K], ``detection_classes`` int32 [B, K] 0-based object class;
* ``"raw"``: ``boxes`` [B, N, 4] normalised xyxy and ``scores`` [B, N, C + 1] softmax (column 0
  background); NMS is then done by :func:`runtime.nms_reference.efficient_nms` with the
  sidecar's :class:`~runtime.metadata.NMSConfig` (thresholds are never re-typed here).

This module imports numpy and pillow only; backends import their libraries when built.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from runtime.metadata import ModelMeta, NMSConfig, read_sidecar
from runtime.nms_reference import efficient_nms
from runtime.preprocess import load_image, resize, scale_boxes

NMS_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
RAW_OUTPUTS = ("boxes", "scores")
INPUT_NAME = "images"

Detections = Dict[str, np.ndarray]

CHECKPOINT_SUFFIXES = (".pt", ".pth")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# provider= values accepted by load_detector for .onnx files.
PROVIDERS = ("cpu", "cuda", "tensorrt", "reference")


def output_kind(names: Sequence[str]) -> str:
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


def cpu_cores() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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
) -> List[Detections]:
    """NMS graph outputs -> detections in original-image pixels.

    ``num_detections`` int [B, 1]; ``boxes`` [B, K, 4] normalised xyxy; ``scores`` [B, K];
    ``classes`` int [B, K] 0-based object class; ``orig_hw`` int [B, 2]. Only the first
    ``num_detections[b]`` rows of image b are read. Labels are ``class + 1`` (1..C).
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
            "boxes": scale_boxes(boxes[i, :n].reshape(n, 4), orig_hw[i], resize_mode),
            "scores": scores[i, :n].astype(np.float32),
            "labels": cls + 1,
        })
    return out


def nms_of_raw(boxes: np.ndarray, scores: np.ndarray, nms: NMSConfig, exact_reference: bool = False
               ) -> Tuple[np.ndarray, ...]:
    """Raw outputs (boxes [B, N, 4] normalised xyxy, scores [B, N, C+1]) -> the four NMS outputs.

    EfficientNMS_TRT semantics with the sidecar's settings; the background column is dropped so
    the classes come out 0-based exactly as the NMS graphs emit them. By default the blocked
    implementation :func:`runtime.backends.numpy_nms.efficient_nms_fast` (bit-identical results,
    tested); ``exact_reference=True`` runs :func:`runtime.nms_reference.efficient_nms` itself.
    """
    scores = np.asarray(scores)
    if scores.ndim != 3 or scores.shape[2] < 2:
        raise ValueError(f"raw scores must be [B, N, C + 1] with C >= 1, got {scores.shape}")
    if not exact_reference:
        from runtime.backends.numpy_nms import efficient_nms_fast

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
# Preprocessing into a reused buffer (bit-identical to runtime.preprocess.preprocess_batch).
# --------------------------------------------------------------------------------------------
class BatchPreprocessor:
    """:func:`runtime.preprocess.preprocess_batch` writing into a preallocated input buffer.

    Same pixels bit for bit (same ``load_image`` and ``resize``; the normalisation
    ``(p / 255 - mean) / std`` is evaluated in float32 once per possible byte value and then
    looked up, which gives the identical float32 results), but no per-call allocation of the
    network input. The returned batch is a view of that buffer: the next call overwrites it.
    """

    def __init__(self, meta: ModelMeta) -> None:
        self.input_size = tuple(int(v) for v in meta.input_size)
        self.resize_mode = meta.resize_mode
        mean = np.asarray(meta.mean, dtype=np.float32)
        std = np.asarray(meta.std, dtype=np.float32)
        v = np.arange(256, dtype=np.float32) / np.float32(255.0)
        self.lut = np.ascontiguousarray((v[None, :] - mean[:, None]) / std[:, None], dtype=np.float32)
        self._buf: Optional[np.ndarray] = None

    def __call__(self, images: Sequence[Any]) -> Tuple[np.ndarray, np.ndarray]:
        """Images (paths, PIL images, uint8 HWC arrays) -> (float32 [B, 3, H, W], int64 [B, 2])."""
        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)) or len(images) == 0:
            raise ValueError(f"images must be a non-empty list of images, got {type(images).__name__}")
        h, w = self.input_size
        n = len(images)
        if self._buf is None or self._buf.shape[0] < n:
            self._buf = np.empty((n, 3, h, w), dtype=np.float32)
        batch = self._buf[:n]
        orig = np.empty((n, 2), dtype=np.int64)
        for i, src in enumerate(images):
            rgb = load_image(src)
            orig[i] = rgb.shape[:2]
            if rgb.shape[:2] != (h, w):
                rgb = resize(rgb, (h, w), self.resize_mode)
            for c in range(3):
                np.take(self.lut[c], rgb[:, :, c], out=batch[i, c])
        return batch, orig


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
    max_batch: Optional[int] = None
    fixed_batch: Optional[int] = None

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = meta
        self._pre = BatchPreprocessor(meta)

    # -- the three steps -------------------------------------------------------------------
    def preprocess(self, images: Sequence[Any]) -> Tuple[np.ndarray, np.ndarray]:
        """Images -> (float32 [B, 3, H, W] network input (reused buffer), int64 [B, 2] orig (h, w))."""
        return self._pre(images)

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """float32 [B, 3, H, W] -> raw graph outputs (see the module docstring); model only."""

    def postprocess(self, outputs: Dict[str, np.ndarray], orig_hw: np.ndarray) -> List[Detections]:
        """Outputs of :meth:`infer` + original sizes -> detections in original-image pixels."""
        if self.kind == "raw":
            nms_out = nms_of_raw(outputs["boxes"], outputs["scores"], self.meta.nms)
        else:
            nms_out = tuple(outputs[k] for k in NMS_OUTPUTS)
        return detections_from_nms(*nms_out, orig_hw, self.meta.num_classes, self.meta.resize_mode)

    # -- conveniences ----------------------------------------------------------------------
    def run_batch(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
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

    def __call__(self, images: Any) -> Any:
        """A list of images -> a list of detections; a single image -> its detections.

        Images: paths, ``PIL.Image`` s or uint8 HWC RGB arrays, of any sizes. Each result is
        ``{"boxes": float32 [K, 4] xyxy in original-image pixels, "scores": float32 [K],
        "labels": int64 [K] in 1..C}``, sorted by descending score.
        """
        single = isinstance(images, (str, os.PathLike, np.ndarray, Image.Image))
        batch, orig = self.preprocess([images] if single else images)
        dets = self.postprocess(self.run_batch(batch), orig)
        return dets[0] if single else dets

    def close(self) -> None:
        """Release runtime resources (sessions, device buffers). Idempotent."""

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.meta.model_name!r}, kind={self.kind!r})"


# --------------------------------------------------------------------------------------------
# Backend choice.
# --------------------------------------------------------------------------------------------
def load_detector(
    path: Any,
    device: str = "cpu",
    provider: Optional[str] = None,
    fp16: bool = False,
    **kwargs: Any,
) -> Detector:
    """Open a model file with the backend its kind calls for.

    * ``.pt`` / ``.pth`` checkpoint, or a run folder: PyTorch (``device`` "cpu" / "cuda[:N]",
      ``fp16`` on CUDA only). Imports torch and distill here, not before.
    * ``.onnx`` with graph ``raw`` / ``nms`` / ``int8`` in its sidecar: ONNX Runtime.
      ``provider``: None or "cpu" (default), "cuda", "tensorrt" (execution providers; must be
      installed). ``fp16`` is not an ONNX Runtime option: the precision is the graph's.
    * ``.onnx`` with graph ``trt`` (EfficientNMS_TRT plugin node): ONNX Runtime cannot run the
      plugin; ``provider="reference"`` runs the CPU reference (ORT up to the plugin inputs +
      numpy EfficientNMS), ``provider="tensorrt"`` the ORT TensorRT execution provider.
    * ``.engine`` / ``.plan``: TensorRT (needs the ``tensorrt`` package and a CUDA device).

    Extra keyword arguments go to the backend (e.g. ``threads=`` for ONNX Runtime,
    ``cuda_graph=True`` for TensorRT). Raises ValueError for bad arguments and RuntimeError
    (one line) when the needed runtime is not available on this machine.
    """
    p = Path(path)
    if provider is not None and provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {list(PROVIDERS)} or None, got {provider!r}")
    suffix = p.suffix.lower()
    if p.is_dir() or suffix in CHECKPOINT_SUFFIXES:
        if provider not in (None, "cpu", "cuda"):
            raise ValueError(f"provider={provider!r} does not apply to a PyTorch checkpoint; use device=")
        from runtime.backends.torch_backend import TorchDetector

        return TorchDetector(p, device=device, fp16=fp16, **kwargs)
    if not p.is_file():
        raise ValueError(f"model file not found: {p}")
    if suffix in ONNX_SUFFIXES:
        meta = read_sidecar(p)
        if fp16:
            raise ValueError(
                f"fp16 is not an ONNX Runtime option ({p.name} runs in the precision it was exported "
                f"with, {meta.precision}); use an fp16 TensorRT engine or the PyTorch backend on CUDA"
            )
        if meta.graph == "trt":
            if provider == "reference":
                from runtime.backends.trt_reference_backend import TRTReferenceDetector

                return TRTReferenceDetector(p, meta=meta, **kwargs)
            if provider != "tensorrt":
                raise RuntimeError(
                    f"{p.name} is the TensorRT plugin graph (EfficientNMS_TRT), which ONNX Runtime's "
                    f"{provider or 'cpu'} provider cannot run: build an engine (python -m export.trt), "
                    f"or pass provider='reference' for its CPU reference"
                )
        elif provider == "reference":
            raise ValueError(f"provider='reference' is for the TensorRT plugin graph only; {p.name} is graph {meta.graph!r}")
        from runtime.backends.ort_backend import ORTDetector

        return ORTDetector(p, meta=meta, provider=provider, device=device, **kwargs)
    if suffix in ENGINE_SUFFIXES:
        if provider not in (None, "tensorrt"):
            raise ValueError(f"provider={provider!r} does not apply to a TensorRT engine")
        from runtime.backends.trt_backend import TRTDetector

        return TRTDetector(p, device=device, fp16=fp16, **kwargs)
    raise ValueError(
        f"cannot tell the backend of {p}: expected a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)} or a "
        f"run folder), an ONNX graph (.onnx) or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})"
    )
