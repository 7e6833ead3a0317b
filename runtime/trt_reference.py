"""Run a TensorRT plugin graph (``model_trt.onnx``) on the CPU, without TensorRT.

The exact exported file is executed: the subgraph that computes the inputs of its single
``EfficientNMS_TRT`` node runs in ONNX Runtime, then :func:`runtime.nms_reference.efficient_nms`
plays the plugin with the attributes read from that node (never re-typed). This is how the plugin
graph is proved equal to the PyTorch postprocess on machines without a GPU.

Imports numpy at module import; ``onnx`` and ``onnxruntime`` when a graph is opened (no torch).
The plugin always keeps its 4096 best candidates before NMS (``PLUGIN_TOP_K``); the reference
does the same.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.nms_reference import efficient_nms

PLUGIN_NAME = "EfficientNMS_TRT"
PLUGIN_TOP_K = 4096
# Attributes the plugin's creator requires (TensorRT plugin/efficientNMSPlugin PluginConfig:
# "attributes_required"); class_agnostic is optional there and defaults to 0.
REQUIRED_ATTRS = ("score_threshold", "iou_threshold", "max_output_boxes", "background_class",
                  "score_activation", "box_coding")

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _import_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the host
        raise RuntimeError(f"the CPU reference of the TensorRT graph needs onnx and onnxruntime "
                           f"(pip install onnx onnxruntime): {e}") from None
    import onnx
    import onnxruntime
    return onnx, onnxruntime


def plugin_attributes(node: Any) -> dict[str, Any]:
    """EfficientNMS_TRT attributes of an onnx NodeProto as python values; raises ValueError
    naming any required attribute that is missing."""
    onnx, _ = _import_onnx()
    attrs = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        attrs[a.name] = v.decode() if isinstance(v, bytes) else v
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise ValueError(f"{PLUGIN_NAME} node {node.name!r} lacks required attributes {missing}")
    return attrs


class TrtGraphReference:
    """A plugin graph opened once, run many times: ``ref(images) -> 4 outputs``.

    ``model``: path of ``model_trt.onnx`` or an ``onnx.ModelProto``. ``intra_op_threads``: ORT
    threads (0 = ORT default).
    """

    def __init__(self, model: str | os.PathLike[str] | Any, intra_op_threads: int = 0):
        onnx, ort = _import_onnx()
        proto = onnx.load(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model
        nodes = [n for n in proto.graph.node if n.op_type == PLUGIN_NAME]
        if len(nodes) != 1:
            raise ValueError(f"expected exactly one {PLUGIN_NAME} node in the graph, found {len(nodes)}")
        self.node = nodes[0]
        self.attrs = plugin_attributes(self.node)
        if len(self.node.input) not in (2, 3) or len(self.node.output) != 4:
            raise ValueError(f"{PLUGIN_NAME} needs 2 or 3 inputs and 4 outputs, got {len(self.node.input)} "
                             f"and {len(self.node.output)}")
        consumed = {i for n in proto.graph.node if n is not self.node for i in n.input}
        if consumed & set(self.node.output):
            raise ValueError(f"{PLUGIN_NAME} outputs feed other nodes; only graphs that end with the plugin "
                             f"are supported")
        self.output_names = list(self.node.output)

        # Constant plugin inputs (the anchors) are read from the graph; the rest are computed by ORT.
        inits = {t.name: t for t in proto.graph.initializer}
        const_nodes = {n.output[0]: n for n in proto.graph.node if n.op_type == "Constant"}
        self._constants: dict[str, np.ndarray] = {}
        computed: list[str] = []
        for name in self.node.input:
            if name in inits:
                self._constants[name] = onnx.numpy_helper.to_array(inits[name])
            elif name in const_nodes and const_nodes[name].attribute[0].name == "value":
                self._constants[name] = onnx.numpy_helper.to_array(const_nodes[name].attribute[0].t)
            elif name:
                computed.append(name)
        self._computed = computed

        sub = onnx.ModelProto()
        sub.CopyFrom(proto)
        needed = _backward_closure(list(proto.graph.node), computed)
        keep = []
        for i in needed:
            n = onnx.NodeProto()
            n.CopyFrom(proto.graph.node[i])
            keep.append(n)
        del sub.graph.node[:]
        sub.graph.node.extend(keep)
        del sub.graph.output[:]
        for name in computed:
            sub.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        used_domains = {n.domain for n in keep}
        opsets = [o for o in sub.opset_import if o.domain in ("", "ai.onnx") or o.domain in used_domains]
        del sub.opset_import[:]
        sub.opset_import.extend(opsets)
        opts = ort.SessionOptions()
        # No spin-waiting between runs: the reference is called between PyTorch runs in parity
        # checks, and spinning ORT threads would steal the cores PyTorch is using.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # the unused-anchors-initializer notice is expected
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        self.session = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def plugin_inputs(self, images: np.ndarray) -> list[np.ndarray | None]:
        """The plugin's input tensors for ``images`` float32 [B, 3, H, W]: [boxes, scores(, anchors)]."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        run = dict(zip(self._computed, self.session.run(self._computed, {self.input_name: x}))) \
            if self._computed else {}
        return [self._constants[n] if n in self._constants else run[n] for n in self.node.input]

    def __call__(self, images: np.ndarray) -> Outputs:
        """``images`` float32 [B, 3, H, W] (normalised as the sidecar says) -> num_detections int32
        [B, 1], detection_boxes float32 [B, K, 4], detection_scores float32 [B, K],
        detection_classes int32 [B, K], exactly as the plugin defines them."""
        ins = self.plugin_inputs(images)
        a = self.attrs
        return efficient_nms(
            ins[0], ins[1], ins[2] if len(ins) == 3 else None,
            score_threshold=float(a["score_threshold"]), iou_threshold=float(a["iou_threshold"]),
            max_output_boxes=int(a["max_output_boxes"]), background_class=int(a["background_class"]),
            score_activation=bool(a["score_activation"]), class_agnostic=bool(a.get("class_agnostic", 0)),
            box_coding=int(a["box_coding"]), pre_nms_top_k=PLUGIN_TOP_K,
        )


def _backward_closure(nodes: Sequence[Any], targets: Sequence[str]) -> list[int]:
    """Indices (in graph order) of the nodes needed to compute the tensors ``targets``."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    needed, stack, seen = set(), list(targets), set()
    while stack:
        t = stack.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        needed.add(producer[t])
        stack.extend(i for i in nodes[producer[t]].input if i)
    return sorted(needed)


def run_trt_graph_reference(onnx_path: str | os.PathLike[str] | Any, images_nchw: np.ndarray) -> Outputs:
    """One-shot :class:`TrtGraphReference`: the four plugin outputs of ``model_trt.onnx`` for
    ``images_nchw`` float32 [B, 3, H, W]."""
    return TrtGraphReference(onnx_path)(images_nchw)
