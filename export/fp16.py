"""``model_trt.onnx`` -> ``model_trt_fp16.onnx``: the plugin graph in mixed precision, for TensorRT's
strongly typed build (TensorRT 11 removed ``BuilderFlag.FP16``: the ONNX itself says what runs in FP16).

:func:`convert_fp16` cuts the plugin graph at EfficientNMS_TRT (:mod:`export.plugin_split`),
classifies every node of the head, rewrites the FP16 nodes and joins the plugin again:

* FP16: every node with float inputs or outputs, unless a rule below keeps it in FP32;
* FP32, always: the plugin-input tail (``plugin_inputs/*``: ``loc * variances``, the log-size
  clamp, softmax, the background slice), so EfficientNMS_TRT gets FP32 boxes, scores and anchors
  (its inputs and float outputs share one type, and the graph contract says float32 outputs);
  ops in :data:`FP32_OPS` (exponentials and normalisations); ops whose output type is an attribute
  (:data:`TYPED_OPS`);
* FP32, flagged by the data -- the rules of NVIDIA ModelOpt AutoCast, with its defaults: a node
  with a float initializer beyond ``init_max`` (the FP16 maximum, 65504), or with an input or
  output whose magnitude exceeds ``data_max`` (512) on the reference images (an ONNX Runtime run
  of the FP32 head).

The rewrite keeps the original name for the FP32 value of a tensor and gives its FP16 value the
name ``<name>__fp16``; a ``Cast`` is inserted once where a value crosses from one precision to the
other; FP16 initializers are converted in place (or copied when FP32 nodes read them too). Graph
inputs and outputs keep their types (``images`` float32 in, the plugin's four outputs out).

Why not a library converter: ModelOpt AutoCast (``nvidia-modelopt[onnx]``) pins onnx ~=1.21 and
onnxruntime-gpu ~=1.24 (this project runs onnx 1.23 and the CPU onnxruntime), so it cannot be
installed beside them; onnxconverter-common 1.16 installs but its ``keep_io_types`` clean-up pass
raises ("The downstream node of the second cast node should be graph output") on a graph whose
FP32 tail feeds the outputs, which is exactly this one. The pass here implements AutoCast's
documented rules in ~150 lines and is tested op by op.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.artifacts import WrittenGraph, check_and_infer
from export.plugin_split import float_tensors, load_fp32_plugin_graph, save_variant

FP16_FILE = "model_trt_fp16.onnx"
FP16_MAX = float(np.finfo(np.float16).max)
DATA_MAX = 512.0  # AutoCast's default data_max
REFERENCE_IMAGES = 32  # images of the data-range rule's ONNX Runtime run (every float tensor is fetched)
FP32_OPS = frozenset({"Softmax", "LogSoftmax", "Exp", "Log", "Pow", "ReduceLogSumExp", "ReduceSumSquare",
                      "ReduceL2", "CumSum"})
TYPED_OPS = frozenset({"Cast", "CastLike", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomNormalLike",
                       "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"})
FP32_INPUTS = {"Resize": (2,), "Upsample": (1,)}  # float inputs the ONNX spec types as float32 always
SUFFIX = "__fp16"


@dataclass
class Fp16Rules:
    """What stays FP32 besides the plugin-input tail (defaults: AutoCast's)."""

    data_max: float = DATA_MAX
    init_max: float = FP16_MAX
    keep_op_types: frozenset[str] = FP32_OPS
    keep_nodes: tuple[str, ...] = ()

    def sidecar(self) -> dict[str, Any]:
        return {"data_max": self.data_max, "init_max": self.init_max, "keep_op_types": sorted(self.keep_op_types),
                "keep_nodes": list(self.keep_nodes)}


# --------------------------------------------------------------------------- what stays FP32
def activation_absmax(head: onnx.ModelProto, batches: Iterable[np.ndarray], threads: int = 1) -> dict[str, float]:
    """Largest |value| of every float tensor of ``head`` over ``batches`` (float32 [B, 3, H, W]),
    from an ONNX Runtime CPU run of the FP32 head with every float tensor made an output."""
    from export.verify import ort_session
    probe = onnx.ModelProto()
    probe.CopyFrom(head)
    have = {o.name for o in probe.graph.output}
    inits = {t.name for t in probe.graph.initializer}
    inputs = {i.name for i in probe.graph.input}
    for name in sorted(float_tensors(head) - have - inits - inputs):
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort_session(probe, threads)
    names = [o.name for o in sess.get_outputs()]
    feed = sess.get_inputs()[0].name
    out: dict[str, float] = {}
    for x in batches:
        out[feed] = max(out.get(feed, 0.0), float(np.max(np.abs(x))) if x.size else 0.0)
        for name, v in zip(names, sess.run(names, {feed: x})):
            m = float(np.max(np.abs(v))) if np.size(v) else 0.0
            out[name] = max(out.get(name, 0.0), m if np.isfinite(m) else float("inf"))
    return out


def _node_reason(n: onnx.NodeProto, floats: set[str], inits: dict[str, onnx.TensorProto], rules: Fp16Rules,
                 tail: set[str], absmax: dict[str, float] | None) -> str | None:
    """Why node ``n`` stays FP32, or None for FP16 (or "" for a node without float tensors)."""
    io = [t for t in (*n.input, *n.output) if t in floats]
    if n.name in tail:
        return "plugin input tail: EfficientNMS_TRT takes FP32 boxes, scores and anchors"
    if n.name in rules.keep_nodes:
        return "kept FP32 on request"
    if not io:
        return ""
    if n.op_type in rules.keep_op_types:
        return f"{n.op_type} stays FP32"
    if n.op_type in TYPED_OPS or (n.op_type == "Constant" and not (n.attribute and n.attribute[0].name == "value")):
        return f"{n.op_type}: output type set by an attribute"
    for t in n.input:
        if t in inits and t in floats:
            a = onnx.numpy_helper.to_array(inits[t])
            big = float(np.max(np.abs(a))) if a.size else 0.0
            if big > rules.init_max:
                return f"initializer {t} |x| {big:.4g} > init_max {rules.init_max:g}"
    if absmax is not None:
        worst = max((absmax.get(t, 0.0) for t in io), default=0.0)
        if worst > rules.data_max:
            return f"|activation| {worst:.4g} > data_max {rules.data_max:g} on the reference images"
    return None


def classify_nodes(head: onnx.ModelProto, rules: Fp16Rules, tail: Sequence[str],
                   absmax: dict[str, float] | None = None) -> tuple[list[str], dict[str, str]]:
    """(names of the FP16 nodes, FP32 node name -> why) of ``head`` (nodes named); nodes
    without float tensors are in neither."""
    floats = float_tensors(head)
    inits = {t.name: t for t in head.graph.initializer}
    fp16, fp32 = [], {}
    for n in head.graph.node:
        why = _node_reason(n, floats, inits, rules, set(tail), absmax)
        if why is None:
            fp16.append(n.name)
        elif why:
            fp32[n.name] = why
    return fp16, fp32


# --------------------------------------------------------------------------- the rewrite
def _h(name: str) -> str:
    return name + SUFFIX


def _cast(src: str, dst: str, to: int) -> onnx.NodeProto:
    return onnx.helper.make_node("Cast", [src], [dst], name=f"fp16/cast/{dst}", to=to)


def _needs(g: onnx.GraphProto, fp16: set[str], floats: set[str]) -> tuple[set[str], set[str], set[str]]:
    """(float tensors read in FP16, read in FP32 (graph outputs included), produced in FP16)."""
    need16, need32, home16 = set(), {o.name for o in g.output}, set()
    for n in g.node:
        low = n.name in fp16
        for k, t in enumerate(n.input):
            if t in floats:
                (need16 if low and k not in FP32_INPUTS.get(n.op_type, ()) else need32).add(t)
        if low:
            home16.update(t for t in n.output if t in floats)
    return need16, need32, home16


def _initializers(g: onnx.GraphProto, need16: set[str], need32: set[str]) -> tuple[list[onnx.TensorProto], int, int]:
    """Float initializers read in FP16 become ``<name>__fp16`` copies; the FP32 original stays only
    while an FP32 node reads it. Returns (initializers, FP16 copies, weights that flush to 0)."""
    out, copies, flushed = [], 0, 0
    for t in g.initializer:
        if t.data_type != onnx.TensorProto.FLOAT or t.name not in need16:
            out.append(t)
            continue
        a = onnx.numpy_helper.to_array(t)
        h = a.astype(np.float16)
        flushed += int(np.count_nonzero((h == 0) & (a != 0)))
        out.append(onnx.numpy_helper.from_array(h, _h(t.name)))
        copies += 1
        if t.name in need32:
            out.append(t)
    return out, copies, flushed


def _retype(n: onnx.NodeProto, floats: set[str]) -> list[str]:
    """Point an FP16 node at the FP16 names of its float inputs and outputs (a Constant's value
    becomes FP16 too); returns its original output names."""
    outputs = list(n.output)
    keep = FP32_INPUTS.get(n.op_type, ())
    for k, t in enumerate(n.input):
        if t in floats and k not in keep:
            n.input[k] = _h(t)
    for k, t in enumerate(outputs):
        if t in floats:
            n.output[k] = _h(t)
    if n.op_type == "Constant" and n.attribute[0].t.data_type == onnx.TensorProto.FLOAT:
        a = onnx.numpy_helper.to_array(n.attribute[0].t).astype(np.float16)
        n.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(a, n.attribute[0].t.name))
    return outputs


def to_mixed_precision(head: onnx.ModelProto, fp16_nodes: Iterable[str]) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``head`` with the nodes named in ``fp16_nodes`` computing in FP16 (see the module
    docstring); graph inputs and outputs keep their types. Returns (checked model, counts)."""
    model = onnx.ModelProto()
    model.CopyFrom(head)
    g = model.graph
    fp16, floats = set(fp16_nodes), float_tensors(head)
    need16, need32, home16 = _needs(g, fp16, floats)
    inits, copies, flushed = _initializers(g, need16, need32)
    init_names = {t.name for t in head.graph.initializer}

    def casts(names: Iterable[str]) -> list[onnx.NodeProto]:
        out = []
        for t in names:
            if t in home16 and t in need32:
                out.append(_cast(_h(t), t, onnx.TensorProto.FLOAT))
            elif t not in home16 and t in need16 and t not in init_names:
                out.append(_cast(t, _h(t), onnx.TensorProto.FLOAT16))
        return out

    nodes = casts(i.name for i in g.input)
    for n in g.node:
        outputs = _retype(n, floats) if n.name in fp16 else list(n.output)
        nodes.append(n)
        nodes.extend(casts(outputs))
    n_casts = sum(1 for n in nodes if n.name.startswith("fp16/cast/"))
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    return check_and_infer(model), {"fp16_nodes": len(fp16), "casts": n_casts, "fp16_initializers": copies,
                                    "weights_flushed_to_zero": flushed}


# --------------------------------------------------------------------------- the step
def reference_batches(images: Sequence[Any], meta: Any, batch_size: int = 4) -> list[np.ndarray]:
    """``images`` (paths or uint8 HWC RGB) preprocessed by runtime.preprocess in batches."""
    from runtime.preprocess import Preprocessor
    pre = Preprocessor.from_meta(meta)
    return [pre(list(images[i:i + batch_size]))[0] for i in range(0, len(images), batch_size)]


def convert_fp16(trt_onnx: str | Path, images: Sequence[Any], *, out: str | Path | None = None,
                 rules: Fp16Rules | None = None, threads: int = 1, notes: list[str] | None = None
                 ) -> tuple[WrittenGraph, dict[str, Any]]:
    """``model_trt.onnx`` (FP32, with its sidecar) -> ``model_trt_fp16.onnx`` beside it (or ``out``)
    with a sidecar of precision "fp16" recording the rules, the FP32 nodes and why, the I/O
    types and the source graph's sha256. ``images``: reference images for the data-range rule
    (:data:`REFERENCE_IMAGES` of them, spread over the list).
    ValueError when the source is not an FP32 plugin graph or no node can run in FP16."""
    rules = rules or Fp16Rules()
    src = load_fp32_plugin_graph(trt_onnx, "the FP16 conversion", notes)
    out = Path(out) if out is not None else src.path.with_name(FP16_FILE)
    images = list(images)[::max(1, len(images) // REFERENCE_IMAGES)][:REFERENCE_IMAGES]  # spread over the set
    absmax = activation_absmax(src.split.head, reference_batches(images, src.meta), threads) if images else None
    fp16_nodes, fp32 = classify_nodes(src.split.head, rules, src.tail, absmax)
    if not fp16_nodes:
        raise ValueError(f"no node of {src.path.name} can run in FP16 under the rules {rules.sidecar()}: refusing to "
                         f"write an FP32 graph under the FP16 name")
    mixed, counts = to_mixed_precision(src.split.head, fp16_nodes)
    info = {"converter": "export.fp16 (ModelOpt AutoCast rules)", "rules": rules.sidecar(),
            "reference_images": len(images), **counts, "fp32_nodes": fp32}
    return save_variant(mixed, out, src, "fp16", {"mixed_precision": info}), info
