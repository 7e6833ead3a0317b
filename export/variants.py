"""The reduced-precision variants of the TensorRT plugin graph, for TensorRT's strongly typed build
(TensorRT >= 11: precision is stated by the ONNX, not by builder flags):

    model_trt_fp16.onnx   mixed precision, FP32 where it must be (export.fp16)      ``--fp16``
    model_trt_int8.onnx   explicit INT8 quantization, Q/DQ nodes (export.qdq_trt)     ``--int8``

Both keep the EfficientNMS_TRT node and its FP32 inputs unchanged and carry a sidecar (graph
"trt", precision "fp16" / "int8", I/O types, the source graph's sha256). :func:`write_variants`
is the step :func:`export.onnx.export_onnx` runs after the FP32 graphs;
:func:`export.verify_variants.verify_variants` checks the results against the FP32 plugin graph.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from export.artifacts import WrittenGraph

VARIANT_FILES = {"trt_fp16": "model_trt_fp16.onnx", "trt_int8": "model_trt_int8.onnx"}


def write_variants(trt_onnx: Path, *, fp16: bool, int8: bool, reference_images: Sequence[Any],
                   calib_images: Sequence[Any] | None = None, calib_source: str | None = None,
                   calib_method: str = "minmax", threads: int = 1, notes: dict[str, list[str]] | None = None,
                   log: Callable[[str], None] = print) -> tuple[dict[str, WrittenGraph], dict[str, Any]]:
    """Write the asked-for variants of ``trt_onnx`` beside it: (graph name -> written graph,
    graph name -> what was done). ``reference_images``: the FP16 data-range rule's images;
    ``calib_images`` / ``calib_source``: the INT8 calibration (required with ``int8``)."""
    from export.fp16 import convert_fp16
    from export.qdq_trt import quantize_trt_int8
    notes = notes if notes is not None else {}
    written: dict[str, WrittenGraph] = {}
    infos: dict[str, Any] = {}
    if fp16:
        written["trt_fp16"], infos["trt_fp16"] = convert_fp16(
            trt_onnx, reference_images, out=trt_onnx.with_name(VARIANT_FILES["trt_fp16"]), threads=threads or 1,
            notes=notes.setdefault("trt_fp16", []))
        i = infos["trt_fp16"]
        log(f"  wrote {written['trt_fp16'].onnx} ({i['fp16_nodes']} FP16 nodes, {len(i['fp32_nodes'])} kept FP32, "
            f"{i['casts']} casts)")
    if int8:
        if not calib_images:
            raise ValueError("the Q/DQ plugin graph needs calibration images")
        written["trt_int8"], infos["trt_int8"] = quantize_trt_int8(
            trt_onnx, calib_images, calibration_source=str(calib_source), method=calib_method,
            out=trt_onnx.with_name(VARIANT_FILES["trt_int8"]), notes=notes.setdefault("trt_int8", []))
        log(f"  wrote {written['trt_int8'].onnx} ({infos['trt_int8']['quantize_nodes']} Q / "
            f"{infos['trt_int8']['dequantize_nodes']} DQ nodes, TensorRT explicit quantization)")
    return written, infos
