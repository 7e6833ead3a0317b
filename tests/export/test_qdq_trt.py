"""model_trt_int8.onnx: TensorRT explicit quantization of the plugin graph (export.qdq_trt) --
symmetric int8 Q/DQ, per-channel weights, float plugin tail -- checked against the FP32 plugin
graph through the CPU reference, and its reuse rule (the Q/DQ graph is the strongly typed path's
calibration cache)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.plugin_split import io_types, split_plugin_graph
from export.qdq_trt import TRT_CALIB_METHOD, check_trt_qdq, qdq_graph_fresh, quantize_trt_int8
from runtime.metadata import read_sidecar, sha256_file, write_sidecar
from runtime.trt_reference import TrtGraphReference


def test_qdq_graph_follows_tensorrt_explicit_quantization_rules(exported):
    model = onnx.load(exported["files"]["trt_int8"]["onnx"])
    tail = [n.name for n in model.graph.node if n.name.startswith("plugin_inputs/")]
    assert len(tail) == 4 and check_trt_qdq(model, tail) == []
    fp32 = split_plugin_graph(onnx.load(exported["files"]["trt"]["onnx"]))
    split = split_plugin_graph(model)
    assert split.node == fp32.node and split.constants == fp32.constants
    assert split.constants[0].data_type == onnx.TensorProto.FLOAT  # the anchors
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    producer = {o: n for n in model.graph.node for o in n.output}
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert adds and all(producer[i].op_type == "DequantizeLinear" for n in adds for i in n.input)  # residuals fuse
    assert io_types(model)["images"] == "float32" and io_types(model)["detection_boxes"] == "float32"


def test_qdq_sidecar_and_verification(exported, calib_dir):
    path = Path(exported["files"]["trt_int8"]["onnx"])
    meta = read_sidecar(path)
    assert meta.graph == "trt" and meta.precision == "int8" and meta.onnx_sha256 == sha256_file(path)
    q = meta.extra["quantization"]
    assert q["activations"] == "int8 symmetric per tensor" and q["weights"] == "int8 symmetric per output channel"
    assert q["calibration_images"] == 8 and meta.extra["calibration_source"] == f"{calib_dir} (8 images)"
    # percentile ranges for the symmetric Q/DQ graph, whatever calibrates ONNX Runtime's uint8 graph
    assert q["calibration"] == TRT_CALIB_METHOD == "percentile"
    assert read_sidecar(exported["files"]["int8"]["onnx"]).extra["quantization"]["calibration"] == "minmax"
    assert meta.extra["source_sha256"] == sha256_file(exported["files"]["trt"]["onnx"])
    row = json.loads(Path(exported["report_path"]).read_text())["graphs"]["trt_int8"]
    assert row["ok"] and row["min_agreement"] is None and row["detections_match"] is None
    assert 0.0 <= row["agreement"] <= 1.0 and all(b["finite"] and b["plugin_inputs_fp32"]
                                                  for b in row["batches"].values())


def test_qdq_graph_is_the_same_model_as_fp32(exported, images_nchw):
    ref, got = (TrtGraphReference(exported["files"][g]["onnx"]) for g in ("trt", "trt_int8"))
    (d32, s32), (d8, s8) = ref.plugin_inputs(images_nchw)[:2], got.plugin_inputs(images_nchw)[:2]
    assert d8.dtype == np.float32 and s8.dtype == np.float32
    assert np.abs(s8 - s32).max() < 0.2 and np.abs(d8 - d32).max() < 0.2  # quantized, but still the same model
    num = got(images_nchw)[0]
    assert num.shape == (3, 1) and int(num.min()) > 0


def test_qdq_calibration_method_is_its_own_option():
    from export.onnx import build_parser
    args = build_parser().parse_args(["--int8", "--trt-int8"])
    assert (args.calib_method, args.trt_calib_method) == ("minmax", TRT_CALIB_METHOD)
    args = build_parser().parse_args(["--trt-int8", "--trt-calib-method", "minmax", "--calib-method", "entropy"])
    assert (args.calib_method, args.trt_calib_method) == ("entropy", "minmax")


def test_asymmetric_quantization_breaks_the_rules(exported):
    """ONNX Runtime's CPU INT8 graph (uint8 activations with zero points) is not for TensorRT."""
    problems = check_trt_qdq(onnx.load(exported["files"]["int8"]["onnx"]))
    assert problems and any("zero point must be int8 0" in p for p in problems)
    assert check_trt_qdq(onnx.load(exported["files"]["trt"]["onnx"])) == [
        "no QuantizeLinear / DequantizeLinear node: this is not an explicitly quantized graph"]


def test_qdq_graph_reuse_rule(exported, calib_dir, tmp_path):
    trt = Path(exported["files"]["trt"]["onnx"])
    qdq = Path(exported["files"]["trt_int8"]["onnx"])
    sha = sha256_file(trt)
    assert qdq_graph_fresh(qdq, sha)[0] and qdq_graph_fresh(qdq, sha, f"{calib_dir} (8 images)")[0]
    fresh, why = qdq_graph_fresh(qdq, "0" * 64)
    assert not fresh and "another model_trt.onnx" in why
    fresh, why = qdq_graph_fresh(qdq, sha, "other images (3 images)")
    assert not fresh and "recalibrating" in why
    assert qdq_graph_fresh(tmp_path / "none.onnx", sha) == (False, "no none.onnx yet")
    shutil.copy(qdq, tmp_path / "q.onnx")
    write_sidecar(tmp_path / "q.onnx", dataclasses.replace(read_sidecar(qdq), precision="fp16"))
    assert "not the Q/DQ plugin graph" in qdq_graph_fresh(tmp_path / "q.onnx", sha)[1]


def test_quantize_trt_int8_refuses_what_it_cannot_quantize(exported, calib_dir, tmp_path):
    images = sorted(str(p) for p in calib_dir.iterdir())[:2]
    with pytest.raises(ValueError, match="starts from the FP32 plugin graph"):
        quantize_trt_int8(exported["files"]["trt_int8"]["onnx"], images, calibration_source="x",
                          out=tmp_path / "q.onnx")
    with pytest.raises(ValueError, match="at least one image"):
        quantize_trt_int8(exported["files"]["trt"]["onnx"], [], calibration_source="x", out=tmp_path / "q.onnx")
    from export.variants import write_variants
    with pytest.raises(ValueError, match="needs calibration images"):
        write_variants(Path(exported["files"]["trt"]["onnx"]), fp16=False, int8=True, reference_images=[])
    assert not (tmp_path / "q.onnx").exists()
