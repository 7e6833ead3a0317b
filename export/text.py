"""Text / non-text classifier checkpoint -> ``model.onnx`` (+ ``model_int8.onnx``) with sidecars, verified.

    python -m export.onnx --checkpoint runs/text_kd/best.pt --out exports/text_kd          # dispatches here
    python -m export.onnx --checkpoint runs/text_kd/best.pt --out exports/text_kd --int8
    python -m export.text --checkpoint runs/text_kd/best.pt --write-val data/text_val      # the embedded val split

Files written to ``out``:

    model.onnx        images float32 [B, 3, H, W] (normalised as the sidecar says) -> text_prob float32 [B]
                      (sigmoid of the image logit: the largest region probability) and region_prob_<g> float32
                      [B, g, g] per grid g (sigmoid of the region logits, row-major). Batch, H and W are
                      dynamic (``--fixed-size``: H x W fixed at the checkpoint's img_size); no NMS, no plugin.
    model_int8.onnx   (--int8) ONNX Runtime static INT8 (QDQ, uint8 activations, per-channel int8 weights) of
                      model.onnx, calibrated on images of the training split; the sigmoids stay float. Gated:
                      its F-measure on the validation images may be at most --int8-max-f-drop points (default
                      2.0) below FP32's, else the export fails (exit 1).
    model_u8.onnx     (--uint8-input) model.onnx taking the resized pixels as they are: images uint8 [B, H, W, 3]
                      RGB, cast / normalised / made NCHW inside the graph (:mod:`export.uint8_input`; sidecar
                      input_format "uint8_nhwc", which runtime.load_classifier follows); model_int8_u8.onnx the
                      same of model_int8.onnx. Checked against their float-input source on the same images
                      (probabilities within :data:`U8_ATOL`, INT8 :data:`U8_INT8_ATOL`; same decisions).
    export_report.json  what was checked (the table printed at the end, machine-readable)

Each graph has a sidecar ``<name>.json`` (:class:`runtime.metadata.ModelMeta`, task "text": input size,
mean / std, layout, grids, threshold, outputs, parameters, opset, sha256 of the file) mirrored in the ONNX
``metadata_props``. Every graph passes ``onnx.checker`` and shape inference and is compared with PyTorch on
validation images at batch 1 and 3 (and, when H x W is dynamic, at a second input size): max abs difference
of the probabilities (allowed :data:`PROB_ATOL`) and the same decisions at the threshold.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.artifacts import WrittenGraph, check_simplify_check, save_with_meta
from export.report import write_report
from runtime.classifier import TEXT_PROB, region_output, text_meta, text_output_names
from runtime.cli import ProductParser, command, fail

GRAPH_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
PROB_ATOL = 1e-4           # max |p_onnx - p_torch| of any probability, FP32 graph
U8_ATOL = 1e-5             # max |p_u8 - p_float| of a uint8-input graph against its float-input source
U8_INT8_ATOL = 1e-3        # the same for model_int8_u8.onnx: the head's float rounding (~1e-7) may move one
                           # activation across a quantization step
VERIFY_BATCHES = (1, 3)
INT8_MAX_F_DROP = 2.0      # points of F-measure INT8 may lose against FP32 on the validation images
DEFAULT_VAL_COUNT = 64     # validation images of the INT8 gate / the written embedded split
DEFAULT_CALIB_COUNT = 64
Log = Callable[[str], None]


def is_text_checkpoint(ck: Any) -> bool:
    """Whether a :class:`distill.checkpoint.Checkpoint` holds a text / non-text classifier."""
    from distill.text.models import TEXT_MODELS
    return ck.model_name in TEXT_MODELS or (ck.extra or {}).get("task") == "text"


def probability_module(model: Any, grids: Sequence[int]) -> Any:
    """What is exported (a ``torch.nn.Module``, eval mode): the model's dict output as probabilities,
    text_prob [B] (sigmoid of the image logit), then region_prob_<g> [B, g, g] (sigmoid of the region logits)
    for the grids in ascending order."""
    return _wrapper_class()(model, grids).eval()


@functools.cache
def _wrapper_class() -> type:
    import torch  # on use: the export command's parser imports this module

    class Probabilities(torch.nn.Module):
        def __init__(self, model: torch.nn.Module, grids: Sequence[int]) -> None:
            super().__init__()
            self.model, self.grids = model, tuple(sorted(int(g) for g in grids))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.model(x)
            return (torch.sigmoid(out["image_logit"]),
                    *(torch.sigmoid(out["region_logits"][g]) for g in self.grids))

    return Probabilities


@dataclass
class TextSource:
    """A text checkpoint read for export: the PyTorch model (eval, CPU), its sidecar metadata (graph
    "checkpoint"), the checkpoint's ``extra`` and parameter count."""

    path: str
    model_name: str
    model: Any
    meta: Any
    extra: dict[str, Any]
    params: int
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, checkpoint: Any) -> TextSource:
        """A checkpoint path (or a loaded Checkpoint); ValueError when it is not a usable text checkpoint."""
        from distill.checkpoint import Checkpoint, check_finite_weights, load_weights
        from distill.text.models import count_parameters, create_text_model
        ck = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.load(checkpoint)
        source = str(ck.path or "checkpoint")
        if not is_text_checkpoint(ck):
            raise ValueError(f"{source} is a {ck.model_name} checkpoint, not a text / non-text classifier")
        meta = text_meta(ck.model_name, ck.extra, source)
        weights = ck.ema or ck.model
        check_finite_weights(weights, source)
        model = create_text_model(ck.model_name, **ck.model_kwargs)
        load_weights(model, weights, source, f"the {ck.model_name} {ck.model_kwargs} it names")
        return cls(source, ck.model_name, model.eval(), meta, dict(ck.extra), count_parameters(model), dict(ck.config))

    @property
    def grids(self) -> list[int]:
        return sorted(self.meta.extra["grids"])

    @property
    def threshold(self) -> float:
        return float(self.meta.extra["threshold"])


# --------------------------------------------------------------------------- data the checks use
def _training_sets(src: TextSource) -> tuple[Any, Any] | None:
    """(train, validation) exactly as training built them (``distill.text.train.build_text_datasets`` from the
    checkpoint's config), or None when the checkpoint records no text data."""
    import contextlib
    data = (src.config.get("data") or {}).get("data")
    if not (isinstance(data, str) and (data == "text" or data.startswith("text:"))):
        return None
    from distill.checkpoint import Checkpoint
    from distill.text.train import build_text_datasets
    cfg = Checkpoint(model_name=src.model_name, model_kwargs={}, num_classes=1, model={},
                     config=src.config).train_config()
    with contextlib.redirect_stdout(io.StringIO()):        # its note about held-out images is the trainer's
        return build_text_datasets(cfg, tuple(src.meta.input_size))


def split_samples(src: TextSource, split: str, count: int) -> tuple[list[tuple[np.ndarray, np.ndarray, int]], str]:
    """Up to ``count`` items of ``split`` ("train" / "val") of the checkpoint's data, text and non-text
    alternating: ([(uint8 [H, W, 3] RGB image, float32 [N, 4] xyxy text boxes, label 0 / 1)], where from).
    The splits are training's; a checkpoint without a text data config gets the embedded generator's
    (training seed ``extra["seed"]`` or 0, validation that + the trainer's offset)."""
    from runtime.text_evaluate import interleaved
    sets = _training_sets(src)
    if sets is not None:
        ds = sets[0 if split == "train" else 1]
        order = interleaved(ds.labels())[:count]
        where = (src.config.get("data") or {}).get("val_data" if split == "val" else "data") or "text"
        return [ds.raw(i)[:3] for i in order], f"{split} split of {where} ({len(order)} images)"
    from distill.text.data import generate
    from distill.text.train import VAL_SEED_OFFSET
    seed = int(src.extra.get("seed", 0)) + (VAL_SEED_OFFSET if split == "val" else 0)
    samples = [generate(seed, i, tuple(src.meta.input_size)) for i in range(count)]
    return [(s.image, s.boxes, int(s.is_text)) for s in samples], f"embedded {split} split (seed {seed}, {count} images)"


def split_images(src: TextSource, split: str, count: int) -> tuple[list[np.ndarray], np.ndarray, str]:
    """:func:`split_samples` as (uint8 [H, W, 3] RGB images, int64 [N] labels, where from)."""
    items, where = split_samples(src, split, count)
    return [it[0] for it in items], np.asarray([it[2] for it in items], np.int64), where


def write_embedded_split(src: TextSource, out: str | Path, count: int = DEFAULT_VAL_COUNT) -> Path:
    """The checkpoint's validation split as a ``text:DIR`` folder (``text/``, ``nontext/`` PNG images and
    ``boxes.json``), so :mod:`runtime.evaluate` can read it without the generator. Returns the folder."""
    from PIL import Image

    from runtime.atomic import atomic_path, write_json_atomic
    root = Path(out)
    boxes: dict[str, list[list[float]]] = {}
    for i, (image, text_boxes, label) in enumerate(split_samples(src, "val", count)[0]):
        rel = f"{'text' if label else 'nontext'}/val_{i:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(root / rel) as tmp:
            Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
        if label:
            boxes[rel] = [[round(float(v), 2) for v in b] for b in text_boxes]
    write_json_atomic(root / "boxes.json", boxes)
    return root


# --------------------------------------------------------------------------- the graph
def export_text_graph(src: TextSource, out_dir: str | Path, *, opset: int = 17, dynamic_hw: bool = True,
                      simplify_graph: bool = True, notes: list[str] | None = None) -> WrittenGraph:
    """``model.onnx`` + sidecar in ``out_dir`` (checked, shape-inferred, simplified unless switched off)."""
    import onnx
    import torch

    from runtime.metadata import library_versions
    names = text_output_names(src.grids)
    h, w = src.meta.input_size
    axes = {"images": {0: "batch", **({2: "height", 3: "width"} if dynamic_hw else {})},
            **{n: {0: "batch"} for n in names}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(probability_module(src.model, src.grids), (torch.zeros(2, 3, h, w),), buf, dynamo=False,
                          input_names=["images"], output_names=names, dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True)
    model = check_simplify_check(onnx.load_from_string(buf.getvalue()), simplify_graph, notes if notes is not None
                                 else [])
    extra = {**src.meta.extra, "opset": opset, "params": src.params, "dynamic_hw": dynamic_hw,
             "input": {"name": "images", "dtype": "float32", "shape": ["B", 3, "H" if dynamic_hw else h,
                                                                     "W" if dynamic_hw else w]},
             "outputs": {TEXT_PROB: "float32 [B]", **{region_output(g): f"float32 [B, {g}, {g}]"
                                                       for g in src.grids}}}
    meta = dataclasses.replace(src.meta, graph="raw", precision="fp32", versions=library_versions(), extra=extra)
    return save_with_meta(model, Path(out_dir) / GRAPH_FILE, meta)


def torch_probabilities(src: TextSource, x: np.ndarray) -> dict[str, np.ndarray]:
    """PyTorch's graph outputs for float32 [B, 3, H, W]: ``text_prob`` [B], ``region_prob_<g>`` [B, g, g]."""
    import torch
    with torch.no_grad():
        outs = probability_module(src.model, src.grids)(torch.from_numpy(np.ascontiguousarray(x)))
    return {n: o.numpy() for n, o in zip(text_output_names(src.grids), outs)}


def onnx_probabilities(onnx_path: Path, x: np.ndarray, threads: int = 1) -> dict[str, np.ndarray]:
    """An ONNX Runtime CPU run of a text graph on float32 [B, 3, H, W] (a uint8 [B, H, W, 3] batch is fed as it
    is, for a uint8-input graph): output name -> array."""
    from export.verify import ort_session
    sess = ort_session(onnx_path, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    x = np.ascontiguousarray(x, np.uint8 if x.dtype == np.uint8 else np.float32)
    return dict(zip(names, sess.run(names, {"images": x})))


def compare_probabilities(got: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                          threshold: float) -> tuple[float, bool]:
    """(max |got - ref| over every probability output, whether the image-level decisions at ``threshold`` agree)."""
    diff = max(float(np.abs(got[n] - ref[n]).max()) for n in ref)
    return diff, bool(np.array_equal(got[TEXT_PROB] >= threshold, ref[TEXT_PROB] >= threshold))


def verify_text_graph(path: Path, src: TextSource, images: Sequence[np.ndarray], *, atol: float = PROB_ATOL,
                      dynamic_hw: bool = True, threads: int = 1) -> dict[str, Any]:
    """``path`` against PyTorch at batch 1 and 3 on ``images`` (and at a second H x W when dynamic): the row of
    the report (``max_abs_diff`` of any probability, ``decisions_match`` at the threshold, ``ok``, ``checks``)."""
    from runtime.preprocess import Preprocessor
    h, w = src.meta.input_size
    sizes = [(h, w)] + ([(max(32, h * 3 // 4), max(32, w * 5 // 4))] if dynamic_hw else [])
    checks, worst, same = [], 0.0, True
    for size in sizes:
        pre = Preprocessor(size, src.meta.mean, src.meta.std)
        for bs in VERIFY_BATCHES:
            x = pre(list(images[:bs]))[0]
            diff, agree = compare_probabilities(onnx_probabilities(path, x, threads), torch_probabilities(src, x),
                                                src.threshold)
            checks.append({"batch": bs, "size": list(size), "max_abs_diff": diff, "decisions_match": agree})
            worst, same = max(worst, diff), same and agree
    return {"file": str(path), "max_abs_diff": worst, "decisions_match": same, "atol": atol,
            "ok": worst <= atol and same, "checks": checks}


def verify_uint8_graph(u8_path: Path, source: Path, images: Sequence[np.ndarray], *, threshold: float,
                       atol: float = U8_ATOL, threads: int = 1) -> dict[str, Any]:
    """A uint8-input graph (images uint8 [B, H, W, 3]) against its float-input ``source`` on the same ``images`` at
    batch 1 and 3, each fed by :class:`runtime.preprocess.Preprocessor` in its own sidecar's input format: the row
    of the report (``max_abs_diff`` of any probability, ``decisions_match`` at ``threshold``, ``ok``)."""
    from runtime.metadata import read_sidecar
    from runtime.preprocess import Preprocessor
    pre_u8, pre_float = (Preprocessor.from_meta(read_sidecar(p)) for p in (u8_path, source))
    checks = []
    for bs in VERIFY_BATCHES:
        batch = list(images[:bs])
        diff, agree = compare_probabilities(onnx_probabilities(u8_path, pre_u8(batch)[0], threads),
                                            onnx_probabilities(source, pre_float(batch)[0], threads), threshold)
        checks.append({"batch": bs, "max_abs_diff": diff, "decisions_match": agree})
    worst = max(c["max_abs_diff"] for c in checks)
    same = all(c["decisions_match"] for c in checks)
    return {"file": str(u8_path), "source": source.name, "max_abs_diff": worst, "decisions_match": same,
            "atol": atol, "ok": worst <= atol and same, "checks": checks}


def write_uint8_graphs(graphs: dict[str, Path], src: TextSource, images: Sequence[np.ndarray], *, threads: int = 1,
                       log: Log = print) -> dict[str, dict[str, Any]]:
    """The uint8-input twin of each graph of ``graphs`` ("fp32" -> ``model_u8.onnx``, "int8" ->
    ``model_int8_u8.onnx``; :func:`export.uint8_input.write_uint8_input`), each checked against its source
    (:func:`verify_uint8_graph`). Adds them to ``graphs`` as "<name>_u8"; returns their report rows."""
    from export.uint8_input import UINT8_SUFFIX, write_uint8_input
    from runtime.metadata import read_sidecar
    h, w = src.meta.input_size
    rows = {}
    for g, path in list(graphs.items()):
        dynamic = read_sidecar(path).extra.get("dynamic_hw", True)
        extra = {"input": {"name": "images", "dtype": "uint8", "shape": ["B", "H" if dynamic else h,
                                                                          "W" if dynamic else w, 3]}}
        u8 = write_uint8_input(path, extra=extra)
        log(f"  wrote {u8.onnx} (uint8 [B,H,W,3] RGB input, normalised in the graph)")
        graphs[g + UINT8_SUFFIX] = u8.onnx
        atol = U8_INT8_ATOL if g == "int8" else U8_ATOL
        rows[g + UINT8_SUFFIX] = {**verify_uint8_graph(u8.onnx, path, images, threshold=src.threshold, atol=atol,
                                                       threads=threads), "size_mb": u8.size_mb, "notes": []}
    return rows


# --------------------------------------------------------------------------- INT8
def _float_tail(model_path: Path) -> list[str]:
    """Nodes ONNX Runtime must leave in float: the sigmoids (quantizing a probability to 8 bits gains nothing)."""
    import onnx
    return [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type == "Sigmoid"]


def quantize_text_graph(fp32: WrittenGraph, calib_images: Sequence[np.ndarray], *, calibration_source: str,
                        method: str = "minmax", per_channel: bool = True) -> tuple[WrittenGraph, dict[str, Any]]:
    """``model.onnx`` -> ``model_int8.onnx`` beside it: ONNX Runtime static quantization (QDQ, U8S8,
    per-channel weights unless ``per_channel`` is off) calibrated on ``calib_images`` through the runtime's
    preprocessing (:func:`export.quantize.quantize_raw_graph`); sidecar precision "int8"."""
    import onnx

    from export.artifacts import check_and_infer, count_qdq_model
    from export.quantize import quantize_raw_graph
    out = fp32.onnx.with_name(INT8_FILE)
    tmp = out.with_name(f".{out.stem}.quantized.tmp.onnx")
    try:
        info = quantize_raw_graph(fp32.onnx, tmp, list(calib_images), fp32.meta, exclude_nodes=_float_tail(fp32.onnx),
                                  method=method, per_channel=per_channel)
        q = check_and_infer(onnx.load(str(tmp)))
    finally:
        tmp.unlink(missing_ok=True)
    info.update(count_qdq_model(q))
    meta = dataclasses.replace(fp32.meta, graph="int8", precision="int8", onnx_sha256=None,
                               extra={**fp32.meta.extra, "quantization": info,
                                      "calibration_source": calibration_source})
    return save_with_meta(q, out, meta), info


def f_gate(graphs: dict[str, Path], src: TextSource, images: Sequence[np.ndarray], labels: np.ndarray, *,
           max_drop: float, threads: int = 1) -> dict[str, Any]:
    """P / R / F of each graph on the validation ``images`` (:func:`runtime.textdata.text_prf` at the
    sidecar threshold), INT8's F drop against FP32 (``ok`` False beyond ``max_drop`` points) and the share
    of images on which INT8 decides as FP32."""
    from runtime.preprocess import Preprocessor
    from runtime.textdata import text_prf
    x = Preprocessor.from_meta(src.meta)(list(images))[0]
    probs = {g: onnx_probabilities(p, x, threads)[TEXT_PROB] for g, p in graphs.items()}
    out: dict[str, Any] = {g: text_prf(p, labels, src.threshold) for g, p in probs.items()}
    out["images"] = len(images)
    if "int8" in probs:
        drop = out["fp32"]["f1"] - out["int8"]["f1"]
        agree = float(np.mean((probs["int8"] >= src.threshold) == (probs["fp32"] >= src.threshold)))
        out.update({"int8_f_drop": drop, "int8_max_f_drop": max_drop, "int8_decision_agreement": agree,
                    "int8_max_prob_diff": float(np.abs(probs["int8"] - probs["fp32"]).max()),
                    "ok": drop <= max_drop})
    return out


# --------------------------------------------------------------------------- all steps + the report
@dataclass
class TextExportOptions:
    """What :func:`export_text` does besides the FP32 graph."""

    int8: bool = False
    opset: int = 17
    dynamic_hw: bool = True
    simplify: bool = True
    calib_images: str | None = None
    calib_count: int = DEFAULT_CALIB_COUNT
    calib_method: str = "minmax"
    per_channel: bool = True
    val_count: int = DEFAULT_VAL_COUNT
    int8_max_f_drop: float = INT8_MAX_F_DROP
    threads: int = 1
    uint8_input: bool = False

    def check(self) -> None:
        """ValueError naming the first unusable option."""
        if not 13 <= int(self.opset) <= 20:
            raise ValueError(f"--opset must be in 13..20, got {self.opset}")
        if self.calib_count < 1 or self.val_count < 3:
            raise ValueError(f"--calib-count must be >= 1 and the validation images >= 3, got {self.calib_count}, "
                             f"{self.val_count}")
        if self.calib_images is not None and not self.int8:
            raise ValueError("--calib-images is only used with --int8")


def _calibration(src: TextSource, opts: TextExportOptions) -> tuple[list[Any], str]:
    if opts.calib_images:
        from export.data import list_images
        return [str(p) for p in list_images(opts.calib_images, limit=opts.calib_count)], str(opts.calib_images)
    images, _, where = split_images(src, "train", opts.calib_count)
    return images, where


def export_text(checkpoint: Any, out_dir: str | Path, opts: TextExportOptions | None = None,
                log: Log = print) -> dict[str, Any]:
    """Export a text checkpoint to ``out_dir`` and check it; returns the report (``ok``, ``graphs`` rows,
    ``prf`` with the INT8 gate, ``report_path``). ValueError for unusable options or checkpoints, before
    anything is written."""
    t0 = time.perf_counter()
    opts = opts or TextExportOptions()
    opts.check()
    src = checkpoint if isinstance(checkpoint, TextSource) else TextSource.load(checkpoint)
    val_images, val_labels, val_where = split_images(src, "val", opts.val_count)
    calib, calib_where = _calibration(src, opts) if opts.int8 else (None, None)
    out = Path(out_dir)
    log(f"export: {src.model_name} ({src.params / 1e6:.3f} M parameters, input {src.meta.input_size[0]}x"
        f"{src.meta.input_size[1]}, grids {src.grids}) from {src.path} -> {out}/")
    notes: list[str] = []
    fp32 = export_text_graph(src, out, opset=opts.opset, dynamic_hw=opts.dynamic_hw, simplify_graph=opts.simplify,
                             notes=notes)
    log(f"  wrote {fp32.onnx}")
    rows = {"fp32": {**verify_text_graph(fp32.onnx, src, val_images, dynamic_hw=opts.dynamic_hw,
                                         threads=opts.threads), "notes": notes, "size_mb": fp32.size_mb}}
    graphs = {"fp32": fp32.onnx}
    quant = None
    if opts.int8:
        log(f"  calibrating INT8 ({opts.calib_method}) on {calib_where} ...")
        int8, quant = quantize_text_graph(fp32, calib, calibration_source=str(calib_where), method=opts.calib_method,
                                          per_channel=opts.per_channel)
        graphs["int8"] = int8.onnx
        log(f"  wrote {int8.onnx}")
    prf = f_gate(graphs, src, val_images, val_labels, max_drop=opts.int8_max_f_drop, threads=opts.threads)
    if opts.int8:
        rows["int8"] = {"file": str(graphs["int8"]), "size_mb": int8.size_mb, "ok": prf["ok"],
                        "max_abs_diff": prf["int8_max_prob_diff"], "decisions_match": prf["int8_decision_agreement"],
                        "notes": [] if prf["ok"] else [f"F-measure {prf['int8_f_drop']:.2f} points below FP32 "
                                                       f"(allowed {opts.int8_max_f_drop})"]}
    if opts.uint8_input:
        rows.update(write_uint8_graphs(graphs, src, val_images, threads=opts.threads, log=log))
    report = {"task": "text", "checkpoint": src.path, "out_dir": str(out), "model": src.model_name,
              "params": src.params, "input_size": list(src.meta.input_size), "grids": src.grids,
              "threshold": src.threshold, "dynamic_hw": opts.dynamic_hw, "opset": opts.opset,
              "uint8_input": opts.uint8_input,
              "verify_images": val_where, "graphs": rows, "prf": prf, "quantization": quant,
              "calibration_source": calib_where, "ok": all(r["ok"] for r in rows.values()),
              "seconds": round(time.perf_counter() - t0, 2)}
    report["report_path"] = str(write_report(out / "export_report.json", report))
    return report


def format_text_report(report: dict[str, Any]) -> str:
    """The human table of :func:`export_text`'s report."""
    lines = [f"verified on {report['verify_images']} (batch {', '.join(map(str, VERIFY_BATCHES))}"
             f"{', two input sizes' if report['dynamic_hw'] else ''})",
             f"{'graph':<7} {'file':<18} {'size MB':>8} {'max abs diff':>13} {'decisions':>10}  "
             f"{'P':>5} {'R':>5} {'F':>5}  status", "-" * 89]
    for g, r in report["graphs"].items():
        m = report["prf"].get(g, {})
        agree = r["decisions_match"]
        agree_s = f"{100 * agree:.0f}%" if isinstance(agree, float) else ("same" if agree else "DIFFER")
        prf = (" ".join(f"{m[k]:5.1f}" for k in ("precision", "recall", "f1")) if m
               else f"{'-':>5} {'-':>5} {'-':>5}")           # a uint8 twin: same decisions as its source
        lines.append(f"{g:<7} {Path(r['file']).name:<18} {r['size_mb']:>8.3f} {r['max_abs_diff']:>13.3e} "
                     f"{agree_s:>10}  {prf}  {'ok' if r['ok'] else 'FAILED'}")
        lines.extend(f"        note: {n}" for n in r["notes"])
    lines.append(f"{'all graphs verified' if report['ok'] else 'VERIFICATION FAILED'} in {report['seconds']:.1f} s "
                 f"({report['params'] / 1e6:.3f} M parameters, threshold {report['threshold']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def add_text_flags(p: argparse.ArgumentParser) -> None:
    """The flags only a text checkpoint's export reads (shared by ``export.onnx`` and ``export.text``)."""
    p.add_argument("--fixed-size", action="store_true",
                   help="text classifier: H x W fixed at the checkpoint's img_size (default: dynamic H, W)")
    p.add_argument("--int8-max-f-drop", type=float, default=INT8_MAX_F_DROP,
                   help="text classifier: fail when INT8's F-measure on the validation images is more than this "
                        "many points below FP32's")
    p.add_argument("--val-count", type=int, default=DEFAULT_VAL_COUNT,
                   help="text classifier: validation images of the checks and of --write-val")


def options_from_args(args: argparse.Namespace) -> TextExportOptions:
    """The text export options of a parsed ``export.onnx`` / ``export.text`` command line."""
    return TextExportOptions(int8=args.int8, opset=args.opset, dynamic_hw=not args.fixed_size,
                             simplify=not args.no_simplify, calib_images=args.calib_images,
                             calib_count=args.calib_count, calib_method=args.calib_method,
                             per_channel=not args.int8_per_tensor, val_count=args.val_count,
                             int8_max_f_drop=args.int8_max_f_drop, threads=args.threads or 1,
                             uint8_input=bool(getattr(args, "uint8_input", False)))


def checkpoint_is_text(checkpoint: str | Path) -> bool:
    """Whether the checkpoint file (or run folder) holds a text / non-text classifier (ValueError if unreadable)."""
    from distill.checkpoint import Checkpoint
    return is_text_checkpoint(Checkpoint.load(checkpoint))


_DETECTOR_ONLY = ("fp16", "trt_int8")


def run_text_export(checkpoint: Any, out: Path, args: argparse.Namespace) -> int:
    """Export, print the table, return the exit status (0 verified, 1 a graph failed). ValueError for a
    detector-only flag."""
    given = [f"--{k.replace('_', '-')}" for k in _DETECTOR_ONLY if getattr(args, k, False)]
    if given:
        raise ValueError(f"{' '.join(given)}: detector graphs only; a text classifier exports model.onnx "
                         f"(+ --int8 model_int8.onnx, --uint8-input model_u8.onnx) and builds engines from it with "
                         f"python -m export.trt")
    log = (lambda _m: None) if args.quiet else print
    report = export_text(checkpoint, out, options_from_args(args), log=log)
    if args.quiet:
        print(f"export.onnx: {'ok' if report['ok'] else 'FAILED'} -> {report['report_path']}")
    else:
        print(format_text_report(report))
        print(f"report: {report['report_path']}")
    return 0 if report["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m export.text", formatter_class=argparse.RawDescriptionHelpFormatter,
                      allow_abbrev=False, description="Export a text / non-text classifier checkpoint to ONNX "
                      "(model.onnx, with --int8 model_int8.onnx), verified against PyTorch; or write its embedded "
                      "validation split to a folder (--write-val). Exit status: 0 ok, 1 a graph failed, 2 usage.")
    p.add_argument("--checkpoint", required=True, help="text classifier checkpoint (.pt or run folder)")
    p.add_argument("--out", help="output folder of the export")
    p.add_argument("--write-val", metavar="DIR", help="write the embedded validation split as a text:DIR folder")
    p.add_argument("--int8", action="store_true", help="also write model_int8.onnx (F-measure gated)")
    p.add_argument("--uint8-input", action="store_true",
                   help="also write model_u8.onnx (and model_int8_u8.onnx): uint8 [B,H,W,3] RGB input, normalised "
                        "inside the graph; the runtime feeds the resized pixels")
    p.add_argument("--calib-images", metavar="DIR", help="INT8 calibration images (default: the training split)")
    p.add_argument("--calib-count", type=int, default=DEFAULT_CALIB_COUNT, help="calibration images used at most")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--int8-per-tensor", action="store_true", help="one weight scale per tensor (default per channel)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (13..20)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final status line")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the checks")
    add_text_flags(p)
    return p


@command("python -m export.text")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.write_val:
            folder = write_embedded_split(TextSource.load(args.checkpoint), args.write_val, args.val_count)
            print(f"wrote {args.val_count} validation images to {folder} (use --data text:{folder})")
            return 0
        if not args.out:
            raise ValueError("--out is needed for an export (or --write-val DIR)")
        return run_text_export(args.checkpoint, Path(args.out), args)
    except ValueError as e:
        return fail(e, "export.text: error")


if __name__ == "__main__":
    sys.exit(main())
