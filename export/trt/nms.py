"""Which NMS an engine runs: the ``EfficientNMS_TRT`` plugin or TensorRT's built-in ``INMSLayer``.

    route     parses                    NMS inside the engine            TensorRT
    plugin    model_trt.onnx (and its   EfficientNMS_TRT v1, an          any, while libnvinfer_plugin
              FP16 / Q/DQ variants)     IPluginV2DynamicExt plugin:      registers it (deprecated, not
                                        deprecated in 10.12 / 11         removed, in 10.12 / 11)
    builtin   model_nms.onnx            INMSLayer: TensorRT's ONNX       >= 8.6 (INMSLayer exists
              (model_nms_trt.onnx when  parser maps ONNX                 since 8.6); FP32 on the strongly
              its candidate TopK is     NonMaxSuppression onto it        typed path, every precision with
              too large for TensorRT)                                    builder flags (8.6 - 10.x)

``--nms auto`` (default) takes the plugin when the TensorRT plugin registry holds the version the
graph names, else the built-in route with a note; ``--nms plugin`` on a TensorRT without it stops
*before parsing* with one line naming ``--nms builtin``. The engine sidecar records the route.

INMSLayer (``network.add_nms(boxes, scores, max_output_boxes_per_class)``; IoU and score
thresholds as scalar tensor inputs 3 and 4; ``bounding_box_format`` CORNER_PAIRS / CENTER_SIZES;
``topk_box_limit``) returns *selected indices* ``[M, 3]`` (batch, class, box) and a count -- not
the plugin's four outputs. ``model_nms.onnx`` (:func:`export.graphs.add_onnx_nms_tail`) already is
the graph that turns those indices into the same four outputs: candidate TopK, NonMaxSuppression
(which TensorRT's ONNX parser implements with ``add_nms``, CORNER_PAIRS from
``center_point_box = 0``, default ``topk_box_limit``), then GatherND / ScatterND / TopK / Where to
fixed-K ``num_detections`` int32 [B, 1], ``detection_boxes`` [B, K, 4], ``detection_scores``
[B, K], ``detection_classes`` int32 [B, K]. So the route parses that graph. TensorRT limits that
shape it (TensorRT operator docs, onnx-tensorrt operator matrix): a TopK ``K`` must be <= 3840,
and INMSLayer considers at most 5000 candidates per image (2000 on SM 5.3 / 6.2: Jetson Nano,
TX2). The candidate TopK of ``model_nms.onnx`` keeps ``min(pre_nms_top_k, N * C)`` pairs
(``pre_nms_top_k`` defaults to the plugin's 4096); when that exceeds the limit the route writes
``model_nms_trt.onnx`` from ``model_raw.onnx`` with the candidates capped, and records the cap.

Known differences with the plugin (:data:`DIFFERENCES`), measured on CPU by :func:`route_parity`
(the plugin's CPU reference :mod:`runtime.trt_reference` against ONNX Runtime running the
built-in graph).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.trt.dispatch import BuildPath
from export.trt.settings import BuildSettings, read_onnx_meta
from export.trt.sources import EngineSource, variant_sidecar
from runtime.errors import BackendUnavailable, check_choice
from runtime.trt_reference import PLUGIN_NAME, PLUGIN_TOP_K

Log = Callable[[str], None]

ROUTES = ("auto", "plugin", "builtin")
NMS_GRAPH = "model_nms.onnx"
CAPPED_GRAPH = "model_nms_trt.onnx"
RAW_GRAPH = "model_raw.onnx"
TOPK_MAX = 3840          # ITopKLayer: K <= 3840
NMS_LAYER_LIMIT = 5000   # INMSLayer topk_box_limit, most GPUs
NMS_LAYER_LIMIT_SMALL = 2000  # SM 5.3 / 6.2 (Jetson Nano, TX2)
SMALL_SM = ((5, 3), (6, 2))
DIFFERENCES = (
    "IoU: EfficientNMS_TRT suppresses a box at IoU >= iou_threshold, ONNX NonMaxSuppression / INMSLayer at "
    "IoU > iou_threshold (they differ only at exactly equal IoU)",
    f"candidates: the plugin ranks its {PLUGIN_TOP_K} best (box, class) pairs, the built-in graph "
    "min(pre_nms_top_k, N*C) capped at the TensorRT limit; pairs beyond the cap are never kept",
    "ties: equal scores may come out in another order (the plugin's GPU order is unspecified, the "
    "built-in graph ranks with TopK)")


@dataclass(frozen=True)
class NmsRoute:
    """``name``: "plugin" or "builtin"; ``reason``: why; ``registered``: the EfficientNMS_TRT
    versions the TensorRT plugin registry offered (None: unreadable or not asked)."""

    name: str
    reason: str
    registered: list[str] | None = None

    @property
    def plugin(self) -> bool:
        return self.name == "plugin"

    def sidecar(self) -> dict[str, Any]:
        layer = f"{PLUGIN_NAME} (IPluginV2 plugin)" if self.plugin else "INMSLayer (ONNX NonMaxSuppression)"
        return {"name": self.name, "layer": layer, "reason": self.reason, "registered_plugin_versions": self.registered,
                "differences_from_plugin": [] if self.plugin else list(DIFFERENCES)}


def missing_plugin_line(trt_version: str, version: str, registered: list[str] | None) -> str:
    """The one line for a TensorRT whose plugin registry lacks EfficientNMS_TRT ``version``."""
    return (f"TensorRT {trt_version} registers no {PLUGIN_NAME} version {version} (registry: "
            f"{', '.join(registered or []) or 'none'}): rerun with --nms builtin (TensorRT's own INMSLayer, "
            f"built from {NMS_GRAPH})")


def choose_nms_route(requested: str, trt_version: str, registered: list[str] | None, graph: str = "trt",
                     plugin_version: str = "1") -> NmsRoute:
    """The route for ``--nms requested`` (:data:`ROUTES`) on TensorRT ``trt_version`` whose plugin
    registry offers ``registered`` (None: unreadable, the plugin is then assumed present). ``graph``:
    the ``--onnx`` graph's kind ("trt" plugin graph, "nms" ONNX-NMS graph). BackendUnavailable
    (one line) for ``--nms plugin`` without the plugin; ValueError for a plugin build of an NMS graph."""
    check_choice("--nms", requested, ROUTES)
    if graph == "nms":
        if requested == "plugin":
            raise ValueError(f"an ONNX-NMS graph has no {PLUGIN_NAME} node: --nms plugin builds from model_trt.onnx")
        return NmsRoute("builtin", "the --onnx graph is the ONNX-NMS graph", registered)
    has = registered is None or str(plugin_version) in registered
    if requested == "builtin":
        return NmsRoute("builtin", "requested with --nms builtin", registered)
    if not has:
        if requested == "plugin":
            raise BackendUnavailable(missing_plugin_line(trt_version, plugin_version, registered))
        return NmsRoute("builtin", f"note: {missing_plugin_line(trt_version, plugin_version, registered)}; "
                                   f"--nms auto took the built-in route", registered)
    why = (f"{PLUGIN_NAME} v{plugin_version} registered" if registered is not None
           else "plugin registry unreadable: assuming the plugin is there")
    return NmsRoute("plugin", f"{'requested' if requested == 'plugin' else 'auto'}: {why}", registered)


def detect_nms_route(trt: Any, s: BuildSettings, log: Log = print) -> NmsRoute:
    """:func:`choose_nms_route` for the installed ``trt``, asked before anything is parsed."""
    from export.trt.env import registered_plugin_versions
    meta = read_onnx_meta(s.onnx)
    version = str((meta.nms_plugin or {}).get("version", "1"))
    route = choose_nms_route(s.nms, str(trt.__version__), registered_plugin_versions(trt), meta.graph, version)
    if route.reason.startswith("note:"):
        log(f"export.trt: {route.reason}")
    return route


# --------------------------------------------------------------------------- the built-in route's graph
def candidate_limit(compute_capability: tuple[int, int] | None) -> int:
    """The most candidates one image may send to NMS on this GPU (TopK's K and INMSLayer's limit)."""
    small = compute_capability is not None and tuple(compute_capability) in SMALL_SM
    return min(TOPK_MAX, NMS_LAYER_LIMIT_SMALL if small else NMS_LAYER_LIMIT)


def topk_sizes(model: Any) -> list[int | None]:
    """The ``K`` of every TopK node of ``model`` (None where K is not a constant)."""
    from onnx import numpy_helper
    consts = {t.name: t for t in model.graph.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    out: list[int | None] = []
    for n in model.graph.node:
        if n.op_type == "TopK":
            k = consts.get(n.input[1]) if len(n.input) > 1 else None
            out.append(int(numpy_helper.to_array(k).reshape(-1)[0]) if k is not None else None)
    return out


def graph_fits(onnx_path: Path, limit: int) -> tuple[bool, str]:
    """(True, why) when every TopK of the graph has a constant K <= ``limit``."""
    import onnx
    ks = topk_sizes(onnx.load(str(onnx_path), load_external_data=False))
    if not ks or any(k is None or k > limit for k in ks):
        return False, f"{onnx_path.name}: TopK sizes {ks}, TensorRT takes constant K <= {limit} here"
    return True, f"{onnx_path.name}: TopK sizes {ks} <= {limit}"


def write_capped_graph(raw_onnx: Path, limit: int, out: Path) -> Any:
    """``model_raw.onnx`` -> the ONNX-NMS graph with at most ``limit`` candidates per image
    (``nms.pre_nms_top_k = min(pre_nms_top_k, limit)``), checked, simplified, with its sidecar.
    Returns the WrittenGraph."""
    import onnx
    import onnx_graphsurgeon as gs

    from export.artifacts import check_simplify_check, save_with_meta
    from export.graphs import add_onnx_nms_tail, to_model
    from runtime.metadata import read_sidecar, sha256_file
    raw_meta = read_sidecar(raw_onnx)
    nms = dataclasses.replace(raw_meta.nms, pre_nms_top_k=min(int(raw_meta.nms.pre_nms_top_k), int(limit)))
    model = onnx.load(str(raw_onnx))
    ir = model.ir_version
    del model.metadata_props[:]
    graph = to_model(add_onnx_nms_tail(gs.import_onnx(model), nms))
    graph.ir_version = ir
    notes: list[str] = []
    graph = check_simplify_check(graph, True, notes)
    meta = dataclasses.replace(raw_meta, graph="nms", precision="fp32", nms=nms, onnx_sha256=None, extra={
        **raw_meta.extra, "source_sha256": sha256_file(raw_onnx), "candidate_limit": int(limit), "notes": notes})
    return save_with_meta(graph, out, meta)


def _capped_fresh(target: Path, raw_sha: str, limit: int) -> tuple[bool, str]:
    old, why = variant_sidecar(target)
    if old is None:
        return False, why
    if old.extra.get("source_sha256") != raw_sha or old.extra.get("candidate_limit") != limit:
        return False, f"{target.name} was written from another {RAW_GRAPH} or for another candidate limit"
    return True, f"{target.name} matches {RAW_GRAPH} (sha256) and the limit {limit}"


def builtin_source(s: BuildSettings, path: BuildPath, cc: tuple[int, int] | None, log: Log = print) -> EngineSource:
    """The ONNX-NMS graph the built-in route parses: ``--onnx`` itself when it is one, else
    ``model_nms.onnx`` beside it when its TopKs fit this GPU, else ``model_nms_trt.onnx`` (written
    from ``model_raw.onnx``, reused while it matches). ValueError saying what to do otherwise."""
    from runtime.metadata import read_sidecar, sha256_file
    if path.strongly_typed and s.precision != "fp32":
        raise ValueError(f"--nms builtin on the strongly typed path (TensorRT {path.tensorrt}) builds FP32 only: "
                         f"{NMS_GRAPH} has no FP16 / Q/DQ variant; use --nms plugin for --{s.precision}")
    limit = candidate_limit(cc)
    nms_onnx = s.onnx if read_onnx_meta(s.onnx).graph == "nms" else s.onnx.with_name(NMS_GRAPH)
    if nms_onnx.is_file():
        fits, why = graph_fits(nms_onnx, limit)
        if fits:
            log(f"export.trt: built-in NMS route: {why}")
            return EngineSource(nms_onnx, read_onnx_meta(nms_onnx), sha256_file(nms_onnx), f"built-in NMS ({why})")
        log(f"export.trt: {why}")
    raw = nms_onnx.with_name(RAW_GRAPH)
    if not raw.is_file():
        raise ValueError(f"the built-in NMS route needs {NMS_GRAPH} with TopK K <= {limit}, or {RAW_GRAPH} to write "
                         f"{CAPPED_GRAPH}, beside {s.onnx.name}: run python -m export.onnx first")
    target = raw.with_name(CAPPED_GRAPH)
    fresh, why = (False, "--force") if s.force else _capped_fresh(target, sha256_file(raw), limit)
    if fresh:
        log(f"export.trt: {why}: reusing it")
        return EngineSource(target, read_sidecar(target), sha256_file(target), f"reused ({why})")
    log(f"export.trt: writing {CAPPED_GRAPH} (candidates capped at {limit}) because: {why}")
    written = write_capped_graph(raw, limit, target)
    return EngineSource(written.onnx, written.meta, sha256_file(written.onnx), f"written ({why})")


# --------------------------------------------------------------------------- CPU check of the route
def route_parity(trt_onnx: Path, nms_onnx: Path, images: Sequence[Any]) -> dict[str, Any]:
    """The built-in route's graph (ONNX Runtime) against the plugin's CPU reference of
    ``model_trt.onnx`` on ``images``: runtime.parity agreement both ways (same class, IoU >= 0.95),
    detection counts, and the known differences (:data:`DIFFERENCES`)."""
    from export.trt.verify import cpu_reference
    from export.verify_variants import nms_agreement
    from runtime.metadata import read_sidecar
    from runtime.preprocess import preprocess_batch
    meta = read_sidecar(trt_onnx)
    x = preprocess_batch(list(images), meta.input_size, meta.mean, meta.std, meta.resize_mode)[0]
    plugin, builtin = cpu_reference(trt_onnx)(x), cpu_reference(nms_onnx)(x)
    there = nms_agreement(plugin, builtin, meta)
    back = nms_agreement(builtin, plugin, meta)
    return {"plugin_graph": trt_onnx.name, "builtin_graph": nms_onnx.name, "images": int(x.shape[0]),
            "agreement": float(min(there["agreement"], back["agreement"])),
            "plugin_in_builtin": there["agreement"], "builtin_in_plugin": back["agreement"],
            "detections": {"plugin": int(plugin["num_detections"].sum()),
                           "builtin": int(builtin["num_detections"].sum())},
            "differences": list(DIFFERENCES)}
