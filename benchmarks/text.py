"""The text / non-text classifier's rows of ``python benchmarks/run.py`` (a text checkpoint comes here).

    python benchmarks/run.py --checkpoint runs/text_kd/best.pt --exports exports/text_kd [--data text:DIR]

One row per backend this machine has: PyTorch (the checkpoint, the reference), ONNX Runtime FP32 / INT8
(``model.onnx`` / ``model_int8.onnx``), OpenVINO FP32 / INT8 (the same files), TensorRT (one row per engine
of the export folder, ``tensorrt-<precision>``; unavailable without TensorRT and a GPU). Per row: batch-1
latency of the model alone (p50 / p90 / mean ms, warm-up excluded, :func:`benchmarks.timing.measure`),
parameters, P / R / F-measure on the validation images (:func:`runtime.textdata.text_prf` at the model's
threshold) and the parity of the
probabilities with PyTorch (max abs difference of ``text_prob``, share of equal decisions). CPU rows run
``--threads`` threads (default 1: the paper's CPU figure is one core's). Writes ``report.json`` and
``report.md``; exit status 1 when a backend fails or FP32 parity is broken.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import TimingConfig, measure
from runtime.atomic import write_json_atomic, write_text_atomic
from runtime.errors import BackendUnavailable

FP32_PROB_ATOL = 1e-4   # PyTorch vs an FP32 graph: any text probability
PAPER = {"student": {"ms_cpu": 54.03, "params_m": 0.087, "f": 93.0}, "teacher": {"ms_cpu": 2240.0, "params_m": 16.03,
                                                                                  "f": 95.7}}


def text_checkpoint(path: Path) -> bool:
    """Whether ``path`` (checkpoint file or run folder) holds a text / non-text classifier."""
    from export.text import checkpoint_is_text
    return checkpoint_is_text(path)


def _rows(checkpoint: Path, exports: Path | None, threads: int) -> list[tuple[str, Callable[[], Any] | None, str]]:
    """(name, builder or None, why unavailable) per backend."""
    from runtime.classifier import load_classifier
    rows: list[tuple[str, Callable[[], Any] | None, str]] = [
        ("pytorch-cpu", lambda: load_classifier(checkpoint, threads=threads), "")]
    for precision, file in (("fp32", "model.onnx"), ("int8", "model_int8.onnx")):
        path = exports / file if exports else None
        why = "" if path is not None and path.is_file() else f"no {file} in the export folder (python -m export.onnx" \
                                                              f"{' --int8' if precision == 'int8' else ''})"
        for backend in ("onnxruntime", "openvino"):
            make = (lambda p=path, b=backend: load_classifier(p, backend=b, threads=threads)) if not why else None
            rows.append((f"{backend}-cpu-{precision}", make, why))
    engines = sorted(exports.glob("*.engine")) if exports else []
    for engine in engines:                         # model_fp16.engine -> tensorrt-fp16 (on cuda:0)
        rows.append((f"tensorrt-{engine.stem.removeprefix('model_')}",
                     lambda p=engine: load_classifier(p, backend="tensorrt"), ""))
    if not engines:
        rows.append(("tensorrt", None, "no engine in the export folder (python -m export.trt --onnx model.onnx "
                                       "--fp16)"))
    return rows


def _validation(args: argparse.Namespace, checkpoint: Path, count: int) -> tuple[list[np.ndarray], np.ndarray, str]:
    """Validation images: ``--data text:DIR`` / ``text`` (the folder runtime.evaluate reads), else the
    checkpoint's own validation split (export.text.split_images)."""
    if args.data:
        from runtime.text_evaluate import interleaved, text_folder
        from runtime.textdata import TextFolder
        ds = TextFolder(text_folder(args.data, args.data_root))
        order = interleaved(ds.labels)[:count]
        return [ds[i][0] for i in order], ds.labels[order], f"text:{ds.root}"
    from export.text import TextSource, split_images
    return split_images(TextSource.load(checkpoint), "val", count)


def run_row(name: str, make: Callable[[], Any] | None, why: str, images: list[np.ndarray], labels: np.ndarray,
            timing: TimingConfig, reference: np.ndarray | None) -> dict[str, Any]:
    """One backend: build, P / R / F on the images, batch-1 latency of the model alone, parity with ``reference``
    (PyTorch's probabilities). Status ok / unavailable / failed."""
    from runtime.textdata import text_prf
    entry: dict[str, Any] = {"name": name, "status": "unavailable", "reason": why}
    if make is None:
        return entry
    try:
        clf = make()
    except BackendUnavailable as e:
        entry["reason"] = str(e)
        return entry
    try:
        probs = clf.probabilities(images)["text_prob"]
        x = clf.preprocess(images[:1]).copy()
        entry.update({"status": "ok", "reason": "", "model": clf.meta.model_name, "precision_graph": clf.meta.precision,
                      "params": clf.meta.extra.get("params"), "latency_b1_ms": measure(lambda: clf.infer(x), timing),
                      **text_prf(probs, labels, clf.threshold), "_probs": probs})
        if reference is not None:
            same = float(np.mean((probs >= clf.threshold) == (reference >= clf.threshold)))
            diff = float(np.abs(probs - reference).max())
            ok = clf.meta.precision != "fp32" or (diff <= FP32_PROB_ATOL and same == 1.0)
            entry["parity"] = {"max_abs_diff": diff, "decision_agreement": same, "ok": ok}
    except (ValueError, RuntimeError) as e:
        entry.update({"status": "failed", "reason": " ".join(str(e).split())[:300]})
    finally:
        clf.close()
    return entry


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# Text / non-text benchmark: {report['model_name']} ({report['checkpoint']})", "",
             f"* data: {report['data']}, {report['images']} images; CPU threads {report['threads']}; "
             f"parameters {report['params'] / 1e6:.3f} M", "",
             "| backend | status | p50 ms | p90 ms | P | R | F | parity (max diff, same decisions) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for e in report["backends"]:
        if e["status"] != "ok":
            lines.append(f"| {e['name']} | {e['status']}: {e['reason']} | | | | | | |")
            continue
        lat, par = e["latency_b1_ms"], e.get("parity")
        par_s = f"{par['max_abs_diff']:.1e}, {100 * par['decision_agreement']:.0f}%" if par else "reference"
        lines.append(f"| {e['name']} | ok | {lat['p50']:.2f} | {lat['p90']:.2f} | {e['precision']:.1f} | "
                     f"{e['recall']:.1f} | {e['f1']:.1f} | {par_s} |")
    p = PAPER["student"]
    lines += ["", f"Paper (student, TextDis, one Xeon E5-2620 core): {p['ms_cpu']} ms, {p['params_m']} M parameters, "
                  f"F {p['f']}."]
    return "\n".join(lines) + "\n"


def run_text_benchmark(args: argparse.Namespace, checkpoint: Path, exports: Path | None, out: Path) -> int:
    """Every text row, the report files, one line per row; exit status (0 ok, 1 a failure)."""
    threads = int(args.threads) if args.threads and str(args.threads).isdigit() else 1
    timing = TimingConfig.quick() if args.quick else TimingConfig()
    for k in ("warmup", "min_time", "min_iters"):
        if getattr(args, k, None) is not None:
            setattr(timing, k, getattr(args, k))
    count = args.max_images or (8 if args.quick else 200)
    images, labels, where = _validation(args, checkpoint, count)
    entries, reference = [], None
    for name, make, why in _rows(checkpoint, exports, threads):
        entry = run_row(name, make, why, images, labels, timing, reference)
        if name == "pytorch-cpu" and entry["status"] == "ok":
            reference = entry["_probs"]
        entries.append(entry)
        lat = entry.get("latency_b1_ms")
        print(f"{name:<22} {entry['status']:<11} " + (f"p50 {lat['p50']:.2f} ms  F {entry['f1']:.1f}" if lat
                                                     else entry["reason"]), flush=True)
    for e in entries:
        e.pop("_probs", None)
    failures = [f"{e['name']} {e['status']}: {e['reason']}" for e in entries if e["status"] == "failed"]
    failures += [f"{e['name']} parity" for e in entries if e.get("parity") and not e["parity"]["ok"]]
    params = next((e["params"] for e in entries if e.get("params")), 0) or 0
    report = {"task": "text", "checkpoint": str(checkpoint), "exports": str(exports) if exports else None,
              "model_name": entries[0].get("model", Path(checkpoint).stem), "data": where,
              "images": len(images), "threads": threads, "params": params, "backends": entries,
              "paper": PAPER, "ok": not failures, "failures": failures}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", _markdown(report))
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}")
    for f in failures:
        print(f"FAIL {f}")
    return 0 if not failures else 1
