"""ONNX Runtime INT8 static quantization (QDQ, uint8 activations, per-channel int8 weights) of
the raw graph: ``model_raw.onnx`` -> ``model_int8.onnx`` + sidecar (:func:`quantize_int8`), and
the INT8 graph with NMS fused: ``model_int8.onnx`` + the ONNX-NMS tail -> ``model_int8_nms.onnx``
(:func:`write_int8_nms`).

Calibration images go through ``runtime.preprocess`` -- the one preprocessing -- in a
:class:`ImageCalibrationReader`; the activation ranges are computed by ONNX Runtime's calibrator
(``CALIB_METHODS``: min-max, entropy or percentile). Layers the INT8 mAP gate wants in FP32 are
chosen by :mod:`export.mixed_precision`. The decoder + softmax tail (``decode/*`` nodes and
everything downstream of them) runs in float on the body's last (dequantized) tensors: quantizing
``exp()`` of log-sizes and the softmax probabilities costs accuracy and saves nothing measurable.

Weights are quantized per output channel by default: with BatchNorm folded into them, the channels
of one convolution span very different ranges (MobileNetV2's depthwise 3x3 above all: largest /
smallest channel range 18x, median over the trained SSD-Lite student's layers), and a single
per-tensor scale rounds the small channels to a few codes. On that student (300 validation images)
per-tensor weights lost 1.81 mAP points against FP32, per-channel 0.43, at the same ONNX Runtime
speed (x86, 1 thread: 12.4 vs 12.5 ms).

The NMS graph is grafted, not quantized on its own: :func:`write_int8_nms` appends to the INT8
raw graph exactly the tail :func:`export.graphs.add_onnx_nms_tail` appends to the FP32 raw graph,
so decode, softmax and NMS stay float, one calibration serves both INT8 graphs, and the fused
graph's detections equal the host NMS of ``model_int8.onnx``'s outputs (what the export verifies).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from export.artifacts import GRAPH_FILES, WrittenGraph, check_and_infer, count_qdq_model, save_with_meta

CALIB_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}


def image_batches(images: Sequence[Any], meta: Any, batch_size: int) -> Iterator[np.ndarray]:
    """float32 [b, 3, H, W] batches (the last one may be smaller) of images (paths or uint8
    arrays), preprocessed by runtime.preprocess with the sidecar's settings."""
    from runtime.preprocess import Preprocessor
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pre = Preprocessor.from_meta(meta)
    for start in range(0, len(images), batch_size):
        yield pre(list(images[start:start + batch_size]))[0]


class ImageCalibrationReader(CalibrationDataReader):
    """ORT CalibrationDataReader over images: ``get_next() -> {input_name: batch}`` or None."""

    def __init__(self, images: Sequence[Any], meta: Any, input_name: str = "images", batch_size: int = 8,
                 progress: bool = False):
        if not images:
            raise ValueError("calibration needs at least one image")
        self.images, self.meta, self.input_name, self.batch_size = list(images), meta, input_name, batch_size
        self.progress, self._bar = progress, None
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.progress and self._bar is None:
            from tqdm import tqdm
            self._bar = tqdm(total=len(self), desc="INT8 calibration", unit="batch", leave=False, dynamic_ncols=True)
        batch = next(self._it, None)
        if self._bar is not None:
            if batch is None:
                self._bar.close()
                self._bar = None
            else:
                self._bar.update(1)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = image_batches(self.images, self.meta, self.batch_size)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)


def quantize_raw_graph(model_path: str | Path, out_path: str | Path, images: Sequence[Any], meta: Any, *,
                       exclude_nodes: Sequence[str] = (), method: str = "minmax", batch_size: int = 8,
                       per_channel: bool = True, progress: bool = False) -> dict[str, Any]:
    """Quantize ``model_path`` (float raw graph) to ``out_path`` (QDQ, U8S8, per-channel weights
    unless ``per_channel`` is off). ``exclude_nodes``: node names kept in float. Returns what was
    done (for the report)."""
    if method not in CALIB_METHODS:
        raise ValueError(f"calibration method must be one of {sorted(CALIB_METHODS)}, got {method!r}")
    reader = ImageCalibrationReader(images, meta, batch_size=batch_size, progress=progress)
    # U8S8 (uint8 activations, int8 weights): on x86-64 ONNX Runtime 1.31 fuses every QDQ Conv of
    # this net into QLinearConv (the VPMADDUBSW / AVX-512 VNNI path), while with S8S8 it left the
    # 1x1 convs (38 of 88 in SSD-Lite MobileNetV2) as DequantizeLinear -> float Conv, which made
    # the INT8 graph slower than FP32. reduce_range stays off: it is for CPUs without VNNI.
    # QDQKeepRemovableActivations: the ReLU6 Clip nodes stay in the graph (by default the quantizer
    # drops them and lets the uint8 range clip), so every float tensor of the QDQ graph is the FP32
    # graph's tensor of that name, which the FP32 layers of export.mixed_precision read. ONNX Runtime
    # fuses the Clips away at load: same outputs, bit for bit, and no slower (SSD-Lite student, 1 thread).
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" advice: shape inference already ran
    try:
        quantize_static(str(model_path), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=False,
                        nodes_to_exclude=list(exclude_nodes), calibrate_method=CALIB_METHODS[method],
                        extra_options={"QDQKeepRemovableActivations": True})
    except ValueError as e:
        if method == "minmax":
            raise
        # ONNX Runtime's histogram calibrators cannot bin a tensor whose values span a few float ulps
        raise ValueError(f"{method} calibration of {Path(model_path).name} failed ({e}): some activation is "
                         f"(nearly) constant on these {len(reader.images)} images; use --int8-calib minmax or "
                         f"other calibration images") from None
    finally:
        root.setLevel(level)
    return {"format": "QDQ", "activations": "uint8", "weights": "int8", "per_channel": per_channel,
            "calibration": method, "calibration_images": len(reader.images), "float_nodes": len(exclude_nodes)}


def quantize_int8(raw_onnx: str | Path, images: Sequence[Any], *, calibration_source: str,
                  out: str | Path | None = None, method: str = "minmax", progress: bool = False,
                  notes: list[str] | None = None, per_channel: bool = True, fp32_layers: Sequence[str] = ()
                  ) -> tuple[WrittenGraph, dict[str, Any]]:
    """``model_raw.onnx`` (with its sidecar) -> ``model_int8.onnx`` beside it (or ``out``), checked,
    with a sidecar of precision "int8" that records the quantization and ``calibration_source``.

    ``images``: calibration images (paths or uint8 HWC RGB arrays). ``notes`` receives remarks
    for the report. ``fp32_layers``: node names of the body ONNX Runtime leaves unquantized (named
    in the sidecar under ``quantization.fp32_layers``; :mod:`export.mixed_precision` chooses its
    layers on the quantized graph instead). Returns (the written graph, what was done: format,
    counts, QDQ node counts).
    """
    import onnx

    from export.graphs import TAIL_PREFIXES, tail_node_names
    from runtime.metadata import read_sidecar
    raw_onnx = Path(raw_onnx)
    out = Path(out) if out is not None else raw_onnx.with_name(GRAPH_FILES["int8"])
    raw_meta = read_sidecar(raw_onnx)
    raw_model = onnx.load(str(raw_onnx))
    unknown = sorted(set(fp32_layers) - {n.name for n in raw_model.graph.node})
    if unknown:
        raise ValueError(f"{raw_onnx.name} has no nodes {unknown[:5]}: cannot leave them in FP32")
    tail = tail_node_names(raw_model, TAIL_PREFIXES["raw"])
    if not tail and notes is not None:
        notes.append("decoder tail not found after simplification: everything was quantized")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.quantized.tmp.onnx")
    try:
        info = quantize_raw_graph(raw_onnx, tmp, images, raw_meta, exclude_nodes=[*tail, *fp32_layers],
                                  method=method, progress=progress, per_channel=per_channel)
        q = check_and_infer(onnx.load(str(tmp)))
    finally:
        tmp.unlink(missing_ok=True)
    info.update(count_qdq_model(q))
    info["fp32_layers"] = list(fp32_layers)
    meta = dataclasses.replace(raw_meta, graph="int8", precision="int8", onnx_sha256=None,
                               extra={**raw_meta.extra, "quantization": info,
                                      "calibration_source": calibration_source})
    return save_with_meta(q, out, meta), info


INT8_NMS_FILE = "model_int8_nms.onnx"


def write_int8_nms(int8_onnx: str | Path, out: str | Path | None = None) -> WrittenGraph:
    """``model_int8.onnx`` (with its sidecar) -> ``model_int8_nms.onnx`` beside it (or ``out``):
    the same QDQ body with the ONNX-NMS tail of :func:`export.graphs.add_onnx_nms_tail` (decode,
    softmax, TopK, NonMaxSuppression, all float) and the four NMS outputs (``num_detections`` int32
    [B, 1], ``detection_boxes`` float32 [B, K, 4] normalised xyxy, ``detection_scores`` [B, K],
    ``detection_classes`` int32 [B, K]). Checked (onnx.checker, shape inference) but not
    simplified: a simplifier would constant-fold the weights' DequantizeLinear nodes. Sidecar:
    graph "nms", precision "int8", the quantization record and the body's sha256."""
    import onnx
    import onnx_graphsurgeon as gs

    from export.graphs import add_onnx_nms_tail, to_model
    from runtime.metadata import read_sidecar, sha256_file
    int8_onnx = Path(int8_onnx)
    meta = read_sidecar(int8_onnx)
    if meta.precision != "int8" or meta.graph != "int8":
        raise ValueError(f"{int8_onnx.name} is graph {meta.graph!r} in {meta.precision}: the INT8 NMS graph is "
                         f"grafted onto the INT8 raw graph ({GRAPH_FILES['int8']})")
    body = onnx.load(str(int8_onnx))
    ir = body.ir_version
    del body.metadata_props[:]
    model = to_model(add_onnx_nms_tail(gs.import_onnx(body), meta.nms))
    model.ir_version = ir
    out = Path(out) if out is not None else int8_onnx.with_name(INT8_NMS_FILE)
    nms_meta = dataclasses.replace(meta, graph="nms", onnx_sha256=None,
                                   extra={**meta.extra, "source_sha256": sha256_file(int8_onnx),
                                          "source": int8_onnx.name})
    return save_with_meta(check_and_infer(model), out, nms_meta)
