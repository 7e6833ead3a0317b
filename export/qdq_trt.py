"""``model_trt.onnx`` -> ``model_trt_int8.onnx``: explicit INT8 quantization (Q/DQ nodes) of the
plugin graph, for TensorRT 11, which removed ``BuilderFlag.INT8`` and the calibrators: the scales
live in the graph, and TensorRT builds exactly the quantization the graph states.

The head of the plugin graph (:mod:`export.plugin_split`) is quantized by ONNX Runtime's static
quantizer, calibrated on the same images as the ONNX Runtime INT8 graph (``runtime.preprocess``
through :class:`export.quantize.ImageCalibrationReader`), with TensorRT's explicit-quantization
rules (TensorRT developer guide, "Explicit Quantization" / "Q/DQ layer placement"):

* symmetric INT8 everywhere: zero point 0, signed int8 activations and weights;
* weights per output channel (axis 0 of Conv weights), activations per tensor;
* Q/DQ on the inputs of the weighted ops (Conv, ConvTranspose, Gemm, MatMul) and on both inputs of
  Add, so the residual additions of inverted-residual blocks fuse into the INT8 convolutions; no
  Q/DQ on biases (TensorRT folds the float bias);
* the plugin-input tail (``plugin_inputs/*``: deltas, clamp, softmax, slice) and the plugin stay
  in float, so EfficientNMS_TRT gets FP32 boxes, scores and anchors.

Activation ranges are calibrated by ONNX Runtime's percentile calibrator (99.999 %, on |x|;
``TRT_CALIB_METHOD``), not min-max: with symmetric int8 a non-negative ReLU6 activation has only
the 128 codes of [0, 127], so a rare outlier that stretches a min-max range costs twice the
resolution it costs ONNX Runtime's uint8 graph. On a trained SSD-Lite student (300 validation images) min-max lost 1.54 mAP
points against FP32, percentile 0.79 (ONNX Runtime's uint8 graph: 0.43 / 0.38); keeping the first
convolution and the 1x1 prediction convs in float did not help (min-max 25.70 vs 25.74,
percentile 26.24 vs 26.49 mAP).

:func:`check_trt_qdq` checks those rules on the written graph; :func:`qdq_graph_fresh` says when an
existing Q/DQ graph still answers (same source graph, same calibration) -- the Q/DQ graph is the
calibration cache of the strongly typed path.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from export.artifacts import WrittenGraph, check_and_infer, count_qdq_model
from export.plugin_split import load_fp32_plugin_graph, save_variant

QDQ_FILE = "model_trt_int8.onnx"
TRT_QDQ_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
TRT_CALIB_METHOD = "percentile"  # activation calibration of the Q/DQ graph (see the module docstring)


def trt_quantize_options() -> dict[str, Any]:
    """ONNX Runtime ``quantize_static`` keyword arguments for TensorRT's explicit quantization."""
    from onnxruntime.quantization import QuantFormat, QuantType
    return {"quant_format": QuantFormat.QDQ, "activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
            "per_channel": True, "reduce_range": False, "op_types_to_quantize": list(TRT_QDQ_OPS),
            "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                              "QDQKeepRemovableActivations": True}}


def _quantize_head(head: onnx.ModelProto, images: Sequence[Any], meta: Any, exclude: Sequence[str], method: str,
                   workdir: Path, batch_size: int = 8) -> onnx.ModelProto:
    from onnxruntime.quantization import quantize_static

    from export.quantize import CALIB_METHODS, ImageCalibrationReader
    if method not in CALIB_METHODS:
        raise ValueError(f"calibration method must be one of {sorted(CALIB_METHODS)}, got {method!r}")
    src, dst = workdir / ".qdq_head.tmp.onnx", workdir / ".qdq_head.quantized.tmp.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" advice: shape inference already ran
    try:
        onnx.save(head, str(src))
        quantize_static(str(src), str(dst), ImageCalibrationReader(images, meta, batch_size=batch_size),
                        nodes_to_exclude=list(exclude), calibrate_method=CALIB_METHODS[method],
                        **trt_quantize_options())
        return onnx.load(str(dst))
    finally:
        root.setLevel(level)
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


def _const_values(model: onnx.ModelProto) -> dict[str, Any]:
    vals = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            vals[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    return vals


def check_trt_qdq(model: onnx.ModelProto, float_nodes: Sequence[str] = ()) -> list[str]:
    """What in ``model`` breaks TensorRT's explicit-quantization rules (empty: nothing): a zero
    point that is not int8 0, a weighted op whose weight is not dequantized per output channel, a
    Q/DQ node feeding one of ``float_nodes`` (the float tail); or only that there is no Q/DQ at all."""
    vals = _const_values(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    problems = []
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return ["no QuantizeLinear / DequantizeLinear node: this is not an explicitly quantized graph"]
    for n in qdq:
        zp = vals.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None or str(zp.dtype) != "int8" or zp.any():
            problems.append(f"{n.name}: zero point must be int8 0 (symmetric), got "
                            f"{'none' if zp is None else f'{zp.dtype} {zp.ravel()[:4].tolist()}'}")
    for n in model.graph.node:
        if n.name in float_nodes and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                                         for i in n.input):
            problems.append(f"{n.name}: the float tail reads a DequantizeLinear output")
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1:
            dq = producer.get(n.input[1])
            scale = vals.get(dq.input[1]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if scale is None or scale.ndim != 1:
                problems.append(f"{n.name}: weight must be dequantized per output channel")
    return problems


def qdq_graph_fresh(qdq: str | Path, source_sha256: str, calibration_source: str | None = None) -> tuple[bool, str]:
    """(True, why) when ``qdq`` and its sidecar exist, were quantized from the graph with
    ``source_sha256`` and (if given) calibrated on ``calibration_source``."""
    from runtime.metadata import read_sidecar
    if not Path(qdq).is_file():
        return False, f"no {Path(qdq).name} yet"
    try:
        meta = read_sidecar(qdq)
    except ValueError as e:
        return False, f"{Path(qdq).name}: sidecar unreadable ({e})"
    if meta.precision != "int8" or meta.graph != "trt":
        return False, f"{Path(qdq).name} is graph {meta.graph!r} in {meta.precision}, not the Q/DQ plugin graph"
    if meta.extra.get("source_sha256") != source_sha256:
        return False, f"{Path(qdq).name} was quantized from another model_trt.onnx (sha256 differs): recalibrating"
    if calibration_source is not None and meta.extra.get("calibration_source") != calibration_source:
        return False, f"{Path(qdq).name} was calibrated on {meta.extra.get('calibration_source')!r}: recalibrating"
    return True, f"{Path(qdq).name} matches model_trt.onnx (sha256) and its calibration"


def quantize_trt_int8(trt_onnx: str | Path, images: Sequence[Any], *, calibration_source: str,
                      out: str | Path | None = None, method: str = TRT_CALIB_METHOD, notes: list[str] | None = None
                      ) -> tuple[WrittenGraph, dict[str, Any]]:
    """``model_trt.onnx`` (FP32, with its sidecar) -> ``model_trt_int8.onnx`` beside it (or ``out``):
    the Q/DQ head + the unchanged EfficientNMS_TRT tail, checked against TensorRT's rules, with a
    sidecar of precision "int8" recording the quantization, ``calibration_source``, the I/O types
    and the source graph's sha256. ``images``: calibration images (paths or uint8 HWC RGB).
    ValueError when the source is not the FP32 plugin graph or the result breaks a rule."""
    src = load_fp32_plugin_graph(trt_onnx, "Q/DQ quantization", notes)
    if not len(images):
        raise ValueError("Q/DQ calibration needs at least one image")
    out = Path(out) if out is not None else src.path.with_name(QDQ_FILE)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = check_and_infer(_quantize_head(src.split.head, images, src.meta, src.tail, method, out.parent))
    problems = check_trt_qdq(src.split.join(head), src.tail)
    if problems:
        raise ValueError(f"the Q/DQ graph breaks TensorRT's explicit-quantization rules: {'; '.join(problems[:5])}")
    info = {"format": "QDQ (TensorRT explicit quantization)", "activations": "int8 symmetric per tensor",
            "weights": "int8 symmetric per output channel", "bias": "float", "op_types": list(TRT_QDQ_OPS),
            "calibration": method, "calibration_images": len(images), "float_nodes": len(src.tail),
            **count_qdq_model(head)}
    written = save_variant(head, out, src, "int8", {"quantization": info, "calibration_source": calibration_source})
    return written, info
