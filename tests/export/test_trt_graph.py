"""model_trt.onnx: the EfficientNMS_TRT node is what TensorRT expects, and its CPU reference run
(runtime.trt_reference) equals the PyTorch postprocess."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from export import graphs as G
from export import verify as V
from export.trt.env import choose_plugin_version
from runtime.matching import match_exact
from runtime.metadata import read_sidecar
from runtime.trt_reference import TrtGraphReference, run_trt_graph_reference

# Attribute name -> ONNX attribute type the TensorRT ONNX parser maps onto the plugin's fields
# (float32 thresholds, int32 for the rest) plus the parser's own plugin_version/plugin_namespace strings.
EXPECTED_ATTR_TYPES = {
    "score_threshold": onnx.AttributeProto.FLOAT, "iou_threshold": onnx.AttributeProto.FLOAT,
    "max_output_boxes": onnx.AttributeProto.INT, "background_class": onnx.AttributeProto.INT,
    "score_activation": onnx.AttributeProto.INT, "class_agnostic": onnx.AttributeProto.INT,
    "box_coding": onnx.AttributeProto.INT, "plugin_version": onnx.AttributeProto.STRING,
    "plugin_namespace": onnx.AttributeProto.STRING,
}


@pytest.fixture(scope="module")
def trt_model(exported):
    return onnx.load(exported["files"]["trt"]["onnx"])


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_plugin_node_attributes(trt_model, exported, model_and_meta):
    _, _, meta = model_and_meta
    nodes = [n for n in trt_model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nodes) == 1
    node = nodes[0]
    assert node.domain == G.PLUGIN_DOMAIN
    assert G.PLUGIN_DOMAIN in {o.domain for o in trt_model.opset_import}
    types = {a.name: a.type for a in node.attribute}
    assert types == EXPECTED_ATTR_TYPES  # every attribute written out, none missing, none extra
    attrs = G.find_plugin_node(trt_model).attrs
    assert attrs["score_threshold"] == pytest.approx(meta.nms.score_threshold)
    assert attrs["iou_threshold"] == pytest.approx(meta.nms.iou_threshold)
    assert attrs["max_output_boxes"] == meta.nms.max_detections
    assert attrs["background_class"] == -1 and attrs["score_activation"] == 0 and attrs["box_coding"] == 1
    assert attrs["class_agnostic"] == int(meta.nms.class_agnostic)
    assert attrs["plugin_version"] == "1" and attrs["plugin_namespace"] == ""
    side = read_sidecar(exported["files"]["trt"]["onnx"])
    assert side.nms_plugin["name"] == "EfficientNMS_TRT" and side.nms_plugin["version"] == attrs["plugin_version"]


def test_plugin_inputs_and_outputs(trt_model, model_and_meta):
    model, anchors, meta = model_and_meta
    node = G.find_plugin_node(trt_model).node
    assert len(node.input) == 3  # fused box decoder mode
    inits = {t.name: t for t in trt_model.graph.initializer}
    a = numpy_helper.to_array(inits[node.input[2]])
    assert a.dtype == np.float32 and a.shape == (1, anchors.shape[0], 4)
    np.testing.assert_array_equal(a[0], anchors.numpy())  # cxcywh, as box_coding 1 expects
    vi = {v.name: v for v in list(trt_model.graph.value_info) + list(trt_model.graph.output)}
    for name, last in ((node.input[0], 4), (node.input[1], 3)):
        t = vi[name].type.tensor_type
        assert t.elem_type == TensorProto.FLOAT
        dims = [d.dim_value or d.dim_param for d in t.shape.dim]
        assert dims[1:] == [anchors.shape[0], last] and isinstance(dims[0], str)
    # variances applied by a Mul on the loc output before the plugin (the plugin applies none)
    prod = _producers(trt_model)
    chain, t = [], node.input[0]
    while t in prod and len(chain) < 4:
        chain.append(prod[t])
        t = prod[t].input[0]
    muls = [n for n in chain if n.op_type == "Mul"]
    assert muls, [n.op_type for n in chain]
    consts = [numpy_helper.to_array(inits[i]) for i in muls[0].input if i in inits]
    np.testing.assert_allclose(consts[0].reshape(-1), model.box_coder.variances, rtol=1e-6)
    # softmax in the graph, background sliced off before the plugin
    ops = set()
    t = node.input[1]
    while t in prod:
        ops.add(prod[t].op_type)
        if prod[t].op_type == "Softmax":
            break
        t = prod[t].input[0]
    assert {"Slice", "Softmax"} <= ops
    outs = [(o.name, o.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim])
            for o in trt_model.graph.output]
    k = meta.nms.max_detections
    assert [(n, e) for n, e, _ in outs] == [("num_detections", TensorProto.INT32), ("detection_boxes", TensorProto.FLOAT),
                                            ("detection_scores", TensorProto.FLOAT),
                                            ("detection_classes", TensorProto.INT32)]
    assert [d[1:] for _, _, d in outs] == [[1], [k, 4], [k], [k]]
    assert list(node.output) == [o[0] for o in outs]


def test_cpu_reference_matches_pytorch(exported, model_and_meta, images_nchw):
    model, anchors, meta = model_and_meta
    ref_graph = TrtGraphReference(exported["files"]["trt"]["onnx"])
    for bs in (1, 3):
        x = images_nchw[:bs]
        got = ref_graph(x)
        assert [a.dtype for a in got] == [np.int32, np.float32, np.float32, np.int32]
        ref = V.torch_detections(model, anchors, x, meta.nms)
        m = match_exact(got, ref, raw=V.torch_raw(model, anchors, x))
        assert m["match"], m
        assert int(got[0].min()) > 5
    one_shot = run_trt_graph_reference(exported["files"]["trt"]["onnx"], images_nchw[:1])
    for a, b in zip(one_shot, ref_graph(images_nchw[:1])):
        np.testing.assert_array_equal(a, b)


def test_cpu_reference_rejects_graph_without_plugin(exported):
    with pytest.raises(ValueError, match="exactly one EfficientNMS_TRT"):
        TrtGraphReference(exported["files"]["raw"]["onnx"])


def test_plugin_version_choice():
    assert choose_plugin_version("auto").version == "1"
    assert choose_plugin_version("auto", "10.3.0").version == "1"
    assert choose_plugin_version("auto", "8.6.1", ["1"]).version == "1"
    assert choose_plugin_version("auto", "10.13.0.35", ["1"]).version == "1"
    assert choose_plugin_version("auto", "10.13.0", ["1", "2"]).version == "2"
    assert choose_plugin_version("auto", "10.13.0", None).version == "1"
    assert choose_plugin_version("2").version == "2"
    with pytest.raises(ValueError, match="registers"):
        choose_plugin_version("2", "10.13.0", ["1"])
    with pytest.raises(ValueError, match="'auto' or a version"):
        choose_plugin_version("v1")


def test_runtime_reference_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path
    code = "import sys, runtime.trt_reference; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_reference_runs_default_domain_plugin_graph(trt_model, images_nchw):
    """TensorRT-samples style graphs (plugin in the default domain) run through the reference too."""
    m = onnx.ModelProto()
    m.CopyFrom(trt_model)
    G.find_plugin_node(m).node.domain = ""
    kept = [o for o in m.opset_import if o.domain != G.PLUGIN_DOMAIN]
    del m.opset_import[:]
    m.opset_import.extend(kept)
    a, b = TrtGraphReference(m)(images_nchw), TrtGraphReference(trt_model)(images_nchw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
