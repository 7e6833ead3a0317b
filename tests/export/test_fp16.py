"""model_trt_fp16.onnx: the plugin graph in mixed precision for TensorRT 11 (export.fp16), the
split / join around EfficientNMS_TRT (export.plugin_split), and the rules op by op on tiny graphs."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import fp16 as F
from export.plugin_split import io_types, split_plugin_graph
from export.verify import ort_session
from runtime.metadata import read_sidecar, sha256_file
from runtime.trt_reference import TrtGraphReference

FP32_IO = {"images": "float32", "num_detections": "int32", "detection_boxes": "float32",
           "detection_scores": "float32", "detection_classes": "int32"}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model).graph
    out = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


# --------------------------------------------------------------------------- the exported FP16 graph
def test_fp16_plugin_graph_keeps_the_plugin_and_its_fp32_inputs(exported):
    fp32, fp16 = (onnx.load(exported["files"][g]["onnx"]) for g in ("trt", "trt_fp16"))
    a, b = split_plugin_graph(fp32), split_plugin_graph(fp16)
    assert b.node == a.node and b.constants == a.constants  # the plugin node and anchors, untouched
    types = _types(b.head)
    assert all(types[i] == TensorProto.FLOAT for i in b.computed_inputs)
    assert io_types(fp16) == FP32_IO
    convs = [n for n in fp16.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == TensorProto.FLOAT16 for n in convs)
    tail = [n for n in fp16.graph.node if n.name.startswith("plugin_inputs/")]
    assert {n.op_type for n in tail} == {"Mul", "Min", "Softmax", "Slice"}
    assert not any(types.get(i) == TensorProto.FLOAT16 for n in tail for i in (*n.input, *n.output))
    assert sum(n.op_type == "Cast" for n in fp16.graph.node) >= 2


def test_fp16_sidecar_declares_precision_io_types_and_what_stayed_fp32(exported):
    path = Path(exported["files"]["trt_fp16"]["onnx"])
    meta, src = read_sidecar(path), read_sidecar(exported["files"]["trt"]["onnx"])
    assert meta.graph == "trt" and meta.precision == "fp16" and meta.onnx_sha256 == sha256_file(path)
    assert meta.nms == src.nms and meta.nms_plugin == src.nms_plugin
    assert meta.extra["io_types"] == FP32_IO and meta.extra["source_onnx"] == "model_trt.onnx"
    assert meta.extra["source_sha256"] == sha256_file(exported["files"]["trt"]["onnx"])
    mp = meta.extra["mixed_precision"]
    assert mp["rules"]["data_max"] == 512.0 and mp["rules"]["init_max"] == 65504.0 and mp["reference_images"] == 8
    assert set(mp["fp32_nodes"]) == {"plugin_inputs/mul_2", "plugin_inputs/min_4", "plugin_inputs/softmax_5",
                                     "plugin_inputs/slice_9"}
    assert all("EfficientNMS_TRT takes FP32" in why for why in mp["fp32_nodes"].values())
    assert mp["fp16_nodes"] > 100 and mp["weights_flushed_to_zero"] == 0


def test_fp16_detections_match_fp32_within_the_fp16_tolerance(exported, images_nchw):
    """The verification row (agreement >= runtime.parity's FP16 bound at batch 1 and 3) and the
    numbers behind it, recomputed here."""
    row = json.loads(Path(exported["report_path"]).read_text())["graphs"]["trt_fp16"]
    assert row["ok"] and row["detections_match"] and row["min_agreement"] == 0.8
    assert set(row["batches"]) == {"1", "3"} and all(b["plugin_inputs_fp32"] for b in row["batches"].values())
    ref, got = (TrtGraphReference(exported["files"][g]["onnx"]) for g in ("trt", "trt_fp16"))
    for a, b in zip(ref.plugin_inputs(images_nchw), got.plugin_inputs(images_nchw)):
        assert b.dtype == np.float32 and np.abs(a - b).max() < 1e-2
    from export.verify_variants import nms_agreement
    from runtime.outputs import NMS_OUTPUTS
    meta = read_sidecar(exported["files"]["trt_fp16"]["onnx"])
    a = nms_agreement(dict(zip(NMS_OUTPUTS, ref(images_nchw))), dict(zip(NMS_OUTPUTS, got(images_nchw))), meta)
    assert a["agreement"] >= 0.8 and a["max_score_diff"] < 1e-2 and a["reference_detections"] > 15


def test_convert_fp16_refuses_what_it_cannot_convert(exported, tmp_path):
    with pytest.raises(ValueError, match="starts from the FP32 plugin graph"):
        F.convert_fp16(exported["files"]["trt_fp16"]["onnx"], [], out=tmp_path / "x.onnx")
    everything = F.Fp16Rules(keep_op_types=frozenset({"Conv", "Clip", "Add", "Reshape", "Transpose", "Concat",
                                                      "Mul", "Min", "Slice", "Softmax"}))
    with pytest.raises(ValueError, match="refusing to write an FP32 graph under the FP16 name"):
        F.convert_fp16(exported["files"]["trt"]["onnx"], [], out=tmp_path / "x.onnx", rules=everything)
    assert not (tmp_path / "x.onnx").exists()


def test_join_refuses_a_reduced_precision_plugin_input(exported):
    split = split_plugin_graph(onnx.load(exported["files"]["trt"]["onnx"]))
    joined = split.join(split.head)
    original = onnx.load(exported["files"]["trt"]["onnx"])
    assert [o.name for o in joined.graph.output] == [o.name for o in original.graph.output]
    head = onnx.ModelProto()
    head.CopyFrom(split.head)
    head.graph.output[1].type.tensor_type.elem_type = TensorProto.FLOAT16
    with pytest.raises(ValueError, match="must stay FLOAT"):
        split.join(head)


# --------------------------------------------------------------------------- the rules on tiny graphs
def _tiny(weight_scale: float = 1.0, big_init: bool = False) -> onnx.ModelProto:
    """x [1, 2, 4, 4] -> Conv -> Relu -> r; r * k -> "scaled" (output); Softmax(r) -> "probs"
    (output); k + r -> "shared" (output, node "keep_me"), so the initializer k has FP16 and FP32 readers."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((3, 2, 1, 1)) * weight_scale).astype(np.float32)
    k = np.full((1, 3, 1, 1), 1e5 if big_init else 0.5, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "k"], ["scaled"], name="mul"),
             helper.make_node("Softmax", ["r"], ["probs"], name="softmax", axis=1),
             helper.make_node("Add", ["k", "r"], ["shared"], name="keep_me")]
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 4]) for n in ("scaled", "probs", "shared")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])], out,
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(3, np.float32), "b"),
                           numpy_helper.from_array(k, "k")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_op_rules_and_the_rewrite_run_in_onnx_runtime():
    model = _tiny()
    rules = F.Fp16Rules(keep_nodes=("keep_me",))
    fp16, fp32 = F.classify_nodes(model, rules, tail=())
    assert fp16 == ["conv", "relu", "mul"]
    assert fp32 == {"softmax": "Softmax stays FP32", "keep_me": "kept FP32 on request"}
    mixed, counts = F.to_mixed_precision(model, fp16)
    types = _types(mixed)
    assert [types[o.name] for o in mixed.graph.output] == [TensorProto.FLOAT] * 3
    assert types["x"] == TensorProto.FLOAT and types["w__fp16"] == TensorProto.FLOAT16
    assert types["k__fp16"] == TensorProto.FLOAT16 and types["k"] == TensorProto.FLOAT  # both readers served
    assert counts == {"fp16_nodes": 3, "casts": 3, "fp16_initializers": 3, "weights_flushed_to_zero": 0}
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    want = ort_session(model).run(None, {"x": x})
    got = ort_session(mixed).run(None, {"x": x})
    for a, b in zip(want, got):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-3)


def test_range_rules_keep_nodes_fp32():
    big = _tiny(big_init=True)
    _, fp32 = F.classify_nodes(big, F.Fp16Rules(), tail=())
    assert "init_max" in fp32["mul"] and "init_max" in fp32["keep_me"]
    loud = _tiny(weight_scale=1000.0)
    x = np.full((1, 2, 4, 4), 3.0, np.float32)
    absmax = F.activation_absmax(loud, [x])
    assert absmax["x"] == 3.0 and absmax["c"] > 512
    fp16, fp32 = F.classify_nodes(loud, F.Fp16Rules(), tail=(), absmax=absmax)
    assert "data_max" in fp32["conv"] and "conv" not in fp16
    fp16, _ = F.classify_nodes(loud, dataclasses.replace(F.Fp16Rules(), data_max=1e9), tail=(), absmax=absmax)
    assert "conv" in fp16


def test_plugin_tail_stays_fp32_whatever_the_op_rules():
    model = _tiny()
    fp16, fp32 = F.classify_nodes(model, F.Fp16Rules(keep_op_types=frozenset()), tail=("mul",))
    assert "softmax" in fp16 and fp32["mul"].startswith("plugin input tail")
