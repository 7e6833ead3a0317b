"""One run measures every backend this machine has: speed, mAP and parity, in one report.

::

    python benchmarks/run.py --checkpoint runs/kd/best.pt --exports exports/kd --out reports/kd
    python benchmarks/run.py          # the newest runs/**/best.pt, exports/<run>, reports/<run>
    python benchmarks/run.py --quick  # few iterations, batch sizes 1 and 2, 4 images (tests, CI)
    python benchmarks/run.py --threads 1,2,all --streams all   # thread sweep, throughput mode

(``pip install -e .`` makes the ``benchmarks`` package importable from anywhere; in a checkout
that is not installed, ``python -m benchmarks.run`` from the repository root does the same.)

Per backend (:func:`plan_backends` below, one row each, ``unavailable`` with the reason when this
machine or the export folder lacks it): batch-1 latency model-only and end-to-end (decode +
preprocess + model + NMS), throughput per batch size, mAP on the validation images, parity
against ``pytorch-cpu``; plus the torchvision SSDlite320 peer, timed in the same run. OpenVINO runs
the same ONNX files (``openvino-cpu-*``), and as a CPU user would run our model (``peer-openvino-*``:
OpenVINO's defaults, latency and throughput hints). Each CPU row also gets its stage times, its
distance from the machine's limit (GEMM peak x the graph's FLOPs), throughput mode (``--streams``)
and a thread sweep (``--threads 1,2,all``): :mod:`benchmarks.sweep`.

Writes ``report.json`` (``machine``, ``backends``), ``report.md`` and ``fps.png`` to ``--out``.
Exit status: 0 all good; 1 a backend failed, a model file is broken (an ``error`` row: empty,
truncated, changed since export -- ``unavailable`` is only for a backend or device this machine
lacks), a parity check failed or an mAP is below ``--min-map``; 2 unusable arguments (no
checkpoint, bad paths).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.best_path import best_cpu_path
from benchmarks.machine import machine_facts
from benchmarks.peer import PEER_NAME
from benchmarks.report import REFERENCE, add_ratios, write_fps_plot, write_markdown
from benchmarks.streams import parse_streams
from benchmarks.sweep import SweepPlan, measure_extras, parse_threads
from benchmarks.timing import TimingConfig, busy_signs, measure, measure_stages
from runtime.atomic import write_json_atomic
from runtime.cli import command, fail, ProductParser
from runtime.errors import BackendUnavailable
from runtime.integrity import add_accept_modified
from runtime.metadata import read_sidecar

DEFAULT_BATCH_SIZES = (1, 8, 32)
QUICK_BATCH_SIZES = (1, 2)
QUICK_IMAGES = 4
ONNX_HOW = "python -m export.onnx"


# --------------------------------------------------------------------------------------------
# The backends, as a table.
# --------------------------------------------------------------------------------------------
@dataclass
class Backend:
    """One row of the report. ``build`` returns a Detector, or raises
    :class:`~runtime.errors.BackendUnavailable` when the machine cannot run it (-> ``unavailable``;
    any other error is a failure); ``reason`` set up front means unavailable without trying.
    ``sync`` is called inside each timed call (CUDA)."""

    name: str
    build: Callable[[], Any] | None = None
    reason: str = ""
    file: str | None = None
    sync: Callable[[], None] | None = None
    timed_only: bool = False  # the peer: speed only, no mAP / parity
    # CPU rows: reopen with other settings (threads=; OpenVINO also hint= and streams=) for the
    # thread sweep and throughput mode (benchmarks.sweep); streams: measured with --streams;
    # streams_auto: measured at the stream count OpenVINO's throughput hint picks, always.
    make: Callable[..., Any] | None = None
    openvino: bool = False
    streams: bool = False
    streams_auto: bool = False


def _onnx_row(name: str, exports: Path | None, filename: str, how: str, **load_kw: Any) -> Backend:
    from runtime.load import load_detector

    if exports is None:
        return Backend(name, reason=f"no export folder (pass --exports, or export with {ONNX_HOW})")
    path = exports / filename
    if not path.is_file():
        return Backend(name, reason=f"no {filename} in {exports} ({how})")
    cpu = str(load_kw.get("device", "cpu")) == "cpu"
    return Backend(name, build=lambda: load_detector(path, **load_kw), file=str(path),
                   make=(lambda **kw: load_detector(path, **{**load_kw, **kw})) if cpu else None,
                   streams=cpu and "provider" not in load_kw)


def _openvino_rows(rows: Sequence[Backend], threads: int | None, peer: bool) -> list[Backend]:
    """OpenVINO on the very files of the ONNX Runtime CPU rows (FP32 inference, as exported), and
    the OpenVINO peer rows: the NMS graph with OpenVINO's defaults, latency and throughput hints."""
    from benchmarks.peer import OPENVINO_PEER, openvino_peer
    from runtime.backends.openvino_backend import import_openvino
    from runtime.load import load_detector

    try:
        import_openvino()
        missing = ""
    except BackendUnavailable as e:
        missing = str(e)
    base = {"threads": threads} if threads else {}
    out = []
    for r in rows:
        if not r.name.startswith("onnxruntime-cpu-"):
            continue
        name = "openvino-cpu-" + r.name[len("onnxruntime-cpu-"):]
        if missing or r.build is None or r.file is None:
            out.append(Backend(name, reason=missing or r.reason))
            continue
        make = (lambda path=r.file, **kw: load_detector(path, **{"provider": "openvino", **base, **kw}))
        out.append(Backend(name, build=make, file=r.file, make=make, openvino=True, streams=True))
    nms = next((r for r in out if r.name == "openvino-cpu-nms"), None)
    out.append(_bf16_row(nms, base))
    for hint in ("latency", "throughput") if peer else ():
        name = f"{OPENVINO_PEER}-{hint}"
        if nms is None or nms.build is None:
            out.append(Backend(name, reason=nms.reason if nms else "no ONNX Runtime NMS row"))
            continue
        make = (lambda path=nms.file, hint=hint, **kw: openvino_peer(path, **{"hint": hint, **base, **kw}))
        out.append(Backend(name, build=make, file=nms.file, make=make, openvino=True, timed_only=True,
                           streams_auto=hint == "throughput"))
    return out


def _bf16_row(nms: Backend | None, base: dict[str, Any]) -> Backend:
    """The NMS graph in OpenVINO with bf16 inference (what its CPU default picks on AVX512-BF16 / AMX
    CPUs), scored like every product row so bf16 has an accuracy check and may be the path to deploy."""
    from runtime.backends.openvino_backend import cpu_has_bf16
    from runtime.load import load_detector

    name = "openvino-cpu-bf16-nms"
    if nms is None or nms.build is None:
        return Backend(name, reason=nms.reason if nms else "no ONNX Runtime NMS row")
    if not cpu_has_bf16():
        return Backend(name, reason="this CPU has no bf16 support (OpenVINO's OPTIMIZATION_CAPABILITIES)")
    make = (lambda path=nms.file, **kw: load_detector(path, **{"provider": "openvino", "precision": "bf16",
                                                             **base, **kw}))
    return Backend(name, build=make, file=nms.file, make=make, openvino=True, streams=True)


def _engines(exports: Path | None) -> dict[str, Path]:
    """precision -> engine file of the export folder (from each engine's sidecar)."""
    found: dict[str, Path] = {}
    if exports is None or not exports.is_dir():
        return found
    for p in sorted(exports.glob("*.engine")) + sorted(exports.glob("*.plan")):
        try:
            found.setdefault(read_sidecar(p).precision, p)
        except ValueError:
            continue
    return found


def _ort_providers() -> tuple[list[str], str]:
    """ONNX Runtime's execution providers here, or ([], why there are none)."""
    from runtime.backends.ort_backend import import_ort

    try:
        return list(import_ort().get_available_providers()), ""
    except BackendUnavailable as e:
        return [], str(e)


def _cpu_rows(checkpoint: Path, exports: Path | None, ort_eps: list[str], ort_missing: str,
              cpu_kw: dict[str, Any]) -> list[Backend]:
    from runtime.load import load_detector

    rows = [Backend("pytorch-cpu", build=lambda: load_detector(checkpoint, device="cpu", **cpu_kw),
                    file=str(checkpoint))]
    onnx = [("onnxruntime-cpu-raw", "model_raw.onnx", ONNX_HOW, {}),
            ("onnxruntime-cpu-nms", "model_nms.onnx", ONNX_HOW, {}),
            ("onnxruntime-cpu-int8", "model_int8.onnx", f"{ONNX_HOW} --int8", {}),
            ("onnxruntime-cpu-int8-nms", "model_int8_nms.onnx", f"{ONNX_HOW} --int8", {}),
            ("trt-reference-cpu", "model_trt.onnx", ONNX_HOW, {"provider": "reference"})]
    if not ort_eps:
        return rows + [Backend(name, reason=ort_missing) for name, *_ in onnx]
    return rows + [_onnx_row(name, exports, f, how, **kw, **cpu_kw) for name, f, how, kw in onnx]


def _gpu_rows(checkpoint: Path, exports: Path | None, ort_eps: list[str], accept_modified: bool = False
              ) -> list[Backend]:
    import torch

    from runtime.load import load_detector

    cuda = torch.cuda.is_available()
    rows = []
    for name, fp16 in (("pytorch-cuda-fp32", False), ("pytorch-cuda-fp16", True)):
        rows.append(Backend(name, build=(lambda f=fp16: load_detector(checkpoint, device="cuda", fp16=f)),
                            file=str(checkpoint), sync=torch.cuda.synchronize) if cuda
                    else Backend(name, reason="no CUDA device on this machine"))
    for name, ep, provider in (("onnxruntime-cuda-nms", "CUDAExecutionProvider", "cuda"),
                               ("onnxruntime-tensorrt-nms", "TensorrtExecutionProvider", "tensorrt")):
        if ep not in ort_eps:
            installed = ", ".join(ort_eps) or "none"
            rows.append(Backend(name, reason=f"onnxruntime here has no {ep} (installed: {installed})"))
        else:
            rows.append(_onnx_row(name, exports, "model_nms.onnx", ONNX_HOW, provider=provider, device="cuda",
                                  accept_modified=accept_modified))
    return rows


def _tensorrt_rows(exports: Path | None) -> list[Backend]:
    from runtime.load import load_detector

    engines = _engines(exports)
    rows = []
    for precision in ["fp16", "int8"] + sorted(set(engines) - {"fp16", "int8"}):
        name = f"tensorrt-{precision}"
        if precision in engines:
            rows.append(Backend(name, build=(lambda p=engines[precision]: load_detector(p, device="cuda")),
                                file=str(engines[precision])))
            continue
        try:
            from runtime.backends.trt_backend import import_tensorrt

            import_tensorrt()
            why = (f"no {precision} engine in {exports} (python -m export.trt --onnx "
                   f"{exports}/model_trt.onnx --{precision})") if exports else "no export folder"
        except BackendUnavailable as e:
            why = str(e)
        rows.append(Backend(name, reason=why))
    return rows


def plan_backends(checkpoint: Path, exports: Path | None, meta: Any, *, peer: bool = True,
                  threads: int | None = None, accept_modified: bool = False) -> list[Backend]:
    """Every backend the report has a row for, in report order. ``threads``: CPU threads of the
    PyTorch and ONNX Runtime CPU rows (default: every usable core). ``accept_modified``: run ONNX
    graphs that do not match the sha256 their sidecar records (``runtime.load.load_detector``)."""
    ort_eps, ort_missing = _ort_providers()
    cpu_kw = {"threads": threads} if threads else {}
    cpu_kw.update({"accept_modified": True} if accept_modified else {})
    rows = _cpu_rows(checkpoint, exports, ort_eps, ort_missing, cpu_kw)
    rows += _openvino_rows(rows, threads, peer)
    rows += _gpu_rows(checkpoint, exports, ort_eps, accept_modified)
    rows += _tensorrt_rows(exports)
    if peer:
        rows.append(Backend(PEER_NAME, build=lambda: _peer(meta, "cpu", threads), timed_only=True))
    return rows


def _peer(meta: Any, device: str, threads: int | None = None) -> Any:
    from benchmarks.peer import PeerDetector

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return PeerDetector(meta, device=device)


# --------------------------------------------------------------------------------------------
# Measuring one backend.
# --------------------------------------------------------------------------------------------
class _Cycle:
    """Batches of image files taken round-robin from a pool (decode is part of end-to-end)."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = list(files)
        self.i = 0

    def take(self, n: int) -> list[str]:
        out = [self.files[(self.i + k) % len(self.files)] for k in range(n)]
        self.i = (self.i + n) % len(self.files)
        return out


def measure_speed(det: Any, files: Sequence[str], batch_sizes: Sequence[int], cfg: TimingConfig,
                  sync: Callable[[], None] | None = None) -> dict[str, Any]:
    """Batch-1 latency (model-only and end-to-end) and throughput (images/s) per batch size."""
    pool = _Cycle(files)
    out: dict[str, Any] = {"latency_ms": {}, "throughput_ips": {}, "throughput_model_ips": {}}
    for bs in batch_sizes:
        x, _ = det.preprocess(pool.take(bs))
        x = x.copy()
        model = measure(lambda: det.run_batch(x), cfg, sync)
        e2e = measure(lambda: det(pool.take(bs)), cfg, sync)
        if bs == 1:
            out["latency_ms"] = {"e2e": e2e, "model": model}
        out["throughput_ips"][str(bs)] = bs * 1000.0 / e2e["mean"]
        out["throughput_model_ips"][str(bs)] = bs * 1000.0 / model["mean"]
    if getattr(det, "kind", None) in ("raw", "nms"):  # our pipeline: time each stage too
        out["stages_ms"] = measure_stages(det, files, cfg, sync)
    return out


def busy_flags(entry: dict[str, Any]) -> list[str]:
    """Signs that the machine was busy while this backend was timed: a wide spread of the batch-1
    timings, or model-only slower than end-to-end (which contains it). [] when the figures look sound."""
    lat = entry.get("latency_ms") or {}
    e2e, model = lat.get("e2e"), lat.get("model")
    flags = [f for what, st in (("end-to-end b1", e2e), ("model-only b1", model)) if st for f in busy_signs(st, what)]
    if e2e and model and (model["mean"] > e2e["mean"] or model["p50"] > e2e["p50"]):
        flags.append(f"model-only b1 ({model['mean']:.2f} ms mean, {model['p50']:.2f} median) above end-to-end b1 "
                     f"({e2e['mean']:.2f} ms, {e2e['p50']:.2f}), which contains it")
    return flags


def _map_text(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip(": ")


def _build(row: Backend, entry: dict[str, Any], log: Callable[[str], None]) -> Any | None:
    """The row's detector, or None with the entry saying why: ``unavailable`` when this machine
    cannot run it (BackendUnavailable, and only then), ``error`` for anything else: a broken model
    file (empty, truncated, changed since export) or one its backend refuses."""
    try:
        return row.build()
    except BackendUnavailable as e:
        entry["reason"] = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log(f"{row.name:<28} unavailable: {entry['reason']}")
    except Exception as e:  # noqa: BLE001 - a broken artefact is a failure to report, not a crash
        entry.update(status="error", reason=f"load: {_one_line(e)}")
        log(f"{row.name:<28} ERROR: {entry['reason']}")
    return None


def _score(entry: dict[str, Any], det: Any, row: Backend, dataset: Any, indices: Sequence[int],
           gt: dict[str, Any], reference: Any, batch_size: int) -> None:
    """mAP on the validation images and parity against the reference's detections."""
    from runtime.parity import compare_results, run_eval

    result = run_eval(det, dataset, indices, gt, batch_size=batch_size)
    entry["mAP"] = result.metrics["mAP"]
    entry.update({k: result.metrics.get(k) for k in ("APs", "APm", "APl")})  # NaN: no object of that size
    entry["per_class_ap"] = result.metrics.get("per_class")
    entry["_result"] = result
    if reference is not None and row.name != REFERENCE:
        entry["parity"] = compare_results(reference, result)


def run_backend(row: Backend, files: Sequence[str], batch_sizes: Sequence[int], cfg: TimingConfig,
                dataset: Any, indices: Sequence[int], gt: dict[str, Any], reference: Any,
                log: Callable[[str], None]) -> dict[str, Any]:
    """Build, time and score one backend; never raises (the row records what went wrong)."""
    entry: dict[str, Any] = {"name": row.name, "status": "unavailable", "reason": row.reason, "file": row.file,
                             "precision": None, "latency_ms": None, "throughput_ips": None,
                             "throughput_model_ips": None, "mAP": None, "parity": None, "busy": []}
    if row.build is None:
        log(f"{row.name:<28} unavailable: {row.reason}")
        return entry
    det = _build(row, entry, log)
    if det is None:
        return entry
    entry["precision"] = det.meta.precision
    if getattr(det, "precision_run", "f32") != "f32":  # OpenVINO lowering the precision by itself
        entry["precision"] += f" ({det.precision_run} inference)"
    t0 = time.perf_counter()
    try:
        entry.update(measure_speed(det, files, batch_sizes, cfg, row.sync))
        entry["busy"] = busy_flags(entry)
        if not row.timed_only:
            _score(entry, det, row, dataset, indices, gt, reference, max(batch_sizes))
        else:
            entry["reason"] = "timed only, no mAP" if row.openvino else "random weights: timed only, no mAP"
        entry["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        entry.update(status="failed", reason=_one_line(e))
        traceback.print_exc(file=sys.stderr)
    finally:
        det.close()
    lat = entry.get("latency_ms") or {}
    if entry["status"] == "ok":
        log(f"{row.name:<28} e2e b1 {lat['e2e']['mean']:7.2f} ms  model b1 {lat['model']['mean']:7.2f} ms  "
            f"mAP {_map_text(entry['mAP'])}  ({time.perf_counter() - t0:.1f} s)")
        if entry["busy"]:
            log(f"{'':<28} ! timing disturbed, the machine looks busy: {'; '.join(entry['busy'])} "
                f"(rerun on an idle machine before trusting these figures)")
    else:
        log(f"{row.name:<28} FAILED: {entry['reason']}")
    return entry


# --------------------------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------------------------
def image_files(dataset: Any, indices: Sequence[int], tmp: Path) -> list[str]:
    """Files of the dataset's images (so decode is timed); images without a file are written as PNG."""
    from PIL import Image

    files = []
    for i in indices:
        path = dataset.image_path(i) if hasattr(dataset, "image_path") else None
        if path is None or not Path(path).is_file():
            path = tmp / f"bench_{i}.png"
            Image.fromarray(dataset[i][0]).save(path)
        files.append(str(path))
    return files


def build_parser() -> argparse.ArgumentParser:
    # Defaults are stated in each help text: most are None, resolved later (quick mode, the checkpoint's own).
    p = ProductParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--checkpoint", default=None, help="PyTorch checkpoint (default: newest runs/**/best.pt)")
    p.add_argument("--exports", default=None, help="export folder (default: exports/<run name>)")
    p.add_argument("--out", default=None, help="report folder (default: reports/<run name>)")
    p.add_argument("--data", default=None, help="validation data spec (default: the checkpoint's own)")
    p.add_argument("--data-root", default=None, help="where the embedded shapes dataset lives")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8,32; quick: 1,2)")
    p.add_argument("--max-images", type=int, default=None, help="validation images for mAP/parity (default: all)")
    p.add_argument("--bench-images", type=int, default=32, help="image files cycled through while timing (default: 32)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before each measurement (default: 10; quick: 2)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per measurement, at least (default: 2.0; quick: 0.05)")
    p.add_argument("--min-iters", type=int, default=None, help="timed calls per measurement, at least (default: 10; quick: 3)")
    p.add_argument("--min-map", type=float, default=None, help="fail when a backend's mAP is below this")
    p.add_argument("--threads", default=None,
                   help="CPU threads of PyTorch, ONNX Runtime and OpenVINO (default: every usable core); a list "
                        "such as 1,2,all also times every CPU row at each count (interleaved rounds, the first "
                        "count for the full rows)")
    p.add_argument("--streams", default=None,
                   help="throughput mode: images/s at batch 1 with 1..N parallel streams (N, or 'all' = cores)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the --threads sweep (default 3, "
                                                           "quick 1); the median of the rounds is reported")
    p.add_argument("--only", default=None, help="comma-separated backend names to run (others: skipped)")
    p.add_argument("--no-peer", action="store_true", help="leave out the torchvision peer row")
    add_accept_modified(p)
    p.add_argument("--quick", action="store_true", help="few iterations, batch sizes 1,2, 4 images")
    return p


@dataclass
class Plan:
    """What one run measures, resolved from the command line."""

    checkpoint: Path
    exports: Path | None
    out: Path
    batch_sizes: list[int]
    timing: TimingConfig
    meta: Any
    data_spec: str
    dataset: Any
    indices: list[int]
    gt: dict[str, Any]


def _paths(args: argparse.Namespace) -> tuple[Path, Path | None, Path]:
    """(checkpoint, export folder or None, report folder); the newest run when none is named."""
    from export.data import find_latest_checkpoint, run_name

    checkpoint = Path(args.checkpoint) if args.checkpoint else find_latest_checkpoint("runs")
    if not checkpoint.exists():
        raise ValueError(f"--checkpoint {checkpoint} does not exist")
    name = run_name(checkpoint, "runs")
    exports = Path(args.exports) if args.exports else Path("exports") / name
    if args.exports and not exports.is_dir():
        raise ValueError(f"--exports {exports} is not a folder")
    out = Path(args.out) if args.out else Path("reports") / name
    return checkpoint, exports if exports.is_dir() else None, out


def _batch_sizes(args: argparse.Namespace) -> list[int]:
    batch_sizes = ([int(s) for s in args.batch_sizes.split(",") if s.strip()] if args.batch_sizes
                   else list(QUICK_BATCH_SIZES if args.quick else DEFAULT_BATCH_SIZES))
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    return batch_sizes if 1 in batch_sizes else [1] + batch_sizes  # batch-1 latency is always reported


def _timing(args: argparse.Namespace) -> TimingConfig:
    cfg = TimingConfig.quick() if args.quick else TimingConfig()
    for k in ("warmup", "min_time", "min_iters"):
        if getattr(args, k) is not None:
            setattr(cfg, k, getattr(args, k))
    return cfg


def make_plan(args: argparse.Namespace) -> Plan:
    """Resolve paths, batch sizes, timing and the validation data; ValueError / RuntimeError when
    the arguments are not usable."""
    from runtime.evaluate import data_for, open_dataset
    from runtime.evaluation import eval_subset
    from runtime.load import load_detector

    checkpoint, exports, out = _paths(args)
    batch_sizes, timing = _batch_sizes(args), _timing(args)
    max_images = args.max_images if args.max_images is not None else (QUICK_IMAGES if args.quick else None)
    ref_det = load_detector(checkpoint, device="cpu")
    try:
        data = data_for(ref_det, args.data, args.data_root)
    finally:
        ref_det.close()
    dataset = open_dataset(data, ref_det.meta)
    indices, gt = eval_subset(dataset, max_images)
    return Plan(checkpoint, exports, out, batch_sizes, timing, ref_det.meta, data.spec, dataset, indices, gt)


def run_rows(plan: Plan, rows: Sequence[Backend], bench_images: int, quick: bool,
             log: Callable[[str], None],
             after: Callable[[list[str], list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Every row, in order, against the reference row's detections (parity); then ``after(files,
    entries)`` while the image files are still there."""
    entries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        n_files = min(len(plan.dataset), max(bench_images, max(plan.batch_sizes) if quick else 1))
        files = image_files(plan.dataset, list(range(n_files)), Path(tmp))
        reference = None
        for row in rows:
            entry = run_backend(row, files, plan.batch_sizes, plan.timing, plan.dataset, plan.indices, plan.gt,
                                reference, log)
            if row.name == REFERENCE and entry["status"] == "ok":
                reference = entry["_result"]
            entries.append(entry)
        if after is not None:
            after(files, entries)
    for e in entries:
        e.pop("_result", None)
    add_ratios(entries, PEER_NAME)
    return entries


def failures_of(entries: Sequence[dict[str, Any]], min_map: float | None) -> list[str]:
    """One line per failed backend, failed parity check or mAP below ``min_map``."""
    failures = []
    for e in entries:
        if e["status"] in ("failed", "error"):
            failures.append(f"{e['name']} {e['status']}: {e['reason']}")
        if e.get("parity") is not None and not e["parity"]["ok"]:
            failures.append(f"{e['name']} parity: {'; '.join(e['parity']['reasons'])}")
        if min_map is not None and e["status"] == "ok" and e.get("mAP") is not None and e["mAP"] < min_map:
            failures.append(f"{e['name']} mAP {e['mAP']:.2f} < --min-map {min_map}")
    return failures


def write_report(plan: Plan, args: argparse.Namespace, machine: dict[str, Any], entries: list[dict[str, Any]],
                 failures: list[str], extras: dict[str, Any] | None = None) -> list[Path]:
    """report.json, report.md and fps.png in the report folder; returns their paths."""
    meta, cfg = plan.meta, plan.timing
    report = {
        "machine": machine,
        "checkpoint": str(plan.checkpoint), "exports": str(plan.exports) if plan.exports else None,
        "model_name": meta.model_name, "input_size": list(meta.input_size), "nms": meta.nms.to_dict(),
        "data": plan.data_spec, "map_images": len(plan.indices),
        "config": {"batch_sizes": plan.batch_sizes, "warmup": cfg.warmup, "min_time": cfg.min_time,
                   "min_iters": cfg.min_iters, "quick": bool(args.quick), "min_map": args.min_map,
                   "threads": args.threads or machine["cpu_cores_usable"], **(extras or {}).get("config", {})},
        "backends": entries, "ok": not failures, "failures": failures,
        "busy": [e["name"] for e in entries if e.get("busy")],
        "best_cpu_path": best_cpu_path(entries, REFERENCE),
        **{k: v for k, v in (extras or {}).items() if k != "config"},
    }
    plan.out.mkdir(parents=True, exist_ok=True)
    paths = [plan.out / "report.json", plan.out / "report.md", plan.out / "fps.png"]
    write_json_atomic(paths[0], report)
    write_markdown(report, paths[1])
    write_fps_plot(report, paths[2])
    return paths


def _sweep_plan(args: argparse.Namespace, timing: TimingConfig) -> SweepPlan:
    """--threads (a count or a list: the first count is the main pass's, set back on ``args.threads``),
    --streams and --rounds -> what :func:`benchmarks.sweep.measure_extras` measures."""
    from runtime.backends import cpu_cores

    counts = parse_threads(args.threads, cpu_cores())
    args.threads = counts[0] if counts else None
    if args.rounds is not None and args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    return SweepPlan(args.threads or cpu_cores(), counts, parse_streams(args.streams, cpu_cores()), rounds, timing)


@command("python benchmarks/run.py")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        from benchmarks.text import run_text_benchmark, text_checkpoint
        if text_checkpoint(_paths(args)[0]):  # the text / non-text classifier: its own rows (benchmarks.text)
            return run_text_benchmark(args, *_paths(args))
        plan = make_plan(args)
        sweep = _sweep_plan(args, plan.timing)
    except (ValueError, RuntimeError) as e:
        return fail(e)
    machine = machine_facts()
    log(f"benchmark {plan.checkpoint} | exports {plan.exports or '-'} | data {plan.data_spec} "
        f"({len(plan.indices)} images) | {machine['cpu']} x{machine['cpu_cores_usable']} | "
        f"GPU {machine['gpu'] or 'none'}")
    rows = plan_backends(plan.checkpoint, plan.exports, plan.meta, peer=not args.no_peer, threads=args.threads,
                         accept_modified=args.accept_modified)
    if args.only:
        keep = {s.strip() for s in args.only.split(",")} | {REFERENCE}
        rows = [r if r.name in keep else Backend(r.name, reason="skipped (--only)") for r in rows]
    extras: dict[str, Any] = {}
    entries = run_rows(plan, rows, args.bench_images, args.quick, log,
                       after=lambda files, got: extras.update(measure_extras(rows, got, files, sweep, plan.exports, log)))
    extras["config"] = {"threads_sweep": sweep.sweep, "streams": sweep.streams, "rounds": sweep.rounds}
    failures = failures_of(entries, args.min_map)
    paths = write_report(plan, args, machine, entries, failures, extras)
    log(f"best CPU path: {best_cpu_path(entries, REFERENCE)['verdict']}")
    log(f"wrote {', '.join(str(p) for p in paths)}")
    for f in failures:
        log(f"FAIL {f}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
