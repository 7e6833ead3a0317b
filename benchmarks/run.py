"""One run measures every backend this machine has: speed, mAP and parity, in one report.

::

    python benchmarks/run.py --checkpoint runs/kd/best.pt --exports exports/kd --out reports/kd
    python benchmarks/run.py          # the newest runs/**/best.pt, exports/<run>, reports/<run>
    python benchmarks/run.py --quick  # few iterations, batch sizes 1 and 2, 4 images (tests, CI)

Per backend (``BACKENDS`` below, one row each, ``unavailable`` with the reason when this
machine or the export folder lacks it): batch-1 latency model-only and end-to-end (decode +
preprocess + model + NMS), throughput per batch size, mAP on the validation images, parity
against ``pytorch-cpu``; plus the torchvision SSDlite320 peer, timed in the same run.

Writes ``report.json`` (``machine``, ``backends``), ``report.md`` and ``fps.png`` to ``--out``.
Exit status: 0 all good; 1 a backend failed, a parity check failed or an mAP is below
``--min-map``; 2 unusable arguments (no checkpoint, bad paths).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks.machine import machine_facts  # noqa: E402
from benchmarks.peer import PEER_NAME  # noqa: E402
from benchmarks.report import REFERENCE, add_ratios, write_fps_plot, write_markdown  # noqa: E402
from benchmarks.timing import TimingConfig, measure  # noqa: E402
from runtime.metadata import read_sidecar, write_json_atomic  # noqa: E402

DEFAULT_BATCH_SIZES = (1, 8, 32)
QUICK_BATCH_SIZES = (1, 2)
QUICK_IMAGES = 4


# --------------------------------------------------------------------------------------------
# The backends, as a table.
# --------------------------------------------------------------------------------------------
@dataclass
class Backend:
    """One row of the report. ``build`` returns a Detector, or raises RuntimeError when the
    machine cannot run it (-> ``unavailable``); ``reason`` set up front means unavailable
    without trying. ``sync`` is called inside each timed call (CUDA)."""

    name: str
    build: Optional[Callable[[], Any]] = None
    reason: str = ""
    file: Optional[str] = None
    sync: Optional[Callable[[], None]] = None
    timed_only: bool = False  # the peer: speed only, no mAP / parity


def _onnx_row(name: str, exports: Optional[Path], filename: str, how: str, **load_kw: Any) -> Backend:
    from runtime.detector import load_detector

    if exports is None:
        return Backend(name, reason="no export folder (pass --exports, or export with python -m export.onnx)")
    path = exports / filename
    if not path.is_file():
        return Backend(name, reason=f"no {filename} in {exports} ({how})")
    return Backend(name, build=lambda: load_detector(path, **load_kw), file=str(path))


def _engines(exports: Optional[Path]) -> Dict[str, Path]:
    """precision -> engine file of the export folder (from each engine's sidecar)."""
    found: Dict[str, Path] = {}
    if exports is None or not exports.is_dir():
        return found
    for p in sorted(exports.glob("*.engine")) + sorted(exports.glob("*.plan")):
        try:
            found.setdefault(read_sidecar(p).precision, p)
        except ValueError:
            continue
    return found


def plan_backends(checkpoint: Path, exports: Optional[Path], meta: Any, *, peer: bool = True,
                  threads: Optional[int] = None) -> List[Backend]:
    """Every backend the report has a row for, in report order. ``threads``: CPU threads of the
    PyTorch and ONNX Runtime CPU rows (default: every usable core)."""
    import torch

    from runtime.backends.ort_backend import import_ort
    from runtime.detector import load_detector

    cuda = torch.cuda.is_available()
    no_gpu = "no CUDA device on this machine"
    cuda_sync = torch.cuda.synchronize if cuda else None
    try:
        ort_eps = import_ort().get_available_providers()
    except RuntimeError as e:
        ort_eps = []
        ort_missing = str(e)
    cpu_kw = {"threads": threads} if threads else {}
    rows = [Backend("pytorch-cpu", build=lambda: load_detector(checkpoint, device="cpu", **cpu_kw),
                    file=str(checkpoint))]
    if ort_eps:
        rows += [
            _onnx_row("onnxruntime-cpu-raw", exports, "model_raw.onnx", "python -m export.onnx", **cpu_kw),
            _onnx_row("onnxruntime-cpu-nms", exports, "model_nms.onnx", "python -m export.onnx", **cpu_kw),
            _onnx_row("onnxruntime-cpu-int8", exports, "model_int8.onnx", "python -m export.onnx --int8", **cpu_kw),
            _onnx_row("trt-reference-cpu", exports, "model_trt.onnx", "python -m export.onnx", provider="reference",
                      **cpu_kw),
        ]
    else:
        rows += [Backend(n, reason=ort_missing) for n in ("onnxruntime-cpu-raw", "onnxruntime-cpu-nms",
                                                          "onnxruntime-cpu-int8", "trt-reference-cpu")]
    # GPU rows.
    for name, fp16 in (("pytorch-cuda-fp32", False), ("pytorch-cuda-fp16", True)):
        rows.append(Backend(name, build=(lambda f=fp16: load_detector(checkpoint, device="cuda", fp16=f)),
                            file=str(checkpoint), sync=cuda_sync) if cuda else Backend(name, reason=no_gpu))
    for name, ep in (("onnxruntime-cuda-nms", "CUDAExecutionProvider"),
                     ("onnxruntime-tensorrt-nms", "TensorrtExecutionProvider")):
        if ep not in ort_eps:
            rows.append(Backend(name, reason=f"onnxruntime here has no {ep} (installed: {', '.join(ort_eps) or 'none'})"))
        else:
            provider = "cuda" if ep.startswith("CUDA") else "tensorrt"
            rows.append(_onnx_row(name, exports, "model_nms.onnx", "python -m export.onnx",
                                  provider=provider, device="cuda"))
    engines = _engines(exports)
    for precision in ["fp16", "int8"] + sorted(set(engines) - {"fp16", "int8"}):
        name = f"tensorrt-{precision}"
        if precision in engines:
            rows.append(Backend(name, build=(lambda p=engines[precision]: load_detector(p, device="cuda")),
                                file=str(engines[precision])))
        else:
            try:
                from runtime.backends.trt_backend import import_tensorrt

                import_tensorrt()
                why = (f"no {precision} engine in {exports} (python -m export.trt --onnx "
                       f"{exports}/model_trt.onnx --{precision})") if exports else "no export folder"
            except RuntimeError as e:
                why = str(e)
            rows.append(Backend(name, reason=why))
    if peer:
        rows.append(Backend(PEER_NAME, build=lambda: _peer(meta, "cpu", threads), timed_only=True))
    return rows


def _peer(meta: Any, device: str, threads: Optional[int] = None) -> Any:
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

    def take(self, n: int) -> List[str]:
        out = [self.files[(self.i + k) % len(self.files)] for k in range(n)]
        self.i = (self.i + n) % len(self.files)
        return out


def measure_speed(det: Any, files: Sequence[str], batch_sizes: Sequence[int], cfg: TimingConfig,
                  sync: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
    """Batch-1 latency (model-only and end-to-end) and throughput (images/s) per batch size."""
    pool = _Cycle(files)
    out: Dict[str, Any] = {"latency_ms": {}, "throughput_ips": {}, "throughput_model_ips": {}}
    for bs in batch_sizes:
        x, _ = det.preprocess(pool.take(bs))
        x = x.copy()
        model = measure(lambda: det.run_batch(x), cfg, sync)
        e2e = measure(lambda: det(pool.take(bs)), cfg, sync)
        if bs == 1:
            out["latency_ms"] = {"e2e": e2e, "model": model}
        out["throughput_ips"][str(bs)] = bs * 1000.0 / e2e["mean"]
        out["throughput_model_ips"][str(bs)] = bs * 1000.0 / model["mean"]
    return out


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip(": ")


def run_backend(row: Backend, files: Sequence[str], batch_sizes: Sequence[int], cfg: TimingConfig,
                dataset: Any, indices: Sequence[int], gt: Dict[str, Any], reference: Any,
                log: Callable[[str], None]) -> Dict[str, Any]:
    """Build, time and score one backend; never raises (the row records what went wrong)."""
    from runtime.parity import compare_results, run_eval

    entry: Dict[str, Any] = {"name": row.name, "status": "unavailable", "reason": row.reason, "file": row.file,
                             "precision": None, "latency_ms": None, "throughput_ips": None,
                             "throughput_model_ips": None, "mAP": None, "parity": None}
    if row.build is None:
        log(f"{row.name:<28} unavailable: {row.reason}")
        return entry
    try:
        det = row.build()
    except RuntimeError as e:  # the machine cannot run it: one line, by contract of the backends
        entry["reason"] = str(e).splitlines()[0]
        log(f"{row.name:<28} unavailable: {entry['reason']}")
        return entry
    except Exception as e:  # noqa: BLE001 - a broken artefact is a failure to report, not a crash
        entry.update(status="failed", reason=f"load: {_one_line(e)}")
        log(f"{row.name:<28} FAILED to load: {entry['reason']}")
        return entry
    entry["precision"] = det.meta.precision
    t0 = time.perf_counter()
    try:
        entry.update(measure_speed(det, files, batch_sizes, cfg, row.sync))
        if not row.timed_only:
            result = run_eval(det, dataset, indices, gt, batch_size=max(batch_sizes))
            entry["mAP"] = result.metrics["mAP"]
            entry["per_class_ap"] = result.metrics.get("per_class")
            entry["_result"] = result
            if reference is not None and row.name != REFERENCE:
                entry["parity"] = compare_results(reference, result)
        else:
            entry["reason"] = "random weights: timed only, no mAP"
        entry["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        entry.update(status="failed", reason=_one_line(e))
        traceback.print_exc(file=sys.stderr)
    finally:
        det.close()
    lat = entry.get("latency_ms") or {}
    if entry["status"] == "ok":
        log(f"{row.name:<28} e2e b1 {lat['e2e']['mean']:7.2f} ms  model b1 {lat['model']['mean']:7.2f} ms  "
            f"mAP {entry['mAP'] if entry['mAP'] is None else round(entry['mAP'], 2)}  "
            f"({time.perf_counter() - t0:.1f} s)")
    else:
        log(f"{row.name:<28} FAILED: {entry['reason']}")
    return entry


# --------------------------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------------------------
def latest_run(runs: Path = Path("runs")) -> Path:
    """The newest ``runs/**/best.pt`` (by modification time), as ``python -m export.onnx`` picks it."""
    cands = sorted(runs.glob("**/best.pt"), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []
    if not cands:
        raise ValueError(f"no {runs}/**/best.pt found: train first (python -m distill.train) or pass --checkpoint")
    return cands[-1]


def run_name(checkpoint: Path, runs: Path = Path("runs")) -> str:
    """``runs/kd/best.pt`` -> ``kd``, ``runs/demo/student/best.pt`` -> ``demo/student`` (export's naming)."""
    from export.data import run_name as export_run_name

    return export_run_name(checkpoint, runs)


def image_files(dataset: Any, indices: Sequence[int], tmp: Path) -> List[str]:
    """Files of the dataset's images (so decode is timed); images without a file are written as PNG."""
    from PIL import Image

    files = []
    for i in indices:
        rec = getattr(dataset, "records", None)
        path = getattr(rec[i], "path", None) if rec is not None else None
        if path is None and hasattr(dataset, "img_dir"):
            path = Path(dataset.img_dir) / dataset.images[i]["file_name"]
        if path is None or not Path(path).is_file():
            path = tmp / f"bench_{i}.png"
            Image.fromarray(dataset[i][0]).save(path)
        files.append(str(path))
    return files


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="PyTorch checkpoint (default: newest runs/**/best.pt)")
    p.add_argument("--exports", default=None, help="export folder (default: exports/<run name>)")
    p.add_argument("--out", default=None, help="report folder (default: reports/<run name>)")
    p.add_argument("--data", default=None, help="validation data spec (default: the checkpoint's own)")
    p.add_argument("--data-root", default=None, help="where the embedded shapes dataset lives")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8,32; quick: 1,2)")
    p.add_argument("--max-images", type=int, default=None, help="validation images for mAP/parity (default: all)")
    p.add_argument("--bench-images", type=int, default=32, help="image files cycled through while timing")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before each measurement")
    p.add_argument("--min-time", type=float, default=None, help="seconds per measurement (at least)")
    p.add_argument("--min-iters", type=int, default=None, help="timed calls per measurement (at least)")
    p.add_argument("--min-map", type=float, default=None, help="fail when a backend's mAP is below this")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of PyTorch and ONNX Runtime (default: every usable core)")
    p.add_argument("--only", default=None, help="comma-separated backend names to run (others: skipped)")
    p.add_argument("--no-peer", action="store_true", help="leave out the torchvision peer row")
    p.add_argument("--quick", action="store_true", help="few iterations, batch sizes 1,2, 4 images")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        checkpoint = Path(args.checkpoint) if args.checkpoint else latest_run()
        if not checkpoint.exists():
            raise ValueError(f"--checkpoint {checkpoint} does not exist")
        name = run_name(checkpoint)
        exports = Path(args.exports) if args.exports else Path("exports") / name
        if args.exports and not exports.is_dir():
            raise ValueError(f"--exports {exports} is not a folder")
        exports = exports if exports.is_dir() else None
        out = Path(args.out) if args.out else Path("reports") / name
        batch_sizes = ([int(s) for s in args.batch_sizes.split(",") if s.strip()] if args.batch_sizes
                       else list(QUICK_BATCH_SIZES if args.quick else DEFAULT_BATCH_SIZES))
        if not batch_sizes or min(batch_sizes) < 1:
            raise ValueError(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
        if 1 not in batch_sizes:
            batch_sizes = [1] + batch_sizes  # batch-1 latency is always reported
        cfg = TimingConfig.quick() if args.quick else TimingConfig()
        for k in ("warmup", "min_time", "min_iters"):
            if getattr(args, k) is not None:
                setattr(cfg, k, getattr(args, k))
        max_images = args.max_images if args.max_images is not None else (QUICK_IMAGES if args.quick else None)

        from runtime.detector import load_detector
        from runtime.evaluate import DataSpec, default_data, open_dataset, subset

        ref_det = load_detector(checkpoint, device="cpu")
        meta = ref_det.meta
        ref_det.close()
        data = DataSpec(args.data, args.data_root or "data") if args.data else \
            default_data(meta, ref_det.checkpoint.get("config"))
        if args.data_root:
            data.data_root = args.data_root
        dataset = open_dataset(data, meta)
        indices, gt = subset(dataset, max_images)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    machine = machine_facts()
    log(f"benchmark {checkpoint} | exports {exports or '-'} | data {data.spec} ({len(indices)} images) | "
        f"{machine['cpu']} x{machine['cpu_cores_usable']} | GPU {machine['gpu'] or 'none'}")
    rows = plan_backends(checkpoint, exports, meta, peer=not args.no_peer, threads=args.threads)
    if args.only:
        keep = {s.strip() for s in args.only.split(",")} | {REFERENCE}
        rows = [r if r.name in keep else Backend(r.name, reason="skipped (--only)") for r in rows]
    entries: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        n_files = min(len(dataset), max(args.bench_images, max(batch_sizes) if args.quick else 1))
        files = image_files(dataset, list(range(n_files)), Path(tmp))
        reference = None
        for row in rows:
            entry = run_backend(row, files, batch_sizes, cfg, dataset, indices, gt, reference, log)
            if row.name == REFERENCE and entry["status"] == "ok":
                reference = entry["_result"]
            entries.append(entry)
    for e in entries:
        e.pop("_result", None)
    add_ratios(entries, PEER_NAME)

    failures = []
    for e in entries:
        if e["status"] == "failed":
            failures.append(f"{e['name']} failed: {e['reason']}")
        if e.get("parity") is not None and not e["parity"]["ok"]:
            failures.append(f"{e['name']} parity: {'; '.join(e['parity']['reasons'])}")
        if args.min_map is not None and e["status"] == "ok" and e.get("mAP") is not None and e["mAP"] < args.min_map:
            failures.append(f"{e['name']} mAP {e['mAP']:.2f} < --min-map {args.min_map}")
    report = {
        "machine": machine,
        "checkpoint": str(checkpoint), "exports": str(exports) if exports else None,
        "model_name": meta.model_name, "input_size": list(meta.input_size), "nms": meta.nms.to_dict(),
        "data": data.spec, "map_images": len(indices),
        "config": {"batch_sizes": batch_sizes, "warmup": cfg.warmup, "min_time": cfg.min_time,
                   "min_iters": cfg.min_iters, "quick": bool(args.quick), "min_map": args.min_map,
                   "threads": args.threads or machine["cpu_cores_usable"]},
        "backends": entries, "ok": not failures, "failures": failures,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    write_markdown(report, out / "report.md")
    write_fps_plot(report, out / "fps.png")
    log(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'fps.png'}")
    for f in failures:
        log(f"FAIL {f}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
