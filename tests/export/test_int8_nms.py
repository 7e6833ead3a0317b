"""The INT8 graph with NMS fused (model_int8_nms.onnx), calibration choices and mixed precision."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import verify as V
from runtime.metadata import read_sidecar
from runtime.outputs import NMS_OUTPUTS

# INT8 against FP32 / PyTorch on the tiny model: runtime.parity agreement (same class, IoU >= 0.95,
# one to one, both ways) of the detections. INT8 moves scores by ~1e-3, which reorders near-ties
# at the K = 100 cut of an untrained model; a trained model is held by the mAP gate instead.
INT8_MIN_AGREEMENT = 0.8


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _downstream(model: onnx.ModelProto, start: list[onnx.NodeProto]) -> set[str]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    seen: set[str] = set()
    stack = list(start)
    while stack:
        n = stack.pop()
        if n.name not in seen:
            seen.add(n.name)
            stack.extend(c for o in n.output for c in consumers.get(o, []))
    return seen


def test_int8_nms_graph_is_a_qdq_body_with_a_float_nms_tail(exported):
    path = Path(exported["files"]["int8_nms"]["onnx"])
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = _ops(m)
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    assert ops.count("NonMaxSuppression") == 1 and "Softmax" in ops and "Exp" in ops
    # decode, softmax and NMS in float: nothing downstream of the tail's first nodes is a Q/DQ node
    tail = _downstream(m, [n for n in m.graph.node if n.name.startswith(("decode/", "nms/"))])
    by_name = {n.name: n for n in m.graph.node}
    assert {by_name[t].op_type for t in tail} >= {"NonMaxSuppression", "Softmax", "TopK"}
    assert not [t for t in tail if by_name[t].op_type in ("QuantizeLinear", "DequantizeLinear")]
    # the graph-output contract of every NMS graph
    types = {o.name: o.type.tensor_type.elem_type for o in m.graph.output}
    assert [o.name for o in m.graph.output] == list(NMS_OUTPUTS)
    assert types == {"num_detections": onnx.TensorProto.INT32, "detection_boxes": onnx.TensorProto.FLOAT,
                     "detection_scores": onnx.TensorProto.FLOAT, "detection_classes": onnx.TensorProto.INT32}
    meta = read_sidecar(path)
    assert (meta.graph, meta.precision, meta.input_format) == ("nms", "int8", "float_nchw")
    assert meta.extra["quantization"]["per_channel"] and meta.extra["source"] == "model_int8.onnx"
    assert meta.nms == read_sidecar(exported["files"]["nms"]["onnx"]).nms
    # named apart from the FP32 NMS graph in every report
    from runtime.load import load_detector
    assert load_detector(path, threads=1).name == "onnxruntime-cpu-int8-nms"


def test_int8_nms_verified_against_host_nms_pytorch_and_fp32(exported, model_and_meta, images_nchw):
    row = exported["report"]["graphs"]["int8_nms"]
    assert row["ok"] and row["detections_match"] and row["max_abs_diff"] == 0.0, row
    assert row["agreement_pytorch"] >= INT8_MIN_AGREEMENT and 0 < row["max_raw_diff_pytorch"] < 0.1, row
    # the same against the FP32 ONNX-NMS graph, at batch 3
    from export.verify_variants import nms_agreement
    fp32 = V.ort_session(exported["files"]["nms"]["onnx"], threads=1).run(None, {"images": images_nchw})
    int8 = V.ort_session(exported["files"]["int8_nms"]["onnx"], threads=1).run(None, {"images": images_nchw})
    a = nms_agreement(dict(zip(NMS_OUTPUTS, fp32)), dict(zip(NMS_OUTPUTS, int8)), model_and_meta[2])
    assert a["agreement"] >= INT8_MIN_AGREEMENT, a


def test_a_wrong_int8_nms_tail_fails_verification(exported, model_and_meta, tmp_path):
    """The check can fail: an INT8 NMS graph that suppresses nothing, under the sidecar that says it does."""
    import onnx_graphsurgeon as gs

    from export import graphs as G
    from export.artifacts import save_with_meta
    from export.data import synthetic_images
    from export.verify_int8 import verify_int8_nms
    model, anchors, _ = model_and_meta
    int8 = Path(exported["files"]["int8"]["onnx"])
    meta = read_sidecar(exported["files"]["int8_nms"]["onnx"])
    body = onnx.load(str(int8))
    del body.metadata_props[:]
    no_nms = dataclasses.replace(meta.nms, iou_threshold=1.0)
    wrong = G.to_model(G.add_onnx_nms_tail(gs.import_onnx(body), no_nms))
    save_with_meta(wrong, tmp_path / "model_int8_nms.onnx", meta)
    row = verify_int8_nms(int8, tmp_path / "model_int8_nms.onnx", model, anchors, synthetic_images(3, seed=2),
                          batches=(3,), threads=1)
    assert not row["ok"] and row["detections_match"] is False


def test_calibration_method_and_weight_granularity_are_selectable(exported, calib_dir, tmp_path):
    from export.onnx import build_parser
    from export.quantize import quantize_int8
    assert build_parser().parse_args(["--int8-calib", "percentile"]).calib_method == "percentile"
    assert build_parser().parse_args(["--int8-per-tensor"]).int8_per_tensor
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--int8-calib", "kl"])
    raw = Path(exported["files"]["raw"]["onnx"])
    images = sorted(str(p) for p in calib_dir.iterdir())[:1]
    graphs = {("minmax", True): Path(exported["files"]["int8"]["onnx"])}  # the export's default
    for method, per_channel in (("entropy", True), ("minmax", False)):
        w, info = quantize_int8(raw, images, out=tmp_path / f"{method}{per_channel}.onnx", method=method,
                                per_channel=per_channel, calibration_source="one image")
        assert info["per_channel"] is per_channel
        graphs[method, per_channel] = w.onnx
    scales = {}
    for (method, per_channel), path in graphs.items():
        assert read_sidecar(path).extra["quantization"]["calibration"] == method
        m = onnx.load(str(path))
        init = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
        producer = {o: n for n in m.graph.node for o in n.output}
        convs = [n for n in m.graph.node if n.op_type == "Conv"]
        assert {init[producer[c.input[1]].input[1]].ndim for c in convs} == {1 if per_channel else 0}  # weights
        scales[method, per_channel] = np.array([init[producer[c.input[0]].input[1]] for c in convs])  # activations
    assert not np.allclose(scales["minmax", True], scales["entropy", True])
    with pytest.raises(ValueError, match="calibration method must be one of"):
        quantize_int8(raw, images, out=tmp_path / "x.onnx", method="kl", calibration_source="x")


def test_float_layer_puts_layers_back_in_fp32(exported, images_nchw):
    """The mixed-precision edit: every candidate in FP32 is the FP32 graph again; one layer in FP32
    changes the outputs; the sensitivity ranking is sorted and the logits' softmax matters."""
    from export.mixed_precision import float_candidates, float_layer, layer_sensitivity, output_error
    raw_p, int8_p = exported["files"]["raw"]["onnx"], exported["files"]["int8"]["onnx"]
    raw, q = onnx.load(raw_p), onnx.load(int8_p)
    cands = float_candidates(q)
    assert len(cands) > 80 and any(c.startswith("decode/") for c in cands)
    feed = {"images": images_nchw}
    ref = V.ort_session(raw, threads=1).run(None, feed)
    all_fp32 = float_layer(q, raw, cands)
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(_ops(all_fp32))
    for got, want in zip(V.ort_session(all_fp32, threads=1).run(None, feed), ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    softmax = next(c for c in cands if c.startswith("decode/softmax"))
    ranked = layer_sensitivity(raw_p, int8_p, images_nchw, candidates=[cands[0], cands[5], softmax], threads=1)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True) and ranked[0][0] == softmax
    base = output_error(V.ort_session(q, threads=1).run(None, feed), ref)
    assert 0 < ranked[0][1] < base
    with pytest.raises(ValueError, match="not in both"):
        float_layer(q, raw, ["no/such/node"])


def test_mixed_precision_search_names_the_fp32_layers(exported, calib_dir, tmp_path, monkeypatch):
    """The greedy search on the tiny model with an evaluation that loses 3 mAP points with every
    layer INT8 and one point less per layer left in FP32: two layers (the two most sensitive) end
    in FP32, named in the sidecar with the trials; the written graph runs."""
    import shutil

    import export.mixed_precision as MP
    import export.verify as verify_mod
    raw = tmp_path / "model_raw.onnx"
    for suffix in (".onnx", ".json"):
        shutil.copy(Path(exported["files"]["raw"]["onnx"]).with_suffix(suffix), raw.with_suffix(suffix))
    few = ["decode/softmax", "/cls_head/Concat", "features.1/Add", "features.0/features.0.0/Conv"]
    original = MP.float_candidates
    monkeypatch.setattr(MP, "float_candidates", lambda q: [c for c in original(q) if any(f in c for f in few)])

    def fake_eval(graphs, dataset, **_):
        meta = read_sidecar(next(iter(graphs.values())))
        layers = meta.extra.get("quantization", {}).get("fp32_layers", [])
        return {g: {"mAP": 30.0 if meta.precision == "fp32" else 27.0 + len(layers)} for g in graphs}

    monkeypatch.setattr(verify_mod, "evaluate_graphs", fake_eval)
    images = sorted(str(p) for p in calib_dir.iterdir())[:2]
    written, info, maps = MP.quantize_with_gate(raw, images, object(), MP.GateSettings(max_drop=1.0, threads=1),
                                                calibration_source="test images", log=lambda _m: None)
    rec = info["mixed_precision"]
    assert written.onnx == tmp_path / "model_int8.onnx" and rec["passed"] and rec["map_drop_all_int8"] == 3.0
    assert [t["layers"] for t in rec["trials"]] == [1, 2] and rec["map_drop"] == 1.0
    named = read_sidecar(written.onnx).extra["quantization"]["fp32_layers"]
    assert named == [r["layer"] for r in rec["ranking"][:2]] and len(rec["ranking"]) == 4
    assert maps["int8"]["mAP"] == 29.0
    m = onnx.load(str(written.onnx))
    producer = {o: n.op_type for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.name in named:  # reads no dequantized activation any more
            assert all(producer.get(i) != "DequantizeLinear" for i in n.input), n.name
    out = V.ort_session(m, threads=1).run(None, {"images": np.zeros((1, 3, 64, 64), np.float32)})
    assert all(np.isfinite(o).all() for o in out)


def test_trt_qdq_graph_already_ends_in_the_plugin(exported):
    """TensorRT's explicit-quantization graph keeps the FP32 graph's EfficientNMS_TRT tail: Q/DQ body,
    plugin fed by float tensors."""
    from export.graphs import find_plugin_node
    m = onnx.load(exported["files"]["trt_int8"]["onnx"])
    plugin = find_plugin_node(m)
    assert plugin.attrs == find_plugin_node(onnx.load(exported["files"]["trt"]["onnx"])).attrs
    producer = {o: n.op_type for n in m.graph.node for o in n.output}
    assert all(producer.get(i) not in ("QuantizeLinear", "DequantizeLinear") for i in plugin.node.input)
    assert _ops(m).count("DequantizeLinear") > 10
    assert [o.name for o in m.graph.output] == list(NMS_OUTPUTS)
