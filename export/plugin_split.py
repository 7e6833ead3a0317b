"""The TensorRT plugin graph (``model_trt.onnx``) cut at its EfficientNMS_TRT node, and joined again.

Rewrites that must never touch the plugin -- mixed precision (:mod:`export.fp16`), Q/DQ
quantization (:mod:`export.qdq_trt`) -- work on the *head*: the plain ONNX graph from ``images``
to the plugin's computed inputs (``nms_deltas``, ``nms_scores``), which ONNX Runtime and every
ONNX tool can run. The plugin node, its constant anchors and the four graph outputs are kept
aside unchanged and appended again by :meth:`PluginSplit.join`.

EfficientNMS_TRT's type rule (TensorRT ``plugin/efficientNMSPlugin``, ``supportsFormatCombination``):
boxes, scores, anchors and the float outputs share one type, FP32 or FP16. The graph contract
(runtime.outputs) wants FP32 ``detection_boxes`` / ``detection_scores``, so the plugin's inputs
must stay FP32 whatever the head computes in: :meth:`PluginSplit.join` refuses anything else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from runtime.trt_reference import PLUGIN_NAME


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _elem_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Value infos of every typed tensor of ``model`` after shape inference (inputs, outputs, values)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    return {v.name: v for v in [*g.input, *g.value_info, *g.output]}


@dataclass
class PluginSplit:
    """``head`` (images -> the plugin's computed inputs, FP32) and what :meth:`join` appends again."""

    head: onnx.ModelProto
    node: onnx.NodeProto
    constants: list[onnx.TensorProto]
    outputs: list[onnx.ValueInfoProto]
    plugin_opsets: list[onnx.OperatorSetIdProto]

    @property
    def computed_inputs(self) -> list[str]:
        """The plugin inputs the head computes (``nms_deltas``, ``nms_scores``), in plugin order."""
        const = {c.name for c in self.constants}
        return [i for i in self.node.input if i and i not in const]

    def join(self, head: onnx.ModelProto) -> onnx.ModelProto:
        """``head`` (a rewrite of :attr:`head`, same input and output names) + the unchanged plugin
        node, its constants and the four graph outputs. ValueError if a plugin input is not FP32."""
        types = {o.name: o.type.tensor_type.elem_type for o in head.graph.output}
        for name in self.computed_inputs:
            if types.get(name) != onnx.TensorProto.FLOAT:
                got = onnx.TensorProto.DataType.Name(types[name]) if name in types else "missing"
                raise ValueError(f"{PLUGIN_NAME} input {name!r} must stay FLOAT (its boxes, scores and anchors "
                                 f"share one type and the graph's detection outputs are float32), got {got}")
        model = _copy(head)
        g = model.graph
        g.node.append(self.node)
        g.initializer.extend(self.constants)
        del g.output[:]
        g.output.extend(self.outputs)
        have = {o.domain for o in model.opset_import}
        model.opset_import.extend(o for o in self.plugin_opsets if o.domain not in have)
        return model


def split_plugin_graph(model: onnx.ModelProto) -> PluginSplit:
    """Cut a plugin graph at its single EfficientNMS_TRT node (which must end the graph: its
    outputs are the graph outputs and feed nothing). The head keeps the model's IR version and
    default-domain opset, loses the plugin domain and ``metadata_props``."""
    plugins = [n for n in model.graph.node if n.op_type == PLUGIN_NAME]
    if len(plugins) != 1:
        raise ValueError(f"expected exactly one {PLUGIN_NAME} node, found {len(plugins)}")
    node = plugins[0]
    others = [n for n in model.graph.node if n is not node]
    if {i for n in others for i in n.input} & set(node.output):
        raise ValueError(f"{PLUGIN_NAME} outputs feed other nodes; only graphs that end with the plugin are supported")
    inits = {t.name: t for t in model.graph.initializer}
    used_elsewhere = {i for n in others for i in n.input}
    constants = [inits[i] for i in node.input if i in inits]
    head = _copy(model)
    g = head.graph
    del g.node[:]
    g.node.extend(others)
    keep = [t for t in model.graph.initializer if t.name not in {c.name for c in constants} or t.name in used_elsewhere]
    del g.initializer[:]
    g.initializer.extend(keep)
    computed = [i for i in node.input if i and i not in inits]
    typed = _elem_types(head)
    del g.output[:]
    for name in computed:
        g.output.append(typed[name] if name in typed else onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, None))
    domains = {n.domain for n in others}
    plugin_opsets = [o for o in model.opset_import if o.domain == node.domain and node.domain]
    kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in domains]
    del head.opset_import[:]
    head.opset_import.extend(kept)
    del head.metadata_props[:]
    return PluginSplit(head=head, node=node, constants=constants, outputs=list(model.graph.output),
                       plugin_opsets=plugin_opsets)


def io_types(model: onnx.ModelProto) -> dict[str, str]:
    """Graph input and output name -> numpy dtype name ("float32", "float16", "int32", ...), for sidecars."""
    out: dict[str, str] = {}
    for v in [*model.graph.input, *model.graph.output]:
        out[v.name] = str(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
    return out


def named_nodes(model: onnx.ModelProto, prefix: str = "node") -> onnx.ModelProto:
    """``model`` with a unique name on every node (unnamed ones get ``<prefix>_<index>_<op>``): the
    rewrites refer to nodes by name."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{prefix}_{i}_{n.op_type}"
        seen.add(n.name)
    return model


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the FLOAT (float32) tensors of ``model``: inputs, values, outputs and initializers."""
    typed: dict[str, Any] = _elem_types(model)
    names = {n for n, v in typed.items() if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names |= {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for n in model.graph.node:  # Constant nodes: shape inference types them, but be explicit
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value" \
                and n.attribute[0].t.data_type == onnx.TensorProto.FLOAT:
            names.add(n.output[0])
    return names


@dataclass
class PluginSource:
    """The FP32 plugin graph a variant starts from: its path, sidecar, split and float-tail node names."""

    path: Path
    meta: Any
    split: PluginSplit
    tail: list[str]


def load_fp32_plugin_graph(trt_onnx: str | Path, step: str, notes: list[str] | None = None) -> PluginSource:
    """Open ``model_trt.onnx`` (FP32, with its sidecar) for the variant ``step`` (words for messages);
    ValueError for any other graph. A tail not found by name is noted in ``notes``."""
    from export.graphs import TAIL_PREFIXES, tail_node_names
    from runtime.metadata import read_sidecar
    path = Path(trt_onnx)
    meta = read_sidecar(path)
    if meta.graph != "trt" or meta.precision != "fp32":
        raise ValueError(f"{path.name} is graph {meta.graph!r} in {meta.precision}; {step} starts from the FP32 "
                         f"plugin graph model_trt.onnx")
    split = split_plugin_graph(named_nodes(onnx.load(str(path))))
    tail = tail_node_names(split.head, TAIL_PREFIXES["trt"])
    if not tail and notes is not None:
        notes.append(f"plugin-input tail not found by name: {step} treats every node alike")
    return PluginSource(path, meta, split, tail)


def save_variant(head: onnx.ModelProto, out: Path, src: PluginSource, precision: str, extra: dict[str, Any]) -> Any:
    """``head`` joined with the plugin again, checked (when the plugin has a named domain) and
    written with ``src``'s sidecar in ``precision`` plus ``extra``, the I/O types and the source
    graph's name and sha256. Returns the :class:`export.artifacts.WrittenGraph`."""
    from export.artifacts import check_and_infer, save_with_meta
    from runtime.metadata import sha256_file
    model = src.split.join(head)
    if src.split.node.domain:  # a named plugin domain keeps the whole graph checkable
        model = check_and_infer(model)
    meta = dataclasses.replace(src.meta, precision=precision, onnx_sha256=None, extra={
        **src.meta.extra, **extra, "io_types": io_types(model), "source_onnx": src.path.name,
        "source_sha256": sha256_file(src.path)})
    return save_with_meta(model, Path(out), meta)
