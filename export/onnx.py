"""Checkpoint -> ONNX graphs + sidecars, each verified against PyTorch before returning.

    python -m export.onnx --checkpoint runs/kd/best.pt --out exports/kd
    python -m export.onnx --checkpoint runs/kd/best.pt --out exports/kd --int8 --calib-images DIR
    python -m export.onnx          # the newest runs/**/best.pt -> exports/<run name>

Files written to ``out`` (dynamic batch, fixed H x W from the checkpoint's ``img_size``), each with
a sidecar ``<name>.json`` (runtime.metadata) mirrored in the ONNX ``metadata_props`` ("fdet_meta";
there ``onnx_sha256`` is null, a file cannot hold its own hash):

    model_raw.onnx   images [B,3,H,W] -> boxes [B,N,4] (normalised xyxy), scores [B,N,C+1] (softmax)
    model_trt.onnx   ... -> EfficientNMS_TRT (fused decoder) -> num_detections [B,1] int32,
                     detection_boxes [B,K,4], detection_scores [B,K], detection_classes [B,K] int32
    model_nms.onnx   the same four outputs from standard ONNX ops (ONNX Runtime on CPU)
    model_int8.onnx  (--int8) ONNX Runtime static INT8 (QDQ, per-channel) of model_raw.onnx
    export_report.json  the verification table below, machine-readable

Every graph passes ``onnx.checker``, shape inference, onnxslim (the plugin node is added after
simplification, so it is never touched; a failed simplification keeps the plain graph and says
so), then is compared with PyTorch at batch 1 and 3 on validation images (synthetic if none):
raw outputs allclose, NMS outputs equal detection for detection (model_trt.onnx through the CPU
reference of the plugin, runtime.trt_reference). Any failure -> exit status 1.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

GRAPH_FILES = {"raw": "model_raw.onnx", "trt": "model_trt.onnx", "nms": "model_nms.onnx", "int8": "model_int8.onnx"}
META_KEY = "fdet_meta"
VERIFY_BATCHES = (1, 3)


def _log(quiet: bool, *msg: Any) -> None:
    if not quiet:
        print(*msg, flush=True)


# --------------------------------------------------------------------------- building blocks
def export_trunk(model, img_size: int, opset: int) -> "onnx.ModelProto":  # noqa: F821
    """The PyTorch model alone: ``images`` [B,3,H,W] -> ``loc`` [B,N,4], ``conf`` [B,N,C+1]."""
    import onnx
    import torch
    buf = io.BytesIO()
    x = torch.zeros(2, 3, img_size, img_size)
    dyn = {"images": {0: "batch"}, "loc": {0: "batch"}, "conf": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # dynamo=False: the TorchScript-based exporter needs no onnxscript and handles these
        # plain conv nets with a dynamic batch dimension well.
        torch.onnx.export(model.eval(), (x,), buf, dynamo=False, input_names=["images"], output_names=["loc", "conf"],
                          dynamic_axes=dyn, opset_version=opset, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def simplify(model, notes: List[str]):
    """onnxslim, or the model unchanged (with a note) when simplification fails or breaks the checker."""
    import onnx
    try:
        import onnxslim
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(model)
        onnx.checker.check_model(slim)
        slim.ir_version = model.ir_version
        return slim
    except Exception as e:  # noqa: BLE001 - any simplifier failure keeps the unsimplified graph
        notes.append(f"onnxslim failed, graph kept unsimplified ({e.__class__.__name__}: {str(e)[:200]})")
        return model


def check_and_infer(model, *, strict: bool = True):
    """onnx.checker (full) + shape inference; returns the shape-inferred model."""
    import onnx
    onnx.checker.check_model(model, full_check=strict)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)


def _gs(model):
    import onnx_graphsurgeon as gs
    return gs.import_onnx(model)


def _to_model(graph, ir_version: int, plugin_domain: Optional[str] = None):
    from export.graphs import to_model
    m = to_model(graph, plugin_domain=plugin_domain)
    m.ir_version = ir_version
    return m


def save_with_meta(model, path: Path, meta) -> Dict[str, Any]:
    """Write ``model`` with ``meta`` in metadata_props, then the sidecar with the file's sha256."""
    import onnx

    from runtime.metadata import sha256_file, write_sidecar
    embedded = dataclasses.replace(meta, onnx_sha256=None)
    del model.metadata_props[:]
    model.metadata_props.append(onnx.StringStringEntryProto(key=META_KEY, value=json.dumps(embedded.to_dict())))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    final = dataclasses.replace(meta, onnx_sha256=sha256_file(path))
    sidecar = write_sidecar(path, final)
    return {"onnx": str(path), "sidecar": str(sidecar), "meta": final,
            "size_mb": path.stat().st_size / 2**20}


# --------------------------------------------------------------------------- the export
def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, int8: bool = False,
                calib_images: Optional[str | os.PathLike] = None, calib_count: int = 128, calib_method: str = "minmax",
                plugin_version: str = "auto", plugin_domain: str = "trt.plugins", opset: int = 17,
                simplify_graphs: bool = True,
                verify_images: str = "auto", evaluate: str | bool = "auto", eval_images: Optional[int] = None,
                int8_max_map_drop: float = 1.0, latency_iters: int = 20, threads: int = 0,
                quiet: bool = False) -> Dict[str, Any]:
    """Export one checkpoint to ``out_dir``; returns {"ok", "out_dir", "files", "report", "report_path"}.

    ``verify_images``: "auto" (validation images of the checkpoint if on disk, else synthetic),
    "synthetic", or a folder of images. ``evaluate``: COCO mAP of FP32 (and INT8) ORT graphs on
    the validation set: "auto" (when available), True (required) or False. ``calib_images``: a
    folder; default the checkpoint's training images (required to exist with ``int8``).
    ``threads``: intra-op threads of ONNX Runtime and PyTorch during the export (0: their defaults).
    User mistakes raise ValueError; graph verification failures are reported (``ok`` False).
    """
    import torch
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _export_onnx(checkpoint, out_dir, int8=int8, calib_images=calib_images, calib_count=calib_count,
                            calib_method=calib_method, plugin_version=plugin_version,
                            plugin_domain=plugin_domain, opset=opset,
                            simplify_graphs=simplify_graphs, verify_images=verify_images, evaluate=evaluate,
                            eval_images=eval_images, int8_max_map_drop=int8_max_map_drop,
                            latency_iters=latency_iters, threads=threads, quiet=quiet)
    finally:
        torch.set_num_threads(previous)


def _export_onnx(checkpoint, out_dir, *, int8, calib_images, calib_count, calib_method, plugin_version,
                 plugin_domain, opset, simplify_graphs, verify_images, evaluate, eval_images, int8_max_map_drop,
                 latency_iters, threads, quiet) -> Dict[str, Any]:
    import onnx

    from distill.checkpoint import load_checkpoint, meta_from_checkpoint, model_from_checkpoint
    from export import data as xdata
    from export import graphs as G
    from export.trt_env import detect_plugin_choice
    from runtime.metadata import library_versions

    t_start = time.perf_counter()
    out = Path(out_dir)
    if calib_images is not None and not int8:
        raise ValueError("--calib-images is only used with --int8")
    if evaluate not in ("auto", True, False):
        raise ValueError(f"evaluate must be 'auto', True or False, got {evaluate!r}")
    if calib_count < 1:
        raise ValueError(f"--calib-count must be >= 1, got {calib_count}")
    if not 13 <= int(opset) <= 20:
        raise ValueError(f"--opset must be in 13..20 (Softmax over the last axis, ReduceSum with axes input), "
                         f"got {opset}")
    if plugin_domain and not all(part.isidentifier() for part in plugin_domain.split(".")):
        raise ValueError(f"--plugin-domain must be '' or a dotted name like 'trt.plugins', got {plugin_domain!r}")
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.get("config") or {}
    if "img_size" not in cfg:
        raise ValueError(f"checkpoint {checkpoint} has no config.img_size: cannot fix the input size")
    img_size = int(cfg["img_size"])
    model = model_from_checkpoint(ckpt)
    base_meta = meta_from_checkpoint(ckpt)
    anchors_t = model.anchors(img_size)
    anchors = anchors_t.numpy().astype(np.float32)
    variances = model.box_coder.variances
    n_anchors, n_cls = anchors.shape[0], int(ckpt["num_classes"])
    notes: Dict[str, List[str]] = {g: [] for g in GRAPH_FILES}

    # Inputs that can be wrong are resolved before anything is written.
    val_ds, val_why = (None, "not requested")
    if verify_images == "auto" or evaluate in ("auto", True):
        val_ds, val_why = xdata.checkpoint_dataset(cfg, "val")
    if evaluate is True and val_ds is None:
        raise ValueError(f"evaluation asked for but the checkpoint's validation data is not available: {val_why}")
    calib_src, calib_list = None, None
    if int8:
        if calib_images is not None:
            calib_list = [str(p) for p in xdata.list_images(calib_images, limit=calib_count)]
            calib_src = f"{calib_images} ({len(calib_list)} images)"
        else:
            train_ds, why = xdata.checkpoint_dataset(cfg, "train")
            if train_ds is None:
                raise ValueError(f"--int8 needs --calib-images DIR or a checkpoint whose dataset is available "
                                 f"({why})")
            step = max(1, len(train_ds) // calib_count)
            calib_list = [train_ds[i][0] for i in range(0, len(train_ds), step)][:calib_count]
            calib_src = f"checkpoint training data {why} ({len(calib_list)} images, every {step}th)"
    if verify_images not in ("auto", "synthetic"):
        verify_list: List[Any] = [str(p) for p in xdata.list_images(verify_images, limit=max(VERIFY_BATCHES))]
        verify_src = f"{verify_images}"
    elif verify_images == "auto" and val_ds is not None:
        verify_list, verify_src = xdata.dataset_images(val_ds, max(VERIFY_BATCHES)), f"validation images: {val_why}"
    else:
        verify_list, verify_src = xdata.synthetic_images(max(VERIFY_BATCHES), seed=0), "synthetic images"
    while len(verify_list) < max(VERIFY_BATCHES):
        verify_list = verify_list + verify_list[: max(VERIFY_BATCHES) - len(verify_list)]
    plugin = detect_plugin_choice(plugin_version)

    common_extra = {"checkpoint": str(ckpt.get("path")), "opset": opset, "num_anchors": n_anchors,
                    "variances": list(variances)}
    versions = library_versions()

    def meta_for(graph: str, precision: str = "fp32", nms=None, extra: Optional[dict] = None, nms_plugin=None):
        return dataclasses.replace(base_meta, graph=graph, precision=precision, nms=nms or base_meta.nms,
                                   nms_plugin=nms_plugin, versions=versions, onnx_sha256=None,
                                   extra={**common_extra, **(extra or {})})

    files: Dict[str, Dict[str, Any]] = {}
    _log(quiet, f"export: {ckpt['model_name']} ({n_cls} classes, {img_size}x{img_size}, {n_anchors} anchors) "
                f"from {ckpt.get('path')} -> {out}/")

    # 1. trunk (the only PyTorch export) -------------------------------------------------------
    trunk = export_trunk(model, img_size, opset)
    ir = trunk.ir_version

    def check_simplify_check(model: onnx.ModelProto, graph: str) -> onnx.ModelProto:
        model = check_and_infer(model)
        if simplify_graphs:
            model = simplify(model, notes[graph])
        return check_and_infer(model)

    # 2. raw graph -----------------------------------------------------------------------------
    raw = check_simplify_check(_to_model(G.add_raw_tail(_gs(trunk), anchors, variances), ir), "raw")
    files["raw"] = save_with_meta(raw, out / GRAPH_FILES["raw"], meta_for("raw"))
    _log(quiet, f"  wrote {files['raw']['onnx']}")

    # 3. TensorRT plugin graph: simplify the part before the plugin, then insert the plugin -----
    pre = _to_model(G.add_plugin_inputs_tail(_gs(trunk), variances), ir)
    pre = check_and_infer(pre)
    if simplify_graphs:
        pre = simplify(pre, notes["trt"])
    spec = G.PluginSpec.from_nms(base_meta.nms, plugin.version)
    trt_model = _to_model(G.insert_efficient_nms(_gs(pre), anchors, spec, domain=plugin_domain), ir,
                          plugin_domain=plugin_domain)
    if plugin_domain:
        trt_model = check_and_infer(trt_model)
    else:  # TensorRT-samples style: the plugin in the default domain, which has no schema for it
        notes["trt"].append(f"{G.PLUGIN_NAME} in the default ONNX domain: onnx.checker cannot check this graph "
                            f"(the part before the plugin was checked)")
    trt_nms = base_meta.nms
    if base_meta.nms.pre_nms_top_k != G.PLUGIN_TOP_K and n_anchors * n_cls > min(base_meta.nms.pre_nms_top_k,
                                                                              G.PLUGIN_TOP_K):
        trt_nms = dataclasses.replace(base_meta.nms, pre_nms_top_k=G.PLUGIN_TOP_K)
        notes["trt"].append(f"EfficientNMS_TRT always keeps {G.PLUGIN_TOP_K} candidates before NMS; the checkpoint "
                            f"asks {base_meta.nms.pre_nms_top_k}: sidecar records {G.PLUGIN_TOP_K}")
    if base_meta.nms.score_threshold < 0.007:
        notes["trt"].append("score_threshold < 0.007: the plugin switches to its dense path and may emit extra "
                            "rows scored -32768 (runtime/nms_reference.py)")
    files["trt"] = save_with_meta(trt_model, out / GRAPH_FILES["trt"],
                                  meta_for("trt", nms=trt_nms, nms_plugin=plugin.sidecar(plugin_domain),
                                           extra={"plugin_attrs": spec.attrs()}))
    _log(quiet, f"  wrote {files['trt']['onnx']} ({G.PLUGIN_NAME} v{plugin.version}: {plugin.reason})")

    # 4. ONNX-NMS graph --------------------------------------------------------------------------
    raw_plain = onnx.ModelProto()
    raw_plain.CopyFrom(raw)
    del raw_plain.metadata_props[:]
    nms_model = check_simplify_check(_to_model(G.add_onnx_nms_tail(_gs(raw_plain), base_meta.nms), ir), "nms")
    files["nms"] = save_with_meta(nms_model, out / GRAPH_FILES["nms"], meta_for("nms"))
    _log(quiet, f"  wrote {files['nms']['onnx']}")

    # 5. INT8 (ONNX Runtime static quantization of the raw graph) ------------------------------
    quant_info: Dict[str, Any] = {}
    if int8:
        from export.quantize import quantize_raw_graph
        tail = G.tail_node_names(raw, G.TAIL_PREFIXES["raw"])
        if not tail:
            notes["int8"].append("decoder tail not found after simplification: everything was quantized")
        tmp = out / ".model_int8.tmp.onnx"
        _log(quiet, f"  calibrating INT8 on {calib_src} ...")
        quant_info = quantize_raw_graph(out / GRAPH_FILES["raw"], tmp, calib_list, base_meta, exclude_nodes=tail,
                                        method=calib_method, progress=not quiet)
        q = onnx.load(str(tmp))
        tmp.unlink()
        q = check_and_infer(q)
        quant_info.update(count_qdq_model(q))
        files["int8"] = save_with_meta(q, out / GRAPH_FILES["int8"],
                                       meta_for("int8", precision="int8", extra={"quantization": quant_info,
                                                                                  "calibration_source": calib_src}))
        _log(quiet, f"  wrote {files['int8']['onnx']}")

    # 6. verification ---------------------------------------------------------------------------
    from export import verify as V
    from runtime.trt_reference import TrtGraphReference
    x_all = xdata.preprocess(verify_list, base_meta)
    rows: Dict[str, Dict[str, Any]] = {}
    sessions = {g: V.ort_session(files[g]["onnx"], threads) for g in ("raw", "nms", "int8") if g in files}
    trt_ref = TrtGraphReference(files["trt"]["onnx"], intra_op_threads=threads)
    for g in files:
        rows[g] = {"graph": g, "file": files[g]["onnx"], "size_mb": round(files[g]["size_mb"], 3),
                   "max_abs_diff": 0.0, "detections_match": None, "ok": True, "notes": notes[g], "batches": {}}
    for bs in VERIFY_BATCHES:
        x = x_all[:bs]
        ref_raw = V.torch_raw(model, anchors_t, x)
        ref_det = V.torch_detections(model, anchors_t, x, base_meta.nms)
        # The plugin graph keeps its fixed 4096 pre-NMS candidates (recorded in its sidecar).
        ref_trt = ref_det if trt_nms == base_meta.nms else V.torch_detections(model, anchors_t, x, trt_nms)
        got = sessions["raw"].run(None, {"images": x})
        c = V.compare_raw(got, ref_raw)
        _merge(rows["raw"], bs, c, ok=c["allclose"], diff=c["max_abs_diff"])
        for g, fn, ref, nms in (("nms", lambda x: tuple(sessions["nms"].run(None, {"images": x})), ref_det,
                                 base_meta.nms), ("trt", trt_ref, ref_trt, trt_nms)):
            m = V.match_nms_outputs(fn(x), ref, ref_raw, nms)
            _merge(rows[g], bs, m, ok=m["match"], diff=max(m["max_box_diff"], m["max_score_diff"]), match=m["match"])
            if m.get("tie_fallback") and not any("ties" in n for n in rows[g]["notes"]):
                rows[g]["notes"].append("exact score ties (untrained / saturated model?): PyTorch's NMS order among "
                                        "ties is unspecified, compared with the plugin reference's tie order")
        if "int8" in sessions:
            q_raw = sessions["int8"].run(None, {"images": x})
            finite = all(np.all(np.isfinite(a)) for a in q_raw)
            shapes_ok = [a.shape for a in q_raw] == [a.shape for a in ref_raw]
            c = V.compare_raw(q_raw, ref_raw)
            _merge(rows["int8"], bs, {"max_abs_diff": c["max_abs_diff"], "finite": finite, "shapes_ok": shapes_ok},
                   ok=finite and shapes_ok, diff=c["max_abs_diff"])
    report: Dict[str, Any] = {"checkpoint": str(ckpt.get("path")), "out_dir": str(out), "model": ckpt["model_name"],
                              "img_size": img_size, "num_classes": n_cls, "num_anchors": n_anchors,
                              "verify_images": verify_src, "verify_batches": list(VERIFY_BATCHES),
                              "tolerances": {"raw_rtol": V.RAW_RTOL, "raw_atol": V.RAW_ATOL, "box": V.BOX_TOL,
                                             "score": V.SCORE_TOL},
                              "nms_plugin": plugin.sidecar(plugin_domain), "graphs": rows}

    # 7. INT8 vs FP32 latency on this CPU ------------------------------------------------------
    if "int8" in sessions:
        lat: Dict[str, Any] = {"threads": threads or "ort default", "cpu": _cpu_name()}
        timed = {g: V.ort_session(files[g]["onnx"], threads, spinning=True) for g in ("raw", "int8")}
        for bs in (1, 8):
            xb = np.ascontiguousarray(np.resize(x_all, (bs,) + x_all.shape[1:]))
            for g in ("raw", "int8"):
                s = timed[g]
                lat[f"{g}_b{bs}"] = V.latency(lambda: s.run(None, {"images": xb}), iters=latency_iters)
            lat[f"int8_speedup_b{bs}"] = lat[f"raw_b{bs}"]["p50_ms"] / lat[f"int8_b{bs}"]["p50_ms"]
        report["latency"] = lat
        report["quantization"] = {**quant_info, "calibration_source": calib_src}

    # 8. mAP (FP32 and INT8 ORT graphs) on the validation set ----------------------------------
    if evaluate is not False and val_ds is not None:
        mp: Dict[str, Any] = {"dataset": val_why}
        for g in ("raw", "int8"):
            if g in sessions:
                s = sessions[g]
                mp[g] = V.evaluate_map(lambda x, s=s: tuple(s.run(None, {"images": x})), val_ds, base_meta,
                                       max_images=eval_images, desc=f"mAP {g}")
        if "int8" in mp:
            drop = mp["raw"]["mAP"] - mp["int8"]["mAP"]
            mp["int8_map_drop"] = drop
            mp["int8_max_map_drop"] = int8_max_map_drop
            if not drop <= int8_max_map_drop:
                rows["int8"]["ok"] = False
                rows["int8"]["notes"].append(f"INT8 mAP {mp['int8']['mAP']:.2f} is {drop:.2f} points below FP32 "
                                             f"{mp['raw']['mAP']:.2f} (allowed {int8_max_map_drop})")
        report["map"] = mp
    elif evaluate is not False:
        report["map"] = {"skipped": val_why}

    report["ok"] = all(r["ok"] for r in rows.values())
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    from runtime.metadata import write_json_atomic
    report_path = write_json_atomic(out / "export_report.json", _jsonable(report))
    if not quiet:
        print(format_report(report))
        print(f"report: {report_path}")
    return {"ok": report["ok"], "out_dir": str(out), "report": report, "report_path": str(report_path),
            "files": {g: {"onnx": f["onnx"], "sidecar": f["sidecar"]} for g, f in files.items()}}


def count_qdq_model(model) -> Dict[str, int]:
    ops = [n.op_type for n in model.graph.node]
    return {"quantize_nodes": ops.count("QuantizeLinear"), "dequantize_nodes": ops.count("DequantizeLinear")}


def _merge(row: Dict[str, Any], bs: int, detail: Dict[str, Any], *, ok: bool, diff: float,
           match: Optional[bool] = None) -> None:
    row["batches"][str(bs)] = detail
    row["ok"] = bool(row["ok"] and ok)
    row["max_abs_diff"] = max(row["max_abs_diff"], float(diff))
    if match is not None:
        row["detections_match"] = bool(match) if row["detections_match"] is None else bool(row["detections_match"]
                                                                                           and match)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if dataclasses.is_dataclass(o):
        return _jsonable(dataclasses.asdict(o))
    return o


def format_report(report: Dict[str, Any]) -> str:
    """The human table: graph, size, max abs diff vs PyTorch, detections match, status."""
    lines = [f"verified on {report['verify_images']} at batch {', '.join(map(str, report['verify_batches']))}",
             f"{'graph':<6} {'file':<18} {'size MB':>8} {'max abs diff':>13} {'detections':>11}  status",
             "-" * 70]
    for g, r in report["graphs"].items():
        match = "n/a" if r["detections_match"] is None else ("match" if r["detections_match"] else "DIFFER")
        lines.append(f"{g:<6} {Path(r['file']).name:<18} {r['size_mb']:>8.3f} {r['max_abs_diff']:>13.3e} {match:>11}  "
                     f"{'ok' if r['ok'] else 'FAILED'}")
        for n in r["notes"]:
            lines.append(f"       note: {n}")
    lat = report.get("latency")
    if lat:
        for bs in (1, 8):
            lines.append(f"CPU latency batch {bs} (p50, {lat['cpu']}): FP32 {lat[f'raw_b{bs}']['p50_ms']:.2f} ms, "
                         f"INT8 {lat[f'int8_b{bs}']['p50_ms']:.2f} ms -> INT8 x{lat[f'int8_speedup_b{bs}']:.2f}")
    mp = report.get("map")
    if mp and "skipped" in mp:
        lines.append(f"mAP: skipped ({mp['skipped']})")
    elif mp:
        s = f"mAP on {mp['dataset']}, first {mp['raw']['eval_images']}: FP32 {mp['raw']['mAP']:.2f}"
        if "int8" in mp:
            s += f", INT8 {mp['int8']['mAP']:.2f} (drop {mp['int8_map_drop']:.2f}, allowed {mp['int8_max_map_drop']})"
        lines.append(s)
    lines.append(f"{'all graphs verified' if report['ok'] else 'VERIFICATION FAILED'} in {report['seconds']:.1f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.onnx", formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument("--calib-images", metavar="DIR", help="calibration images for --int8 (default: the checkpoint's "
                                                         "training images, if on disk)")
    p.add_argument("--calib-count", type=int, default=128, help="calibration images used at most")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help="ONNX Runtime calibration method")
    p.add_argument("--plugin-version", default="auto",
                   help="EfficientNMS_TRT plugin_version: 'auto' ('1' without TensorRT or below 10.12, else the "
                        "highest version the installed TensorRT registers) or an explicit number")
    p.add_argument("--plugin-domain", default="trt.plugins",
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
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from export import data as xdata
    try:
        ckpt = Path(args.checkpoint) if args.checkpoint else xdata.find_latest_checkpoint(args.runs)
        out = Path(args.out) if args.out else xdata.default_export_dir(ckpt, args.runs)
        res = export_onnx(ckpt, out, int8=args.int8, calib_images=args.calib_images, calib_count=args.calib_count,
                          calib_method=args.calib_method, plugin_version=args.plugin_version,
                          plugin_domain=args.plugin_domain, opset=args.opset,
                          simplify_graphs=not args.no_simplify, verify_images=args.verify_images,
                          evaluate={"auto": "auto", "yes": True, "no": False}[args.evaluate],
                          eval_images=args.eval_images, int8_max_map_drop=args.int8_max_map_drop,
                          latency_iters=args.latency_iters, threads=args.threads, quiet=args.quiet)
    except ValueError as e:
        print(f"export.onnx: error: {e}", file=sys.stderr)
        return 2
    if args.quiet:
        print(f"export.onnx: {'ok' if res['ok'] else 'FAILED'} -> {res['report_path']}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
