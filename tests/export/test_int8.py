"""ONNX Runtime INT8 (QDQ) graph: runs, float tail kept, latency reported; mAP check (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import verify as V

ROOT = Path(__file__).resolve().parents[2]


def test_int8_graph_runs_and_is_quantized(exported, model_and_meta, images_nchw):
    model, anchors, _ = model_and_meta
    path = exported["files"]["int8"]["onnx"]
    m = onnx.load(path)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    # the decoder / softmax tail stays in float: nothing quantizes the outputs of Exp or Softmax
    prod = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in prod:
            assert prod[n.input[0]].op_type not in ("Exp", "Softmax", "Sub")
    assert {"Exp", "Softmax"} <= set(ops)
    sess = V.ort_session(path)
    for bs in (1, 3):
        boxes, scores = sess.run(None, {"images": images_nchw[:bs]})
        ref_b, ref_s = V.torch_raw(model, anchors, images_nchw[:bs])
        assert boxes.shape == ref_b.shape and scores.shape == ref_s.shape
        assert np.isfinite(boxes).all() and np.isfinite(scores).all()
        np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
        assert np.abs(scores - ref_s).max() < 0.2  # quantized, but still the same model


def test_report_has_latency_and_quantization(exported):
    rep = json.loads(Path(exported["report_path"]).read_text())
    lat = rep["latency"]
    for key in ("raw_b1", "int8_b1", "raw_b8", "int8_b8"):
        assert lat[key]["p50_ms"] > 0
    assert lat["int8_speedup_b1"] > 0
    q = rep["quantization"]
    assert q["format"] == "QDQ" and q["per_channel"] and q["calibration_images"] == 8 and q["float_nodes"] > 5
    assert rep["graphs"]["int8"]["ok"]


@pytest.mark.slow
def test_int8_map_within_one_point(tiny_ckpt, tmp_path):
    """INT8 (ONNX Runtime and TensorRT Q/DQ) and TensorRT FP16 vs FP32 mAP through export_onnx's own
    evaluation, on the embedded validation set when
    it is on disk (the main developer runs the same on the trained demo model)."""
    from distill.checkpoint import load_checkpoint
    from export.data import checkpoint_dataset
    from export.onnx import export_onnx
    from distill.data.shapes import ensure_shapes_dataset
    cfg = load_checkpoint(tiny_ckpt)["config"]
    # a small embedded dataset of the test's own, so that the check runs everywhere (CI included)
    cfg = {**cfg, "data_root": str(tmp_path / "data"), "shapes_train": 32, "shapes_val": 24}
    ensure_shapes_dataset(cfg["data_root"], num_train=32, num_val=24, seed=cfg.get("shapes_seed", 0), progress=False)
    assert checkpoint_dataset(cfg, "val")[0] is not None and checkpoint_dataset(cfg, "train")[0] is not None
    from distill.checkpoint import save_checkpoint
    ck = load_checkpoint(tiny_ckpt)
    ck.pop("path")
    ck["config"] = cfg
    save_checkpoint(tmp_path / "best.pt", ck)
    res = export_onnx(tmp_path / "best.pt", tmp_path / "out", int8=True, fp16=True, trt_int8=True, calib_count=32, evaluate=True,
                      eval_images=60, latency_iters=3, threads=1, quiet=True)
    mp = res["report"]["map"]
    assert {"raw", "int8", "trt_int8", "trt_fp16"} <= set(mp)
    assert abs(mp["raw"]["mAP"] - mp["int8"]["mAP"]) <= 1.0, mp
    # the TensorRT 11 graphs through the plugin's CPU reference: Q/DQ within the INT8 bound, FP16 within 0.3
    assert abs(mp["raw"]["mAP"] - mp["trt_int8"]["mAP"]) <= 1.0 and mp["trt_int8_max_map_drop"] == 1.0, mp
    assert abs(mp["raw"]["mAP"] - mp["trt_fp16"]["mAP"]) <= 0.3 and mp["trt_fp16_max_map_drop"] == 0.3, mp
    assert res["ok"]
