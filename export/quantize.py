"""ONNX Runtime INT8 static quantization (QDQ, uint8 activations, per-channel int8 weights) of
the raw graph.

Calibration images go through ``runtime.preprocess`` -- the one preprocessing -- in a
:class:`ImageCalibrationReader`. The decoder + softmax tail (``decode/*`` nodes and everything
downstream of them) stays in float: quantizing ``exp()`` of log-sizes and the softmax
probabilities costs accuracy and saves nothing measurable.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

CALIB_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}


def image_batches(images: Sequence[Any], meta: Any, batch_size: int) -> Iterator[np.ndarray]:
    """float32 [b, 3, H, W] batches (the last one may be smaller) of images (paths or uint8
    arrays), preprocessed by runtime.preprocess with the sidecar's settings."""
    from runtime.preprocess import preprocess_batch
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        yield preprocess_batch(chunk, meta.input_size, meta.mean, meta.std, meta.resize_mode)[0]


class ImageCalibrationReader(CalibrationDataReader):
    """ORT CalibrationDataReader over images: ``get_next() -> {input_name: batch}`` or None."""

    def __init__(self, images: Sequence[Any], meta: Any, input_name: str = "images", batch_size: int = 8,
                 progress: bool = False):
        if not images:
            raise ValueError("calibration needs at least one image")
        self.images, self.meta, self.input_name, self.batch_size = list(images), meta, input_name, batch_size
        self.progress, self._bar = progress, None
        self.rewind()

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
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
                       per_channel: bool = True, progress: bool = False) -> Dict[str, Any]:
    """Quantize ``model_path`` (float raw graph) to ``out_path`` (QDQ, S8S8, per-channel weights).

    ``exclude_nodes``: node names kept in float. Returns what was done (for the report)."""
    if method not in CALIB_METHODS:
        raise ValueError(f"calibration method must be one of {sorted(CALIB_METHODS)}, got {method!r}")
    reader = ImageCalibrationReader(images, meta, batch_size=batch_size, progress=progress)
    # U8S8 (uint8 activations, int8 weights): on x86-64 ONNX Runtime 1.31 fuses every QDQ Conv of
    # this net into QLinearConv (the VPMADDUBSW / AVX-512 VNNI path), while with S8S8 it left the
    # 1x1 convs (38 of 88 in SSD-Lite MobileNetV2) as DequantizeLinear -> float Conv, which made
    # the INT8 graph slower than FP32. reduce_range stays off: it is for CPUs without VNNI.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" advice: shape inference already ran
    try:
        quantize_static(str(model_path), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=False,
                        nodes_to_exclude=list(exclude_nodes), calibrate_method=CALIB_METHODS[method])
    finally:
        root.setLevel(level)
    return {"format": "QDQ", "activations": "uint8", "weights": "int8", "per_channel": per_channel,
            "calibration": method, "calibration_images": len(reader.images), "float_nodes": len(exclude_nodes)}

