"""Checkpoint -> ONNX graphs + sidecars, each verified against PyTorch before returning.

    python -m export.onnx --checkpoint runs/kd/best.pt --out exports/kd
    python -m export.onnx --checkpoint runs/kd/best.pt --out exports/kd --int8 --calib-images DIR
    python -m export.onnx --checkpoint runs/kd/best.pt --out exports/kd --fp16 --trt-int8   # + TensorRT 11 graphs
    python -m export.onnx          # the newest runs/**/best.pt -> exports/<run name>
    python -m export.onnx --checkpoint runs/text_kd/best.pt --out exports/text_kd    # text classifier: export.text

SSD / SSD-Lite and RefineDet checkpoints give the same files and checks (RefineDet's ARM decode and negative
anchor filtering are in every graph, export.graphs.HeadSpec; ``--refinedet-plugin-boxes`` picks how its plugin
graph feeds EfficientNMS_TRT, export.graphs.PLUGIN_BOXES).

Files written to ``out`` (dynamic batch, fixed H x W from the checkpoint's ``img_size``), each with
a sidecar ``<name>.json`` (runtime.metadata) mirrored in the ONNX ``metadata_props`` ("fdet_meta";
there ``onnx_sha256`` is null, a file cannot hold its own hash):

    model_raw.onnx   images [B,3,H,W] -> boxes [B,N,4] (normalised xyxy), scores [B,N,C+1] (softmax)
    model_trt.onnx   ... -> EfficientNMS_TRT (fused decoder) -> num_detections [B,1] int32,
                     detection_boxes [B,K,4], detection_scores [B,K], detection_classes [B,K] int32
    model_nms.onnx   the same four outputs from standard ONNX ops (ONNX Runtime on CPU)
    model_int8.onnx  (--int8) ONNX Runtime static INT8 (QDQ, per-channel) of model_raw.onnx; layers left in
                     FP32 where the INT8 mAP gate needs it (export.mixed_precision, named in the sidecar)
    model_int8_nms.onnx (--int8) model_int8.onnx + the ONNX-NMS tail of model_nms.onnx (float decode / NMS)
    model_nms_u8.onnx, model_int8_nms_u8.onnx (--uint8-input) the NMS graphs taking uint8 [B,H,W,3] RGB
                     pixels, normalised inside (sidecar input_format "uint8_nhwc"; export.uint8_input)
    model_trt_int8.onnx (--trt-int8) model_trt.onnx with TensorRT explicit quantization (symmetric Q/DQ,
                     per-channel weights, float plugin tail): TensorRT 11's INT8 (export.qdq_trt)
    model_trt_fp16.onnx (--fp16) model_trt.onnx in mixed precision, plugin inputs FP32: TensorRT 11's
                     FP16 (export.fp16)
    export_report.json  the verification table below, machine-readable

The steps, each usable on its own: :func:`export_graphs` (checkpoint -> the three float graphs),
:func:`export.quantize.quantize_int8` (raw graph -> INT8 graph), :func:`export.verify.verify_exports`
(every graph against PyTorch) and, for INT8, the mAP gate (:func:`export.verify.evaluate_graphs`).
:func:`export_onnx` runs them in that order and writes the report.

Every graph passes ``onnx.checker``, shape inference, onnxslim (the plugin node is added after
simplification, so it is never touched; a failed simplification keeps the plain graph and says
so), then is compared with PyTorch at batch 1 and 3 on validation images (synthetic if none):
raw outputs allclose, NMS outputs equal detection for detection (model_trt.onnx through the CPU
reference of the plugin, runtime.trt_reference). The TensorRT 11 variants are compared with
model_trt.onnx through the same CPU reference (export.verify_variants: detection agreement, bound
by precision). Any failure -> exit status 1.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.artifacts import GRAPH_FILES, WrittenGraph, check_and_infer, check_simplify_check, save_with_meta, simplify
from export.graphs import PLUGIN_DOMAIN
from export.report import format_report, write_report
from export.verify import RAW_ATOL, RAW_RTOL, VERIFY_BATCHES
from runtime.cli import command, fail, ProductParser
from runtime.sizes import as_hw, size_value

Log = Callable[[str], None]


def _silent(_msg: str) -> None:
    pass


def _print(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- what is exported
@dataclass
class ExportSource:
    """What export reads from a checkpoint: the PyTorch model (eval mode, CPU), its sidecar
    metadata, torch anchors float32 [N, 4] normalised cxcywh, box variances, the flat config."""

    path: str
    model_name: str
    model: Any
    meta: Any
    anchors: Any
    variances: tuple[float, ...]
    config: dict[str, Any]
    img_size: int | list[int]   # the config's: S (square) or [H, W]
    num_classes: int

    @property
    def input_hw(self) -> tuple[int, int]:
        """(H, W) of the graphs' fixed input."""
        return as_hw(self.img_size)

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])

    @classmethod
    def load(cls, checkpoint: str | os.PathLike[str]) -> ExportSource:
        """Read a checkpoint file (or run folder); ValueError when it cannot fix the input size."""
        from distill.checkpoint import Checkpoint, meta_from_checkpoint
        ck = Checkpoint.load(checkpoint)
        cfg = ck.flat_config()
        if "img_size" not in cfg:
            raise ValueError(f"checkpoint {checkpoint} has no config.img_size: cannot fix the input size")
        img_size = size_value(cfg["img_size"], f"checkpoint {checkpoint}: config img_size")
        model = ck.build_model()
        return cls(path=str(ck.path), model_name=ck.model_name, model=model, meta=meta_from_checkpoint(ck),
                   anchors=model.anchors(as_hw(img_size)), variances=tuple(model.box_coder.variances), config=cfg,
                   img_size=img_size, num_classes=int(ck.num_classes))


@dataclass
class ExportArtifacts:
    """What :func:`export_graphs` wrote (and :func:`export.quantize.quantize_int8` adds to):
    graph name -> written file, and per-graph notes for the report."""

    out_dir: Path
    graphs: dict[str, WrittenGraph]
    notes: dict[str, list[str]]
    plugin: Any
    plugin_domain: str

    def paths(self) -> dict[str, Path]:
        return {g: w.onnx for g, w in self.graphs.items()}


def check_graph_options(opset: int, plugin_domain: str) -> None:
    """ValueError unless ``opset`` and ``plugin_domain`` can be exported."""
    if not 13 <= int(opset) <= 20:
        raise ValueError(f"--opset must be in 13..20 (Softmax over the last axis, ReduceSum with axes input), "
                         f"got {opset}")
    if plugin_domain and not all(part.isidentifier() for part in plugin_domain.split(".")):
        raise ValueError(f"--plugin-domain must be '' or a dotted name like 'trt.plugins', got {plugin_domain!r}")


# --------------------------------------------------------------------------- building blocks
def export_trunk(model: Any, img_size: int | Sequence[int], opset: int) -> Any:
    """The PyTorch model alone: ``images`` [B,3,H,W] (``img_size``: S or (H, W)) -> ``loc`` [B,N,4], ``conf``
    [B,N,C+1] (a ModelProto)."""
    import onnx
    import torch
    buf = io.BytesIO()
    x = torch.zeros(2, 3, *as_hw(img_size))
    dyn = {"images": {0: "batch"}, "loc": {0: "batch"}, "conf": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # dynamo=False: the TorchScript-based exporter needs no onnxscript and handles these
        # plain conv nets with a dynamic batch dimension well.
        torch.onnx.export(model.eval(), (x,), buf, dynamo=False, input_names=["images"], output_names=["loc", "conf"],
                          dynamic_axes=dyn, opset_version=opset, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _to_model(graph: Any, ir_version: int, plugin_domain: str | None = None) -> Any:
    from export.graphs import to_model
    m = to_model(graph, plugin_domain=plugin_domain)
    m.ir_version = ir_version
    return m


def _gs(model: Any) -> Any:
    import onnx_graphsurgeon as gs
    return gs.import_onnx(model)


def _without_metadata(model: Any) -> Any:
    import onnx
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    del plain.metadata_props[:]
    return plain


def _meta_factory(src: ExportSource, opset: int, head: Any) -> Callable[..., Any]:
    """``meta_for(graph, nms=None, nms_plugin=None, extra=None)``: the sidecar of one fp32 graph."""
    from runtime.metadata import library_versions
    common = {"checkpoint": src.path, "opset": opset, "num_anchors": src.num_anchors,
              "variances": list(src.variances), **head.sidecar()}
    versions = library_versions()

    def meta_for(graph: str, nms: Any = None, nms_plugin: dict | None = None, extra: dict | None = None) -> Any:
        return dataclasses.replace(src.meta, graph=graph, precision="fp32", nms=nms or src.meta.nms,
                                   nms_plugin=nms_plugin, versions=versions, onnx_sha256=None,
                                   extra={**common, **(extra or {})})
    return meta_for


def _plugin_graph(trunk: Any, anchors: np.ndarray, src: ExportSource, plugin: Any, domain: str,
                  simplify_graph: bool, notes: list[str], head: Any = None) -> tuple[Any, Any]:
    """The TensorRT graph: the part before the plugin is checked and simplified, then the
    EfficientNMS_TRT node is inserted (so no simplifier ever touches it). (ModelProto, PluginSpec)."""
    from export import graphs as G
    ir = trunk.ir_version
    pre = check_and_infer(_to_model(G.add_plugin_inputs_tail(_gs(trunk), src.variances, head=head, anchors=anchors),
                                    ir))
    if simplify_graph:
        pre = simplify(pre, notes)
    spec = G.PluginSpec.from_nms(src.meta.nms, plugin.version, head=head)
    model = _to_model(G.insert_efficient_nms(_gs(pre), anchors, spec, domain=domain, head=head), ir,
                      plugin_domain=domain)
    if domain:
        model = check_and_infer(model)
    else:  # TensorRT-samples style: the plugin in the default domain, which has no schema for it
        notes.append(f"{G.PLUGIN_NAME} in the default ONNX domain: onnx.checker cannot check this graph "
                     f"(the part before the plugin was checked)")
    return model, spec


def plugin_nms(nms: Any, candidates: int, notes: list[str]) -> Any:
    """The NMS settings the plugin really applies (it always keeps its PLUGIN_TOP_K = 4096 best
    candidates before NMS, README "Process Description"), for the plugin graph's sidecar;
    remarks go to ``notes``."""
    from runtime.trt_reference import PLUGIN_TOP_K
    out = nms
    if nms.pre_nms_top_k != PLUGIN_TOP_K and candidates > min(nms.pre_nms_top_k, PLUGIN_TOP_K):
        out = dataclasses.replace(nms, pre_nms_top_k=PLUGIN_TOP_K)
        notes.append(f"EfficientNMS_TRT always keeps {PLUGIN_TOP_K} candidates before NMS; the checkpoint "
                     f"asks {nms.pre_nms_top_k}: sidecar records {PLUGIN_TOP_K}")
    if nms.score_threshold < 0.007:
        notes.append("score_threshold < 0.007: the plugin switches to its dense path and may emit extra "
                     "rows scored -32768 (runtime/nms_reference.py)")
    return out


# --------------------------------------------------------------------------- step 1: the graphs
def export_graphs(checkpoint: str | os.PathLike[str] | ExportSource, out_dir: str | os.PathLike[str], *,
                  opset: int = 17, plugin_version: str = "auto", plugin_domain: str = PLUGIN_DOMAIN,
                  simplify_graphs: bool = True, log: Log = _print,
                  refinedet_plugin_boxes: str = "anchors") -> ExportArtifacts:
    """Checkpoint -> ``model_raw.onnx``, ``model_trt.onnx`` and ``model_nms.onnx`` in ``out_dir``,
    each checked (and simplified unless ``simplify_graphs`` is off) and written with its sidecar.

    The trunk is exported from PyTorch once; each graph is the trunk plus a tail of
    :mod:`export.graphs`. ``plugin_version``: "auto" or a number (:mod:`export.trt.env`).
    Nothing is verified here (:func:`export.verify.verify_exports` does that).
    """
    from export import graphs as G
    from export.trt.env import detect_plugin_choice
    check_graph_options(opset, plugin_domain)
    src = checkpoint if isinstance(checkpoint, ExportSource) else ExportSource.load(checkpoint)
    plugin = detect_plugin_choice(plugin_version)
    out = Path(out_dir)
    art = ExportArtifacts(out, {}, {g: [] for g in GRAPH_FILES}, plugin, plugin_domain)
    head = G.HeadSpec.of(src.model, refinedet_plugin_boxes)  # SSD, or RefineDet's packed ARM + ODM heads
    meta_for = _meta_factory(src, opset, head)
    anchors = src.anchors.numpy().astype(np.float32)
    log(f"export: {src.model_name} ({src.num_classes} classes, {src.input_hw[0]}x{src.input_hw[1]} (H x W), "
        f"{src.num_anchors} anchors) from {src.path} -> {out}/")

    def write(graph: str, model: Any, meta: Any, what: str = "") -> None:
        art.graphs[graph] = save_with_meta(model, out / GRAPH_FILES[graph], meta)
        log(f"  wrote {art.graphs[graph].onnx}{what}")

    trunk = export_trunk(src.model, src.input_hw, opset)  # the only PyTorch export
    raw_tail = G.add_raw_tail(_gs(trunk), anchors, src.variances, head=head)
    raw = check_simplify_check(_to_model(raw_tail, trunk.ir_version), simplify_graphs, art.notes["raw"])
    write("raw", raw, meta_for("raw"))

    trt_model, spec = _plugin_graph(trunk, anchors, src, plugin, plugin_domain, simplify_graphs, art.notes["trt"],
                                    head)
    trt_nms = plugin_nms(src.meta.nms, src.num_anchors * src.num_classes, art.notes["trt"])
    write("trt", trt_model, meta_for("trt", nms=trt_nms, nms_plugin=plugin.sidecar(plugin_domain),
                                     extra={"plugin_attrs": spec.attrs()}),
          f" ({G.PLUGIN_NAME} v{plugin.version}: {plugin.reason})")

    nms_tail = G.add_onnx_nms_tail(_gs(_without_metadata(raw)), src.meta.nms)
    nms_model = check_simplify_check(_to_model(nms_tail, trunk.ir_version), simplify_graphs, art.notes["nms"])
    write("nms", nms_model, meta_for("nms"))
    return art


# --------------------------------------------------------------------------- inputs of the checks
@dataclass
class ExportInputs:
    """Images the export's checks use, resolved (and validated) before anything is written."""

    verify_images: list[Any]
    verify_source: str
    calib_images: list[Any] | None = None
    calib_source: str | None = None
    val_dataset: Any = None
    val_why: str = "not requested"


def _verify_images(verify_images: str, val_ds: Any, val_why: str) -> tuple[list[Any], str]:
    from export import data as xdata
    n = max(VERIFY_BATCHES)
    if verify_images not in ("auto", "synthetic"):
        images, src = [str(p) for p in xdata.list_images(verify_images, limit=n)], str(verify_images)
    elif verify_images == "auto" and val_ds is not None:
        images, src = xdata.dataset_images(val_ds, n), f"validation images: {val_why}"
    else:
        images, src = xdata.synthetic_images(n, seed=0), "synthetic images"
    while len(images) < n:
        images = images + images[: n - len(images)]
    return images, src


def resolve_inputs(cfg: dict[str, Any], *, int8: bool, calib_images: str | os.PathLike[str] | None,
                   calib_count: int, verify_images: str, evaluate: str | bool) -> ExportInputs:
    """Verification, calibration and validation images from the options and the checkpoint's
    flat config ``cfg``; ValueError for a source that was asked for and is not there."""
    from export import data as xdata
    val_ds, val_why = None, "not requested"
    if verify_images == "auto" or evaluate in ("auto", True):
        val_ds, val_why = xdata.checkpoint_dataset(cfg, "val")
    if evaluate is True and val_ds is None:
        raise ValueError(f"evaluation asked for but the checkpoint's validation data is not available: {val_why}")
    calib, calib_src = None, None
    if int8:
        calib, calib_src = xdata.calibration_images(calib_count, folder=calib_images, cfg=cfg)
        if calib is None:
            raise ValueError(f"--int8 needs --calib-images DIR or a checkpoint whose dataset is available "
                             f"({calib_src})")
    images, src = _verify_images(verify_images, val_ds, val_why)
    return ExportInputs(images, src, calib, calib_src, val_ds, val_why)


def _check_options(*, int8: bool, calib_images: Any, evaluate: Any, calib_count: int, opset: int,
                   plugin_domain: str) -> None:
    if calib_images is not None and not int8:
        raise ValueError("--calib-images is only used with --int8")
    if evaluate not in ("auto", True, False):
        raise ValueError(f"evaluate must be 'auto', True or False, got {evaluate!r}")
    if calib_count < 1:
        raise ValueError(f"--calib-count must be >= 1, got {calib_count}")
    check_graph_options(opset, plugin_domain)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- all steps + the report
def _map_report(art: ExportArtifacts, inputs: ExportInputs, rows: dict[str, dict[str, Any]], *,
                eval_images: int | None, max_drop: float, threads: int, progress: bool,
                known: dict[str, Any] | None = None) -> dict[str, Any]:
    """COCO mAP of the FP32 (and INT8) ONNX graphs; an INT8 graph that loses more than
    ``max_drop`` points fails its row. ``known``: metrics already measured (graph -> metrics)."""
    from export.verify import check_int8_map, evaluate_graphs
    if inputs.val_dataset is None:
        return {"skipped": inputs.val_why}
    from runtime.parity import MAP_TOLERANCE
    graphs = {g: art.graphs[g].onnx for g in ("raw", "int8", "int8_nms", "trt_fp16", "trt_int8") if g in art.graphs}
    maps: dict[str, Any] = {"dataset": inputs.val_why, **(known or {})}
    maps.update(evaluate_graphs({g: p for g, p in graphs.items() if g not in maps}, inputs.val_dataset,
                                max_images=eval_images, threads=threads, progress=progress))
    allowed = {"int8": max_drop, "int8_nms": max_drop, "trt_int8": max_drop, "trt_fp16": MAP_TOLERANCE["fp16"]}
    for g in graphs.keys() - {"raw"}:
        why = check_int8_map(maps, allowed[g], graph=g)
        if why:
            rows[g]["ok"] = False
            rows[g]["notes"].append(why)
    return maps


def _variants_and_rows(art: ExportArtifacts, inputs: ExportInputs, src: ExportSource, *, fp16: bool, int8: bool,
                       calib_method: str, threads: int, log: Log) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Write the TensorRT 11 variants of the plugin graph (:mod:`export.variants`), then verify
    every graph: the ONNX graphs against PyTorch, the variants against model_trt.onnx.
    Returns (verification rows, variant name -> what was done)."""
    from export.variants import VARIANT_FILES, write_variants
    from export.verify import verify_exports
    from export.verify_variants import verify_variants
    written, infos = write_variants(art.graphs["trt"].onnx, fp16=fp16, int8=int8,
                                    reference_images=inputs.calib_images or inputs.verify_images,
                                    calib_images=inputs.calib_images, calib_source=inputs.calib_source,
                                    calib_method=calib_method, threads=threads, notes=art.notes, log=log)
    art.graphs.update(written)
    from export.uint8_input import uint8_rows
    from export.verify_int8 import int8_rows
    plain = {g: p for g, p in art.paths().items() if g in GRAPH_FILES and g not in VARIANT_FILES}
    rows = verify_exports(plain, src.model, src.anchors, inputs.verify_images, threads=threads, notes=art.notes)
    rows.update(int8_rows(art.paths(), src.model, src.anchors, inputs.verify_images, threads=threads,
                          notes=art.notes))
    rows.update(uint8_rows(art.paths(), inputs.verify_images, threads=threads, notes=art.notes))
    rows.update(verify_variants(art.graphs["trt"].onnx, {g: art.paths()[g] for g in written}, inputs.verify_images,
                                threads=threads, notes=art.notes))
    return rows, infos


def export_onnx(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, int8: bool = False,
                fp16: bool = False, trt_int8: bool = False,
                calib_images: str | os.PathLike[str] | None = None, calib_count: int = 128,
                calib_method: str = "minmax", trt_calib_method: str = "percentile", plugin_version: str = "auto",
                plugin_domain: str = PLUGIN_DOMAIN,
                opset: int = 17, simplify_graphs: bool = True, verify_images: str = "auto",
                evaluate: str | bool = "auto", eval_images: int | None = None, int8_max_map_drop: float = 1.0,
                latency_iters: int = 20, threads: int = 0, quiet: bool = False, int8_per_channel: bool = True,
                int8_max_fp32_layers: int = 8, uint8_input: bool = False,
                refinedet_plugin_boxes: str = "anchors") -> dict[str, Any]:
    """Export one checkpoint to ``out_dir`` and verify it; returns {"ok", "out_dir", "files",
    "report", "report_path"} (``files``: graph -> {"onnx", "sidecar"} paths as str).

    ``int8`` writes ONNX Runtime's INT8 graph ``model_int8.onnx``; ``trt_int8`` the Q/DQ plugin graph
    ``model_trt_int8.onnx`` from the same calibration images (what TensorRT >= 11 builds for INT8; export.trt
    --int8 writes it on demand); ``fp16`` writes ``model_trt_fp16.onnx`` (:mod:`export.variants`).
    With ``int8`` also ``model_int8_nms.onnx`` (the INT8 body with the ONNX-NMS tail); when the
    validation set is there, up to ``int8_max_fp32_layers`` layers stay FP32 if the INT8 mAP drop
    exceeds ``int8_max_map_drop`` (:mod:`export.mixed_precision`). ``int8_per_channel``: per-channel
    weight scales (default; per tensor otherwise). ``uint8_input`` adds ``model_nms_u8.onnx`` (and
    ``model_int8_nms_u8.onnx``): uint8 [B, H, W, 3] RGB input, normalised inside (:mod:`export.uint8_input`).

    ``verify_images``: "auto" (validation images of the checkpoint if on disk, else synthetic),
    "synthetic", or a folder of images. ``evaluate``: COCO mAP of FP32 (and INT8) ORT graphs on
    the validation set: "auto" (when available), True (required) or False. ``calib_images``: a
    folder; default the checkpoint's training images (required to exist with ``int8``).
    ``calib_method`` calibrates ``model_int8.onnx``, ``trt_calib_method`` ``model_trt_int8.onnx``
    (percentile: symmetric int8 loses too much to min-max ranges, see :mod:`export.qdq_trt`).
    ``threads``: intra-op threads of ONNX Runtime and PyTorch during the export (0: their defaults).
    User mistakes raise ValueError (before anything is written); verification failures are
    reported (``ok`` False).
    """
    from export.mixed_precision import GateSettings
    from export.verify import int8_speedup
    from runtime.preprocess import Preprocessor
    t_start = time.perf_counter()
    log = _silent if quiet else _print
    _check_options(int8=int8 or trt_int8, calib_images=calib_images, evaluate=evaluate, calib_count=calib_count, opset=opset,
                   plugin_domain=plugin_domain)
    if isinstance(int8_max_fp32_layers, bool) or not isinstance(int8_max_fp32_layers, int) or int8_max_fp32_layers < 0:
        raise ValueError(f"--int8-max-fp32-layers must be an int >= 0, got {int8_max_fp32_layers!r}")
    with _torch_threads(threads):
        src = ExportSource.load(checkpoint)
        inputs = resolve_inputs(src.config, int8=int8 or trt_int8, calib_images=calib_images, calib_count=calib_count,
                                verify_images=verify_images, evaluate=evaluate)
        art = export_graphs(src, out_dir, opset=opset, plugin_version=plugin_version, plugin_domain=plugin_domain,
                            simplify_graphs=simplify_graphs, log=log, refinedet_plugin_boxes=refinedet_plugin_boxes)
        quant, known = None, None
        if int8:
            gate = GateSettings(int8_max_map_drop, int8_max_fp32_layers, eval_images, threads)
            quant, known = _int8_step(art, inputs, gate, method=calib_method, per_channel=int8_per_channel,
                                      search=evaluate is not False, quiet=quiet, log=log)
        if uint8_input:
            _uint8_step(art, log)
        rows, variant_infos = _variants_and_rows(art, inputs, src, fp16=fp16, int8=trt_int8,
                                                 calib_method=trt_calib_method,
                                                 threads=threads, log=log)
        report = _report(src, art, inputs, rows)
        report["trt_variants"] = variant_infos
        if quant is not None:
            x = Preprocessor.from_meta(art.graphs["raw"].meta)(inputs.verify_images)[0]
            report["latency"] = int8_speedup(art.graphs["raw"].onnx, art.graphs["int8"].onnx, x, threads=threads,
                                             iters=latency_iters)
            report["quantization"] = {**quant, "calibration_source": inputs.calib_source}
        if evaluate is not False:
            report["map"] = _map_report(art, inputs, rows, eval_images=eval_images, max_drop=int8_max_map_drop,
                                        threads=threads, progress=not quiet, known=known)
    report["ok"] = all(r["ok"] for r in rows.values())
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    report_path = write_report(art.out_dir / "export_report.json", report)
    if not quiet:
        print(format_report(report))
        print(f"report: {report_path}")
    return {"ok": report["ok"], "out_dir": str(art.out_dir), "report": report, "report_path": str(report_path),
            "files": {g: {"onnx": str(w.onnx), "sidecar": str(w.sidecar)} for g, w in art.graphs.items()}}


def _int8_step(art: ExportArtifacts, inputs: ExportInputs, gate: Any, *, method: str, per_channel: bool,
               search: bool, quiet: bool, log: Log) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``model_int8.onnx`` (gated mixed precision when ``search`` and the validation set is there)
    and ``model_int8_nms.onnx``. Returns (the quantization record, metrics already measured or None)."""
    from export.mixed_precision import quantize_with_gate
    from export.quantize import quantize_int8, write_int8_nms
    raw, notes = art.graphs["raw"].onnx, art.notes.setdefault("int8", [])
    log(f"  calibrating INT8 ({method}, {'per-channel' if per_channel else 'per-tensor'} weights) on "
        f"{inputs.calib_source} ...")
    known = None
    if search and inputs.val_dataset is not None:
        art.graphs["int8"], quant, known = quantize_with_gate(
            raw, inputs.calib_images, inputs.val_dataset, gate, calibration_source=str(inputs.calib_source),
            method=method, per_channel=per_channel, notes=notes, log=log)
    else:
        art.graphs["int8"], quant = quantize_int8(raw, inputs.calib_images, calibration_source=str(inputs.calib_source),
                                                  method=method, per_channel=per_channel, progress=not quiet,
                                                  notes=notes)
        quant["mixed_precision"] = {"skipped": "no mAP evaluation (--eval no or no validation data)"}
    log(f"  wrote {art.graphs['int8'].onnx}")
    art.graphs["int8_nms"] = write_int8_nms(art.graphs["int8"].onnx)
    log(f"  wrote {art.graphs['int8_nms'].onnx} (INT8 body, float decode + ONNX NonMaxSuppression)")
    return quant, known


def _uint8_step(art: ExportArtifacts, log: Log) -> None:
    """The uint8-input twins of the NMS graphs (``model_nms_u8.onnx``, ``model_int8_nms_u8.onnx``)."""
    from export.uint8_input import UINT8_SUFFIX, write_uint8_input
    for g in ("nms", "int8_nms"):
        if g in art.graphs:
            art.graphs[g + UINT8_SUFFIX] = write_uint8_input(art.graphs[g].onnx)
            log(f"  wrote {art.graphs[g + UINT8_SUFFIX].onnx} (uint8 [B,H,W,3] RGB input, normalised in the graph)")


def _report(src: ExportSource, art: ExportArtifacts, inputs: ExportInputs, rows: dict[str, dict[str, Any]]
            ) -> dict[str, Any]:
    from runtime.matching import EXACT_BOX_TOL, EXACT_SCORE_TOL
    return {"checkpoint": src.path, "out_dir": str(art.out_dir), "model": src.model_name,
            "img_size": src.img_size, "num_classes": src.num_classes, "num_anchors": src.num_anchors,
            "verify_images": inputs.verify_source, "verify_batches": list(VERIFY_BATCHES),
            "tolerances": {"raw_rtol": RAW_RTOL, "raw_atol": RAW_ATOL, "box": EXACT_BOX_TOL,
                           "score": EXACT_SCORE_TOL},
            "nms_plugin": art.plugin.sidecar(art.plugin_domain), "graphs": rows}


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(
        prog="python -m export.onnx", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="Export a checkpoint to ONNX: model_raw.onnx, model_trt.onnx (EfficientNMS_TRT), "
                    "model_nms.onnx (ONNX NonMaxSuppression) and, with --int8, model_int8.onnx; each with a "
                    "sidecar JSON, each verified against PyTorch (table + export_report.json). "
                    "Exit status: 0 all verified, 1 a graph failed verification, 2 a usage error.",
        epilog="With no --checkpoint: the newest best.pt under --runs (by mtime, recursive), exported to "
               "exports/<run name>.")
    p.add_argument("--checkpoint", help="checkpoint file (or run folder); default: newest best.pt under --runs")
    p.add_argument("--out", help="output folder (default: exports/<run name>)")
    p.add_argument("--runs", default="runs", help="where runs are searched when --checkpoint is not given")
    p.add_argument("--int8", action="store_true", help="also write model_int8.onnx (ONNX Runtime static INT8, QDQ, "
                                                       "per-channel weights) and report INT8 vs FP32 latency/mAP")
    p.add_argument("--trt-int8", action="store_true", help="also write model_trt_int8.onnx: TensorRT explicit "
                                                           "quantization of the plugin graph (symmetric Q/DQ), what "
                                                           "TensorRT 11 builds for export.trt --int8; mAP-gated")
    p.add_argument("--fp16", action="store_true", help="also write model_trt_fp16.onnx: the plugin graph in mixed "
                                                       "precision (FP32 plugin inputs), what TensorRT 11 builds "
                                                       "for --fp16; verified against model_trt.onnx on CPU")
    p.add_argument("--calib-images", metavar="DIR", help="calibration images for --int8 (default: the checkpoint's "
                                                         "training images, if on disk)")
    p.add_argument("--calib-count", type=int, default=128, help="calibration images used at most")
    p.add_argument("--calib-method", "--int8-calib", dest="calib_method", default="minmax",
                   choices=["minmax", "entropy", "percentile"],
                   help="calibration method of model_int8.onnx / model_int8_nms.onnx (ONNX Runtime's "
                        "CalibrationMethod)")
    p.add_argument("--int8-per-tensor", action="store_true",
                   help="one weight scale per tensor instead of per output channel (per-channel is the default: "
                        "the channels of a BatchNorm-folded depthwise conv span ranges ~18x apart; per tensor cost "
                        "the SSD-Lite student 1.8 mAP, per channel 0.4, at the same speed)")
    p.add_argument("--int8-max-fp32-layers", type=int, default=8, metavar="N",
                   help="when INT8 loses more than --int8-max-map-drop, leave up to N of the most sensitive layers "
                        "in FP32 (greedy, named in the sidecar; needs the validation set; 0: never)")
    p.add_argument("--uint8-input", action="store_true",
                   help="also write model_nms_u8.onnx (and model_int8_nms_u8.onnx): uint8 [B,H,W,3] RGB input, "
                        "cast / normalise / NCHW inside the graph; the runtime feeds the resized pixels. A text "
                        "classifier: model_u8.onnx (and model_int8_u8.onnx with --int8)")
    p.add_argument("--trt-calib-method", default="percentile", choices=["minmax", "entropy", "percentile"],
                   help="calibration method of model_trt_int8.onnx (symmetric int8: min-max wastes its range on "
                        "outliers, see export.qdq_trt)")
    p.add_argument("--plugin-version", default="auto",
                   help="EfficientNMS_TRT plugin_version: 'auto' ('1' without TensorRT or below 10.12, else the "
                        "highest version the installed TensorRT registers) or an explicit number")
    p.add_argument("--plugin-domain", default=PLUGIN_DOMAIN,
                   help="ONNX domain of the EfficientNMS_TRT node. TensorRT's parser matches plugins by op type "
                        "only; a named domain keeps the graph valid for onnx.checker. '' = the default domain as in "
                        "TensorRT's samples / ONNX Runtime's TensorRT EP (the checker then cannot check that graph)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of the exported graphs (13..20)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--verify-images", default="auto", metavar="auto|synthetic|DIR",
                   help="images for the PyTorch parity check: validation images if available, else synthetic")
    p.add_argument("--eval", dest="evaluate", default="auto", choices=["auto", "yes", "no"],
                   help="COCO mAP of the FP32 / INT8 ONNX graphs on the validation set (auto: when available)")
    p.add_argument("--eval-images", type=int, help="evaluate on the first N validation images only")
    p.add_argument("--int8-max-map-drop", type=float, default=1.0,
                   help="fail when INT8 mAP is more than this many points below FP32")
    p.add_argument("--latency-iters", type=int, default=20, help="timed iterations per latency measurement")
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime and PyTorch intra-op threads (0: their defaults)")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final status line")
    p.add_argument("--refinedet-plugin-boxes", default="anchors", choices=["anchors", "decoded"],
                   help="RefineDet checkpoints only: how model_trt.onnx feeds EfficientNMS_TRT: 'anchors' (fused "
                        "decoder, the per-image refined anchors as its [B,N,4] anchors input) or 'decoded' (ODM "
                        "boxes decoded in the graph, the plugin's standard mode); export.graphs.PLUGIN_BOXES")
    from export.text import add_text_flags
    add_text_flags(p)
    return p


@command("python -m export.onnx")
def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 all verified, 1 a graph failed verification, 2 a usage error."""
    args = build_parser().parse_args(argv)
    from export import data as xdata
    try:
        ckpt = Path(args.checkpoint) if args.checkpoint else xdata.find_latest_checkpoint(args.runs)
        out = Path(args.out) if args.out else xdata.default_export_dir(ckpt, args.runs)
        from export.text import checkpoint_is_text, run_text_export
        if checkpoint_is_text(ckpt):  # the text / non-text classifier: model.onnx (+ model_int8.onnx)
            return run_text_export(ckpt, out, args)
        res = export_onnx(ckpt, out, int8=args.int8, fp16=args.fp16, trt_int8=args.trt_int8,
                          calib_images=args.calib_images,
                          calib_count=args.calib_count, calib_method=args.calib_method,
                          trt_calib_method=args.trt_calib_method, plugin_version=args.plugin_version,
                          plugin_domain=args.plugin_domain, opset=args.opset,
                          simplify_graphs=not args.no_simplify, verify_images=args.verify_images,
                          evaluate={"auto": "auto", "yes": True, "no": False}[args.evaluate],
                          eval_images=args.eval_images, int8_max_map_drop=args.int8_max_map_drop,
                          latency_iters=args.latency_iters, threads=args.threads, quiet=args.quiet,
                          int8_per_channel=not args.int8_per_tensor, int8_max_fp32_layers=args.int8_max_fp32_layers,
                          uint8_input=args.uint8_input, refinedet_plugin_boxes=args.refinedet_plugin_boxes)
    except ValueError as e:
        return fail(e, "export.onnx: error")
    if args.quiet:
        print(f"export.onnx: {'ok' if res['ok'] else 'FAILED'} -> {res['report_path']}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
