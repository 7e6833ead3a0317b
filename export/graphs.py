"""Graph surgery: the tails appended to the exported network trunk, one function per tail.

The trunk is the PyTorch model exported once: ``images`` float32 [B, 3, H, W] -> ``loc`` float32
[B, N, 4] (SSD regression, encoded with variances) and ``conf`` float32 [B, N, C + 1] (logits,
column 0 = background). Everything after it is written here, by hand, with onnx-graphsurgeon, so
every op and every attribute of the deployed postprocess is visible in one place:

* :func:`add_raw_tail`        -> ``boxes`` [B, N, 4] normalised xyxy, ``scores`` [B, N, C + 1] softmax
                                 (the same numbers as ``distill.postprocess.decode_outputs``).
* :func:`add_plugin_inputs_tail` -> the inputs of TensorRT's EfficientNMS_TRT in fused box decoder
                                 mode: deltas ``loc * variances`` (the plugin applies none) and the
                                 softmax scores without the background column.
* :func:`insert_efficient_nms` -> the plugin node itself, every attribute written out.
* :func:`add_onnx_nms_tail`   -> the same four outputs as the plugin from standard ONNX ops
                                 (NonMaxSuppression, TopK, GatherND, ScatterND), runnable by ONNX
                                 Runtime, with the semantics of ``distill.postprocess``.

and one head, put in front of any finished graph (float or INT8):

* :func:`add_uint8_input_head` -> ``images`` uint8 [B, H, W, 3] RGB pixels; transpose, cast and
                                 ``(p / 255 - mean) / std`` inside the graph (sidecar input_format
                                 "uint8_nhwc"), ``runtime.preprocess``'s numbers up to float rounding.

RefineDet (``HeadSpec`` family "refinedet": the trunk's loc [B, N, 8] / conf [B, N, C + 3] pack ODM then
ARM heads) gets the same tails with the same outputs: the ARM decode of the tiled anchors (the refined
anchors, per image) and negative anchor filtering (object scores 0 where the ARM background probability
is > theta) are nodes of each tail, so a filtered anchor's raw ``scores`` row is [s_0, 0, ..., 0] (the ODM's
background probability, then zeros: it sums to s_0, as in ``distill.postprocess.decode_outputs``) and no
runtime needs RefineDet code. For the plugin see :data:`PLUGIN_BOXES`.

Node names of each tail share a prefix (``decode/``, ``plugin_inputs/``, ``nms/``), which is how
the INT8 quantizer finds the float tail to leave alone.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from runtime.outputs import NMS_OUTPUTS, RAW_OUTPUTS
from runtime.trt_reference import PLUGIN_NAME

# onnx.checker rejects unknown ops of the default domain, so the plugin node lives in its own
# domain. TensorRT's ONNX parser dispatches on op_type alone (unknown op types go to the plugin
# registry by name + ``plugin_version`` + ``plugin_namespace``), so the domain does not matter to it.
PLUGIN_DOMAIN = "trt.plugins"
TAIL_PREFIXES = {"raw": "decode/", "trt": "plugin_inputs/", "nms": "nms/"}
INPUT_PREFIX = "input/"  # the uint8 input head's nodes
# Same exp() overflow guard as distill.models.box_coder (log(1000 / 16)).
WH_CLAMP = math.log(1000.0 / 16)


class _Tail:
    """Adds nodes named ``<prefix><op>_<i>`` with fresh output variables to a gs.Graph."""

    def __init__(self, graph: gs.Graph, prefix: str):
        self.graph, self.prefix, self.count = graph, prefix, 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}{what}_{self.count}"

    def const(self, what: str, values) -> gs.Constant:
        return gs.Constant(self.name(what), np.asarray(values))

    def op(self, op: str, inputs: Sequence, attrs: dict | None = None, n_out: int = 1,
           out_names: Sequence[str] | None = None, domain: str | None = None):
        name = self.name(op.lower())
        outs = [gs.Variable(out_names[i] if out_names else f"{name}:{i}") for i in range(n_out)]
        self.graph.nodes.append(gs.Node(op=op, name=name, attrs=dict(attrs or {}), inputs=list(inputs),
                                        outputs=outs, domain=domain))
        return outs[0] if n_out == 1 else outs


def _tensor(graph: gs.Graph, name: str) -> gs.Variable:
    tensors = graph.tensors()
    if name not in tensors:
        raise ValueError(f"the graph has no tensor {name!r}; tensors: {sorted(tensors)[:20]} ...")
    return tensors[name]


def _set_output(var: gs.Variable, name: str, dtype, shape) -> gs.Variable:
    var.name, var.dtype, var.shape = name, dtype, list(shape)
    return var


def _nms_output_types(batch: int | str, k: int) -> tuple[list[type], list[list[int | str]]]:
    """(dtypes, shapes) of the four NMS outputs in NMS_OUTPUTS order (DESIGN.md "Graph outputs")."""
    return [np.int32, np.float32, np.float32, np.int32], [[batch, 1], [batch, k, 4], [batch, k], [batch, k]]


def _check_anchors(anchors: np.ndarray) -> np.ndarray:
    a = np.asarray(anchors, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"anchors must be [N, 4] normalised cxcywh, got shape {a.shape}")
    return a


SSD, REFINEDET = "ssd", "refinedet"
# How the TensorRT graph hands RefineDet's boxes to EfficientNMS_TRT (``HeadSpec.plugin_boxes``):
# "anchors": fused box decoder mode, box_coding 1: the ODM deltas plus the refined anchors of each image as
#     the plugin's anchors input, [B, N, 4] computed in the graph. The plugin's README ("Anchors Input")
#     allows a batch dimension of ``batch_size`` "in case each image has different anchors -- such as in the
#     box refinement NMS of FasterRCNN's second stage", which is RefineDet's two-step regression; the plugin
#     then decodes only the <= 4096 candidates that pass its score filter, and the graph keeps the SSD
#     graph's form (three plugin inputs, box_coding 1), so every TensorRT path, the FP16 / Q/DQ variants and
#     the CPU reference treat both families alike. The default.
# "decoded": standard mode, box_coding 0: the ODM boxes are decoded in the graph (the raw graph's ``boxes``,
#     the same ops) for all N anchors and the plugin gets corners, no anchors input.
# Measured on the plugin's CPU reference (runtime.trt_reference; RefineDet-MobileNetV2, 320 px, 20 classes,
# 6375 anchors, score 0.01, K 200; 1 thread): identical num_detections / scores / classes at batch 1 and 8, boxes
# within 1.2e-7 (float rounding of the decode: numpy vs ONNX Runtime), and the same time (batch 1: 59.5 vs
# 57.2 ms, batch 8: 547 vs 546 ms, p50; ONNX Runtime's part 21 ms in both: the extra ODM decode over all anchors
# costs nothing measurable on a CPU). So the choice rests on the GPU side: "anchors" decodes only the
# candidates and keeps one graph form for both families. tests/export/test_refinedet_export.py checks the
# equality on every run.
PLUGIN_BOXES = ("anchors", "decoded")


@dataclass(frozen=True)
class HeadSpec:
    """How the trunk's ``loc`` / ``conf`` are read. ``family`` "ssd": loc [B, N, 4], conf [B, N, C + 1].
    "refinedet": the packed heads of ``distill.models.refinedet`` (loc [B, N, 8] = ODM then ARM offsets, conf
    [B, N, C + 3] = ODM logits then ARM logits), decoded in two steps with negative anchor filtering:
    ``theta`` (an anchor whose ARM background probability is > theta gets zero object scores; 1.0 filters
    nothing), ``two_step`` (False: ODM offsets against the tiled anchors), ``plugin_boxes`` (one of
    :data:`PLUGIN_BOXES`)."""

    family: str = SSD
    theta: float = 1.0
    two_step: bool = True
    plugin_boxes: str = "anchors"

    def __post_init__(self):
        if self.family not in (SSD, REFINEDET):
            raise ValueError(f"detector family must be {SSD!r} or {REFINEDET!r}, got {self.family!r}")
        if self.plugin_boxes not in PLUGIN_BOXES:
            raise ValueError(f"--refinedet-plugin-boxes must be one of {list(PLUGIN_BOXES)}, got {self.plugin_boxes!r}")

    @classmethod
    def of(cls, model, plugin_boxes: str = "anchors") -> HeadSpec:
        """The spec of a PyTorch detector (``model.family``, its box coder's theta / two_step)."""
        family = getattr(model, "family", SSD)
        if family != REFINEDET:
            return cls(SSD)
        coder = model.box_coder
        return cls(REFINEDET, float(coder.theta), bool(coder.two_step), plugin_boxes)

    @property
    def plugin_anchors(self) -> str:
        """The plugin's anchors input: "constant" [1, N, 4], "per_image" [B, N, 4] (``nms_anchors``), "none"."""
        if self.family == SSD or (self.plugin_boxes == "anchors" and not self.two_step):
            return "constant"
        return "per_image" if self.plugin_boxes == "anchors" else "none"

    def sidecar(self) -> dict[str, object]:
        """The sidecar's ``extra`` entries of this head: the family, and RefineDet's decode settings."""
        if self.family == SSD:
            return {"family": SSD}
        return {"family": REFINEDET, "theta": self.theta, "two_step": self.two_step,
                "plugin_boxes": self.plugin_boxes}


class _RefineDetTensors(NamedTuple):
    deltas: gs.Variable       # ODM offsets x variances [B, N, 4]
    anchor_xy: gs.Tensor      # refined anchors' centres [B, N, 2] (tiled ones [1, N, 2] without two_step)
    anchor_wh: gs.Tensor      # their sizes
    scores: gs.Variable       # softmax of the ODM logits [B, N, C + 1], object columns 0 where filtered
    object_scores: gs.Variable  # scores[..., 1:] [B, N, C]


def _refinedet_heads(t: _Tail, loc_t, conf_t, a: np.ndarray, variances: Sequence[float], head: HeadSpec,
                     wh_clamp: float) -> _RefineDetTensors:
    """RefineDet's packed heads -> what both of its tails need, op for op ``TwoStepBoxCoder.decode_heads``:
    the ARM decode of the tiled anchors ``a`` [N, 4] cxcywh to corners and back to cxcywh (the refined
    anchors, per image), the ODM softmax, and negative anchor filtering (``softmax(arm)[..., 0] <= theta``
    keeps an anchor; the others' object scores are multiplied by 0)."""
    if not (loc_t.shape and loc_t.shape[-1] == 8 and conf_t.shape and isinstance(conf_t.shape[-1], int)):
        raise ValueError(f"RefineDet heads need loc [B, N, 8] and conf [B, N, C + 3] with static C, got "
                         f"{loc_t.shape} and {conf_t.shape}")
    c1 = int(conf_t.shape[-1]) - 2                                           # C + 1
    v = t.const("variances", np.asarray(variances, np.float32))
    a_xy, a_wh = t.const("anchor_xy", a[None, :, :2].copy()), t.const("anchor_wh", a[None, :, 2:].copy())
    deltas = t.op("Mul", [_slice_last(t, loc_t, 0, 4), v])
    if head.two_step:
        arm = t.op("Mul", [_slice_last(t, loc_t, 4, 8), v])
        lo, hi = _corners(t, *_decode_center_size(t, arm, a_xy, a_wh, wh_clamp))
        a_xy = t.op("Mul", [t.op("Add", [lo, hi]), t.const("half", np.array([0.5], np.float32))])
        a_wh = t.op("Sub", [hi, lo])
    scores = t.op("Softmax", [_slice_last(t, conf_t, 0, c1)], {"axis": -1})
    obj = _slice_last(t, scores, 1, c1)
    if head.theta < 1.0:
        p_bg = _slice_last(t, t.op("Softmax", [_slice_last(t, conf_t, c1, c1 + 2)], {"axis": -1}), 0, 1)
        keep = t.op("LessOrEqual", [p_bg, t.const("theta", np.array([head.theta], np.float32))])
        obj = t.op("Mul", [obj, t.op("Cast", [keep], {"to": onnx.TensorProto.FLOAT})])
        scores = t.op("Concat", [_slice_last(t, scores, 0, 1), obj], {"axis": -1})
    return _RefineDetTensors(deltas, a_xy, a_wh, scores, obj)


def _num_scores(conf_t, head: HeadSpec | None) -> int | None:
    """C + 1, the raw graph's score columns, from the trunk's conf (RefineDet's carries 2 ARM logits more)."""
    c = conf_t.shape[-1] if conf_t.shape else None
    return c - 2 if isinstance(c, int) and head is not None and head.family == REFINEDET else c


def _slice_last(t: _Tail, x, start: int, end: int):
    """``x[..., start:end]`` of a [B, N, D] tensor."""
    i64 = lambda v: np.array([v], np.int64)  # noqa: E731
    return t.op("Slice", [x, t.const("s", i64(start)), t.const("e", i64(end)), t.const("ax", i64(2))])


def _decode_center_size(t: _Tail, d, a_xy, a_wh, wh_clamp: float):
    """Deltas ``d`` [B, N, 4] (already times the variances) against anchors (``a_xy``, ``a_wh``: constants
    [1, N, 2] or per-image tensors [B, N, 2]) -> (``cxcy``, ``wh``) [B, N, 2] each, op for op
    ``BoxCoder.decode``: ``cxcy = a_xy + d_xy * a_wh``, ``wh = a_wh * exp(min(d_wh, wh_clamp))``."""
    d_wh = t.op("Min", [_slice_last(t, d, 2, 4), t.const("wh_clamp", np.array([wh_clamp], np.float32))])
    cxcy = t.op("Add", [a_xy, t.op("Mul", [_slice_last(t, d, 0, 2), a_wh])])
    return cxcy, t.op("Mul", [a_wh, t.op("Exp", [d_wh])])


def _corners(t: _Tail, cxcy, wh) -> tuple:
    """(cxcy, wh) [B, N, 2] -> (x1y1, x2y2) [B, N, 2]: ``cxcy -/+ wh / 2``."""
    half = t.op("Mul", [wh, t.const("half", np.array([0.5], np.float32))])
    return t.op("Sub", [cxcy, half]), t.op("Add", [cxcy, half])


def add_raw_tail(graph: gs.Graph, anchors: np.ndarray, variances: Sequence[float], *, loc: str = "loc",
                 conf: str = "conf", wh_clamp: float = WH_CLAMP, head: HeadSpec | None = None) -> gs.Graph:
    """Trunk -> raw graph: ``boxes`` float32 [B, N, 4] (decoded, normalised xyxy) and ``scores``
    float32 [B, N, C + 1] (softmax, column 0 = background). Same arithmetic, op for op, as
    ``BoxCoder.decode`` + ``softmax``: ``cxcy = a_xy + (loc_xy * v_xy) * a_wh``,
    ``wh = a_wh * exp(min(loc_wh * v_wh, wh_clamp))``, corners ``cxcy -/+ wh / 2``.
    ``anchors``: float32 [N, 4] normalised cxcywh. ``head``: a RefineDet :class:`HeadSpec` reads the
    packed ARM + ODM heads instead (:func:`_refinedet_heads`: boxes against the refined anchors, negative
    anchor filtering on the scores). Returns the graph (outputs replaced)."""
    a = _check_anchors(anchors)
    n = a.shape[0]
    t = _Tail(graph, TAIL_PREFIXES["raw"])
    loc_t, conf_t = _tensor(graph, loc), _tensor(graph, conf)
    if head is not None and head.family == REFINEDET:
        h = _refinedet_heads(t, loc_t, conf_t, a, variances, head, wh_clamp)
        d, a_xy, a_wh, scores = h.deltas, h.anchor_xy, h.anchor_wh, h.scores
    else:
        d = t.op("Mul", [loc_t, t.const("variances", np.asarray(variances, np.float32))])
        a_xy, a_wh = t.const("anchor_xy", a[None, :, :2].copy()), t.const("anchor_wh", a[None, :, 2:].copy())
        scores = t.op("Softmax", [conf_t], {"axis": -1})
    boxes = t.op("Concat", list(_corners(t, *_decode_center_size(t, d, a_xy, a_wh, wh_clamp))), {"axis": -1})
    batch = graph.inputs[0].shape[0] if graph.inputs and graph.inputs[0].shape else "batch"
    num_cls = _num_scores(conf_t, head)
    graph.outputs = [_set_output(boxes, RAW_OUTPUTS[0], np.float32, [batch, n, 4]),
                     _set_output(scores, RAW_OUTPUTS[1], np.float32, [batch, n, num_cls])]
    return graph.cleanup().toposort()


def add_plugin_inputs_tail(graph: gs.Graph, variances: Sequence[float], *, loc: str = "loc", conf: str = "conf",
                           wh_clamp: float = WH_CLAMP, head: HeadSpec | None = None,
                           anchors: np.ndarray | None = None) -> gs.Graph:
    """Trunk -> the tensor inputs of EfficientNMS_TRT in fused box decoder mode (box_coding 1):

    ``nms_deltas`` float32 [B, N, 4] = ``loc * variances`` (a ``Mul``; the plugin applies no
    variances), log-sizes clamped like ``BoxCoder`` (``Min``, +inf on x/y so they pass unchanged);
    ``nms_scores`` float32 [B, N, C] = ``softmax(conf)[..., 1:]`` (background sliced off, so the
    plugin's class output is the 0-based object class and ``background_class = -1``).

    A RefineDet ``head`` (needs ``anchors``, the tiled [N, 4] cxcywh) reads the packed heads
    (:func:`_refinedet_heads`): ``nms_deltas`` are the ODM's, ``nms_scores`` carry the negative anchor
    filtering, and per ``head.plugin_anchors`` the graph also outputs ``nms_anchors`` float32 [B, N, 4]
    (the refined anchors, cxcywh: "per_image") or, instead of deltas, ``nms_boxes`` float32 [B, N, 4]
    (decoded corners, for the plugin's standard mode: "none").
    """
    t = _Tail(graph, TAIL_PREFIXES["trt"])
    loc_t, conf_t = _tensor(graph, loc), _tensor(graph, conf)
    num_cls = _num_scores(conf_t, head)
    if not isinstance(num_cls, int):
        raise ValueError("the trunk's conf output needs a static class dimension")
    clamp = lambda: t.const("clamp", np.array([np.inf, np.inf, wh_clamp, wh_clamp], np.float32))  # noqa: E731
    batch, n = graph.inputs[0].shape[0], loc_t.shape[1]
    extra: list[gs.Variable] = []
    if head is not None and head.family == REFINEDET:
        if anchors is None:
            raise ValueError("RefineDet's plugin inputs need the tiled anchors [N, 4]")
        h = _refinedet_heads(t, loc_t, conf_t, _check_anchors(anchors), variances, head, wh_clamp)
        s = h.object_scores
        if head.plugin_anchors == "none":
            corners = _corners(t, *_decode_center_size(t, h.deltas, h.anchor_xy, h.anchor_wh, wh_clamp))
            d = _set_output(t.op("Concat", list(corners), {"axis": -1}), "nms_boxes", np.float32, [batch, n, 4])
        else:
            d = _set_output(t.op("Min", [h.deltas, clamp()]), "nms_deltas", np.float32, [batch, n, 4])
        if head.plugin_anchors == "per_image":
            extra = [_set_output(t.op("Concat", [h.anchor_xy, h.anchor_wh], {"axis": -1}), "nms_anchors",
                                 np.float32, [batch, n, 4])]
    else:
        d = t.op("Mul", [loc_t, t.const("variances", np.asarray(variances, np.float32))])
        d = _set_output(t.op("Min", [d, clamp()]), "nms_deltas", np.float32, [batch, n, 4])
        s = _slice_last(t, t.op("Softmax", [conf_t], {"axis": -1}), 1, num_cls)
    graph.outputs = [d, _set_output(s, "nms_scores", np.float32, [batch, n, num_cls - 1]), *extra]
    return graph.cleanup().toposort()


@dataclass
class PluginSpec:
    """The EfficientNMS_TRT node attributes, exactly as written into the graph."""

    score_threshold: float
    iou_threshold: float
    max_output_boxes: int
    background_class: int = -1
    score_activation: int = 0
    class_agnostic: int = 0
    box_coding: int = 1
    plugin_version: str = "1"
    plugin_namespace: str = ""

    def attrs(self) -> dict[str, object]:
        return {"score_threshold": float(self.score_threshold), "iou_threshold": float(self.iou_threshold),
                "max_output_boxes": int(self.max_output_boxes), "background_class": int(self.background_class),
                "score_activation": int(self.score_activation), "class_agnostic": int(self.class_agnostic),
                "box_coding": int(self.box_coding), "plugin_version": str(self.plugin_version),
                "plugin_namespace": str(self.plugin_namespace)}

    @classmethod
    def from_nms(cls, nms, plugin_version: str = "1", head: HeadSpec | None = None) -> "PluginSpec":
        """From a runtime.metadata.NMSConfig (thresholds, K, class_agnostic); box_coding 0 (corners) when
        ``head`` hands the plugin decoded boxes (standard mode), else 1 (center-size, fused decoder)."""
        coding = 0 if head is not None and head.plugin_anchors == "none" else 1
        return cls(score_threshold=float(nms.score_threshold), iou_threshold=float(nms.iou_threshold),
                   max_output_boxes=int(nms.max_detections), class_agnostic=int(bool(nms.class_agnostic)),
                   box_coding=coding, plugin_version=str(plugin_version))


def insert_efficient_nms(graph: gs.Graph, anchors: np.ndarray | None, spec: PluginSpec, *,
                         deltas: str = "nms_deltas", scores: str = "nms_scores", domain: str = PLUGIN_DOMAIN,
                         head: HeadSpec | None = None) -> gs.Graph:
    """Append the EfficientNMS_TRT node and make its four outputs the graph outputs:
    ``num_detections`` int32 [B, 1], ``detection_boxes`` float32 [B, K, 4] (normalised xyxy),
    ``detection_scores`` float32 [B, K], ``detection_classes`` int32 [B, K].

    Inputs: ``deltas`` [B, N, 4], ``scores`` [B, N, C] and the anchors (``box_coding = 1``: both in
    center-size coding) as a constant third input float32 [1, N, 4] normalised cxcywh. A RefineDet
    ``head`` (:func:`add_plugin_inputs_tail`'s outputs) gives per its ``plugin_anchors`` the computed
    ``nms_anchors`` [B, N, 4] as the third input, or ``nms_boxes`` (corners) and no third input
    (standard mode; ``spec.box_coding`` must then be 0).
    """
    mode = head.plugin_anchors if head is not None else "constant"
    if mode == "none":
        if spec.box_coding != 0:
            raise ValueError("decoded boxes (standard mode) need box_coding 0 (corners)")
        inputs = [_tensor(graph, "nms_boxes"), _tensor(graph, scores)]
    elif mode == "per_image":
        inputs = [_tensor(graph, deltas), _tensor(graph, scores), _tensor(graph, "nms_anchors")]
    else:
        a = _check_anchors(anchors)
        inputs = [_tensor(graph, deltas), _tensor(graph, scores), gs.Constant("nms_anchors", a[None].copy())]
    batch, k = graph.inputs[0].shape[0], int(spec.max_output_boxes)
    outs = [gs.Variable(name, dtype, shape) for name, dtype, shape
            in zip(NMS_OUTPUTS, *_nms_output_types(batch, k))]
    graph.nodes.append(gs.Node(op=PLUGIN_NAME, name="nms/efficient_nms", attrs=spec.attrs(),
                               inputs=inputs, outputs=outs, domain=domain))
    graph.outputs = outs
    return graph.cleanup().toposort()


def add_onnx_nms_tail(graph: gs.Graph, nms, *, boxes: str = "boxes", scores: str = "scores") -> gs.Graph:
    """Raw graph -> NMS graph with the plugin's four outputs, from standard ONNX ops.

    Steps (``distill.postprocess.select_detections``, EfficientNMS semantics):
    1. object scores ``scores[..., 1:]`` flattened to (anchor, class) pairs [B, N*C];
    2. pairs with ``score >= score_threshold`` are candidates; the rest get -1. The threshold is
       applied here because ONNX NonMaxSuppression's own ``score_threshold`` is strict (``>``);
       NonMaxSuppression then gets -0.5, which keeps every candidate and drops every filler;
    3. ``TopK`` keeps the ``pre_nms_top_k`` best pairs per image (or all N*C if fewer);
    4. NonMaxSuppression per class (scores [B, C, k], a candidate scores -1 outside its own class)
       or over one class when ``class_agnostic``; it suppresses IoU ``>`` iou_threshold, like
       torchvision (the plugin suppresses ``>=``; equal IoU is measure-zero on real boxes);
    5. the K = ``max_detections`` best survivors by score; rows past ``num_detections`` are 0.
    """
    b_t, s_t = _tensor(graph, boxes), _tensor(graph, scores)
    if not (s_t.shape and isinstance(s_t.shape[1], int) and isinstance(s_t.shape[2], int)):
        raise ValueError(f"the raw graph needs static N and C in scores, got shape {s_t.shape}")
    n, c = int(s_t.shape[1]), int(s_t.shape[2]) - 1
    k_pre = min(int(nms.pre_nms_top_k), n * c)
    k_out = int(nms.max_detections)
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    f32 = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731
    t = _Tail(graph, TAIL_PREFIXES["nms"])

    obj = t.op("Slice", [s_t, t.const("s", i64(1)), t.const("e", i64(c + 1)), t.const("ax", i64(2))])
    flat = t.op("Reshape", [obj, t.const("shape", i64(0, -1))])                       # [B, N*C]
    keep = t.op("GreaterOrEqual", [flat, t.const("score_threshold", f32(nms.score_threshold))])
    masked = t.op("Where", [keep, flat, t.const("filler", f32(-1.0))])
    cand_scores, cand_idx = t.op("TopK", [masked, t.const("k_pre", i64(k_pre))],
                                 {"axis": 1, "largest": 1, "sorted": 1}, n_out=2)     # [B, k]
    anchor_idx = t.op("Div", [cand_idx, t.const("C", i64(c))])
    cand_cls = t.op("Mod", [cand_idx, t.const("C", i64(c))])
    cand_boxes = t.op("GatherND", [b_t, t.op("Unsqueeze", [anchor_idx, t.const("ax", i64(-1))])],
                      {"batch_dims": 1})                                              # [B, k, 4]
    scores_1 = t.op("Unsqueeze", [cand_scores, t.const("ax", i64(1))])                # [B, 1, k]
    if nms.class_agnostic:
        nms_scores = scores_1
    else:
        own = t.op("Equal", [t.op("Unsqueeze", [cand_cls, t.const("ax", i64(1))]),
                             t.const("classes", np.arange(c, dtype=np.int64).reshape(1, c, 1))])
        nms_scores = t.op("Where", [own, scores_1, t.const("filler", f32(-1.0))])     # [B, C, k]
    selected = t.op("NonMaxSuppression", [cand_boxes, nms_scores, t.const("max_per_class", i64(k_out)),
                                          t.const("iou_threshold", f32(nms.iou_threshold)),
                                          t.const("keep_all", f32(-0.5))], {"center_point_box": 0})
    sel_b = t.op("Gather", [selected, t.const("col", i64(0))], {"axis": 1})            # [M, 1]
    sel_box = t.op("Gather", [selected, t.const("col", i64(2))], {"axis": 1})          # [M, 1]
    where = t.op("Concat", [sel_b, sel_box], {"axis": 1})                              # [M, 2]
    kept = t.op("ScatterND", [t.op("ConstantOfShape", [t.op("Shape", [cand_scores])],
                                   {"value": onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [-1.0])}),
                              where, t.op("GatherND", [cand_scores, where])])        # [B, k], -1 = dropped
    if k_out > k_pre:  # fewer candidates than output rows: pad so TopK can return K rows
        pad = k_out - k_pre
        kept = t.op("Pad", [kept, t.const("pads", i64(0, 0, 0, pad)), t.const("v", f32(-1.0))])
        cand_cls = t.op("Pad", [cand_cls, t.const("pads", i64(0, 0, 0, pad)), t.const("v", i64(0))])
        cand_boxes = t.op("Pad", [cand_boxes, t.const("pads", i64(0, 0, 0, 0, pad, 0)), t.const("v", f32(0.0))])
    top_scores, pos = t.op("TopK", [kept, t.const("K", i64(k_out))], {"axis": 1, "largest": 1, "sorted": 1},
                           n_out=2)                                                   # [B, K]
    valid = t.op("Greater", [top_scores, t.const("half", f32(-0.5))])
    num = t.op("ReduceSum", [t.op("Cast", [valid], {"to": onnx.TensorProto.INT32}), t.const("ax", i64(1))],
               {"keepdims": 1})
    num = t.op("Identity", [num])
    det_scores = t.op("Where", [valid, top_scores, t.const("zero", f32(0.0))])
    det_boxes = t.op("GatherND", [cand_boxes, t.op("Unsqueeze", [pos, t.const("ax", i64(-1))])], {"batch_dims": 1})
    det_boxes = t.op("Where", [t.op("Unsqueeze", [valid, t.const("ax", i64(-1))]), det_boxes,
                               t.const("zero", f32(0.0))])
    det_cls = t.op("GatherElements", [cand_cls, pos], {"axis": 1})
    det_cls = t.op("Cast", [t.op("Where", [valid, det_cls, t.const("zero", i64(0))])], {"to": onnx.TensorProto.INT32})
    batch = graph.inputs[0].shape[0]
    graph.outputs = [_set_output(var, name, dtype, shape) for var, name, dtype, shape
                     in zip((num, det_boxes, det_scores, det_cls), NMS_OUTPUTS, *_nms_output_types(batch, k_out))]
    return graph.cleanup().toposort()


def add_uint8_input_head(graph: gs.Graph, mean: Sequence[float], std: Sequence[float]) -> gs.Graph:
    """Graph taking ``images`` float32 [B, 3, H, W] (normalised) -> the same graph taking ``images``
    uint8 [B, H, W, 3] RGB pixels: ``Transpose`` (on the bytes, 4x less to move), ``Cast`` to
    float32, then ``(p / 255 - mean) / std`` as one depthwise 1x1 ``Conv`` (weight
    ``1 / (255 std_c)``, bias ``-mean_c / std_c``): ``runtime.preprocess.normalize`` up to float
    rounding (a few 1e-7). One per-channel op, because ONNX Runtime moves the transposes of an INT8
    graph into NHWC and there an elementwise ``Sub`` / ``Div`` with per-channel constants becomes a
    broadcast over a trailing axis of 3, which cost 7 ms per 256x256 image (1 thread) where the
    convolution costs a fraction of one. ``mean`` / ``std``: 3 floats each, RGB, 0..1 pixel scale
    (the sidecar's)."""
    if len(graph.inputs) != 1 or graph.inputs[0].dtype != np.float32 or len(graph.inputs[0].shape or ()) != 4:
        raise ValueError(f"the uint8 input head needs one float32 [B, 3, H, W] input, got "
                         f"{[(i.name, i.dtype, i.shape) for i in graph.inputs]}")
    old = graph.inputs[0]
    b, c, h, w = old.shape
    if c != 3:
        raise ValueError(f"the uint8 input head needs 3 (RGB) input channels, got shape {old.shape}")
    m = np.asarray(mean, np.float64).reshape(3)
    s = np.asarray(std, np.float64).reshape(3)
    new = gs.Variable(old.name, np.uint8, [b, h, w, 3])
    old.name = f"{INPUT_PREFIX}normalised"
    t = _Tail(graph, INPUT_PREFIX)
    x = t.op("Cast", [t.op("Transpose", [new], {"perm": [0, 3, 1, 2]})], {"to": onnx.TensorProto.FLOAT})
    weight = t.const("scale", (1.0 / (255.0 * s)).astype(np.float32).reshape(3, 1, 1, 1))
    graph.nodes.append(gs.Node(op="Conv", name=t.name("conv"), attrs={"group": 3, "kernel_shape": [1, 1]},
                               inputs=[x, weight, t.const("shift", (-m / s).astype(np.float32))], outputs=[old]))
    graph.inputs = [new]
    return graph.cleanup().toposort()


def to_model(graph: gs.Graph, *, plugin_domain: str | None = None) -> onnx.ModelProto:
    """gs.Graph -> ModelProto (the trunk's opset), with the plugin domain imported when used."""
    model = gs.export_onnx(graph)
    have = {o.domain for o in model.opset_import}
    if plugin_domain and plugin_domain not in have:
        model.opset_import.append(onnx.helper.make_opsetid(plugin_domain, 1))
    return model


def tail_node_names(model: onnx.ModelProto, prefix: str) -> list[str]:
    """Names of the tail nodes: those named ``prefix*`` and everything downstream of them.

    (Downstream closure, because a simplifier may rename or fuse some of the tail's nodes.)"""
    start = [n for n in model.graph.node if n.name.startswith(prefix)]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    seen, stack = set(), list(start)
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        for o in n.output:
            stack.extend(consumers.get(o, []))
    return [n.name for n in model.graph.node if n.name in seen]


@dataclass
class PluginNodeInfo:
    """What :func:`find_plugin_node` reads back from a graph."""

    node: onnx.NodeProto
    attrs: dict[str, object] = field(default_factory=dict)


def find_plugin_node(model: onnx.ModelProto) -> PluginNodeInfo:
    """The single EfficientNMS_TRT node of ``model`` and its attributes (python values)."""
    nodes = [n for n in model.graph.node if n.op_type == PLUGIN_NAME]
    if len(nodes) != 1:
        raise ValueError(f"expected exactly one {PLUGIN_NAME} node, found {len(nodes)}")
    node = nodes[0]
    attrs = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        attrs[a.name] = v.decode() if isinstance(v, bytes) else v
    return PluginNodeInfo(node, attrs)

