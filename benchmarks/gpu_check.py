"""One unattended check of the GPU paths on a machine with an NVIDIA GPU: ``make gpu-check``.

    python -m benchmarks.gpu_check                       # the demo student, report in $OUT or reports/gpu_check
    python -m benchmarks.gpu_check --checkpoint runs/demo/student/best.pt --out /tmp/gpu_check --budget 540

It uses what is installed and downloads nothing (GPU hosts are often offline). Steps, each recorded
``ok`` / ``failed`` / ``skipped`` with the reason, the report rewritten after every step so that a
crash still leaves a usable one:

1. ``machine``    GPU, driver, CUDA of torch, ONNX Runtime providers, TensorRT, cuda-python / pycuda;
2. ``checkpoint`` --checkpoint, else the demo student runs/demo/student/best.pt, else the newest
                  runs/**/best.pt, else an untrained seeded SSD-Lite
                  (parity still means something, mAP does not: the report says so);
3. ``export``     python -m export.onnx --fp16 --int8 --trt-int8 (CPU; calibration on the checkpoint's data or
                  synthetic images), including the TensorRT 11 graphs model_trt_fp16 / _int8.onnx;
4. ``pytorch-cuda-fp32`` / ``-fp16``: detections against PyTorch CPU FP32 on the same images
                  (runtime.parity agreement, bound by precision) and batch-1 latency;
5. ``onnxruntime-cuda`` / ``onnxruntime-tensorrt``: the same, where those execution providers exist;
6. ``tensorrt-fp32`` / ``-fp16`` / ``-int8``: where ``tensorrt`` imports (TensorRT 11, or 10 on
                  Jetson), export.trt.build_engine (strongly typed or builder-flags path, its own check
                  against the CPU reference; log in build_logs/), then the same parity and latency;
                  CUDA buffers through cuda-python, pycuda as the fallback (the row says which);
7. ``benchmark``  benchmarks/run.py --quick on those rows (speed, mAP, parity), when the checkpoint's
                  validation data is on disk.

Writes ``gpu_check.json``, ``gpu_check.md`` and ``build_logs/`` under --out. Exit status: 0 every
step that ran passed, 1 a step failed, 2 no usable GPU (one line, nothing written).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runtime.atomic import write_json_atomic, write_text_atomic
from runtime.cli import command, ProductParser
from runtime.errors import BackendUnavailable

TRT_PRECISIONS = ("fp32", "fp16", "int8")
DEMO_STUDENT = Path("runs/demo/student/best.pt")  # what `make demo` trains
PARITY_IMAGES = 16


class Skip(Exception):
    """A step that cannot run here: recorded as ``skipped`` with this reason."""


class Report:
    """The steps so far, written as JSON + Markdown after each one."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.budget_s, self.t0 = out, budget_s, time.perf_counter()
        self.data: dict[str, Any] = {"steps": [], "ok": True}
        (out / "build_logs").mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path:
        return self.out / "build_logs" / f"{name}.log"

    def run(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(row, *args)`` as step ``name``: ``row`` collects its details; Skip / BackendUnavailable
        make it ``skipped``, any other exception ``failed`` (traceback in build_logs/<name>.log), a
        row with ``ok`` False ``failed``. Returns what ``fn`` returned (None unless ok)."""
        row: dict[str, Any] = {"name": name, "status": "ok"}
        t, result = time.perf_counter(), None
        try:
            if t - self.t0 > self.budget_s:
                raise Skip(f"time budget of {self.budget_s:.0f} s spent")
            result = fn(row, *args)
        except (Skip, BackendUnavailable) as e:
            row.update(status="skipped", reason=str(e).splitlines()[0] if str(e) else type(e).__name__)
        except Exception as e:  # noqa: BLE001 - a failed step must not end the check
            row.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            with open(self.log_path(name), "a", encoding="utf-8") as f:
                f.write(traceback.format_exc())
        row["seconds"] = round(time.perf_counter() - t, 2)
        if row["status"] == "failed" or row.get("ok") is False:
            self.data["ok"], row["status"] = False, "failed"
        self.data["steps"].append(row)
        print(f"gpu-check: {name}: {row['status']}{' - ' + row['reason'] if row.get('reason') else ''}", flush=True)
        self.write()
        return result if row["status"] == "ok" else None

    def write(self) -> None:
        write_json_atomic(self.out / "gpu_check.json", self.data)
        lines = ["# GPU check", "", f"overall: **{'ok' if self.data['ok'] else 'FAILED'}**", "",
                 "| step | status | seconds | agreement | latency b1 (ms) | reason |", "|---|---|---|---|---|---|"]
        for r in self.data["steps"]:
            agree = f"{r['agreement']:.3f} (>= {r.get('min_agreement')})" if "agreement" in r else ""
            lat = f"{r['latency_ms']['p50']:.2f}" if "latency_ms" in r else ""
            lines.append(f"| {r['name']} | {r['status']} | {r['seconds']} | {agree} | {lat} | {r.get('reason', '')} |")
        write_text_atomic(self.out / "gpu_check.md", "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- steps
def gpu_or_none() -> str | None:
    """Why this machine cannot run the check (one line), or None when PyTorch sees a CUDA GPU."""
    try:
        import torch
    except ImportError as e:
        return f"gpu-check: PyTorch is not importable ({e}): nothing to check here"
    if not torch.cuda.is_available():
        return (f"gpu-check: no NVIDIA GPU visible to PyTorch {torch.__version__} (CUDA build "
                f"{torch.version.cuda or 'none'}): this check needs an NVIDIA GPU and driver")
    return None


def machine_step(row: dict[str, Any]) -> None:
    import torch

    from benchmarks.machine import machine_facts
    from export.trt.env import import_cuda, import_tensorrt
    row.update(machine_facts())
    row["compute_capability"] = list(torch.cuda.get_device_capability(0))
    try:
        import onnxruntime
        row["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError as e:
        row["ort_providers"] = f"onnxruntime not importable: {e}"
    trt, why = import_tensorrt()
    row["tensorrt_import"] = trt.__version__ if trt is not None else why
    cuda, why = import_cuda()
    row["cuda_binding"] = cuda.kind if cuda is not None else why


def smoke_checkpoint(path: Path) -> Path:
    """A seeded, untrained SSD-Lite with spread class biases (so it detects something), for a host
    without a trained checkpoint: parity between backends still holds, mAP is meaningless."""
    import torch

    from distill.checkpoint import Checkpoint
    from distill.config import TrainConfig
    from distill.models import create_model
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilenetv2", 3)
    heads = [m for m in model.cls_head.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None]
    with torch.no_grad():
        for conv in heads[-6:]:
            conv.bias.uniform_(-1.5, 1.5)
    config = TrainConfig.from_dict({"model": "ssdlite_mobilenetv2", "img_size": 160, "score_threshold": 0.3},
                                   "gpu_check smoke model")
    Checkpoint.create(config, model.eval(), class_names=["a", "b", "c"], category_ids=[1, 2, 3],
                      best_map=0.0).save(path)
    return path


def checkpoint_step(row: dict[str, Any], given: str | None, out: Path) -> Path:
    from export.data import find_latest_checkpoint
    if given:
        path = Path(given)
        if not path.exists():
            raise FileNotFoundError(f"--checkpoint {path} does not exist")
        row.update(checkpoint=str(path), trained=True)
        return path
    try:
        path = DEMO_STUDENT if DEMO_STUDENT.is_file() else find_latest_checkpoint("runs")
        row.update(checkpoint=str(path), trained=True)
        return path
    except ValueError as e:
        row.update(checkpoint="untrained smoke model", trained=False, reason=f"{e}: untrained smoke model, "
                                                                             f"parity only")
        return smoke_checkpoint(out / "smoke" / "best.pt")


def check_images(checkpoint: Path) -> tuple[list[Any], str, Any]:
    """(parity images uint8 HWC RGB, where from, the validation dataset or None)."""
    from distill.checkpoint import Checkpoint
    from export import data as xdata
    cfg = Checkpoint.load(checkpoint).flat_config()
    ds, why = xdata.checkpoint_dataset(cfg, "val")
    if ds is not None:
        return xdata.dataset_images(ds, PARITY_IMAGES), f"validation images: {why}", ds
    return xdata.synthetic_images(PARITY_IMAGES, seed=0), f"synthetic images ({why})", None


def export_step(row: dict[str, Any], checkpoint: Path, out: Path, images: Sequence[Any]) -> Path:
    """export.onnx with --fp16 --int8 --trt-int8 into out/exports (calibration: the checkpoint's data, else
    the parity images written to a folder)."""
    from PIL import Image

    from distill.checkpoint import Checkpoint
    from export.data import calibration_images
    from export.onnx import export_onnx
    exports = out / "exports"
    calib_dir = None
    if calibration_images(1, cfg=Checkpoint.load(checkpoint).flat_config())[0] is None:
        calib_dir = out / "calibration_images"
        calib_dir.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            Image.fromarray(im).save(calib_dir / f"{i:03d}.png")
    res = export_onnx(checkpoint, exports, int8=True, fp16=True, trt_int8=True, calib_images=calib_dir, calib_count=64,
                      verify_images="auto", evaluate=False, latency_iters=5, quiet=True)
    row.update(ok=res["ok"], export_report=res["report_path"], calibration=str(calib_dir or "checkpoint data"),
               graphs={g: {"ok": r["ok"], "agreement": r.get("agreement"), "notes": r["notes"]}
                       for g, r in res["report"]["graphs"].items()})
    return exports


def parity_step(row: dict[str, Any], make: Callable[[], Any], reference: list[Any], images: Sequence[Any],
                precision: str, sync: Callable[[], None] | None = None) -> None:
    """Detections of ``make()`` on ``images`` against ``reference`` (PyTorch CPU FP32), with the
    precision's bound, and batch-1 latency (model only, warm-up excluded)."""
    from benchmarks.timing import TimingConfig, measure
    from runtime.parity import MIN_AGREEMENT, agreement
    det = make()
    try:
        a = agreement(reference, det(list(images)))
        x, _ = det.preprocess(list(images[:1]))
        row["latency_ms"] = measure(lambda: det.run_batch(x), TimingConfig(warmup=10, min_time=1.0), sync)
        row["detector"] = getattr(det, "name", type(det).__name__)
        cuda = getattr(det, "cuda", None)
        if cuda is not None:
            row["cuda_binding"] = getattr(cuda, "name", str(cuda))
    finally:
        det.close()
    bound = MIN_AGREEMENT.get(precision)
    row.update(agreement=a["agreement"], min_agreement=bound, parity=a, precision=precision,
               ok=bound is None or a["agreement"] >= bound)


def tensorrt_step(row: dict[str, Any], precision: str, exports: Path, calib_dir: Path | None, log_path: Path
                  ) -> Path:
    """Build (export.trt.build_engine) the engine of ``precision`` from model_trt.onnx."""
    from export.trt import BuildSettings, build_engine, check_environment
    check_environment()  # BackendUnavailable: no tensorrt / CUDA binding / GPU here -> skipped
    onnx = exports / "model_trt.onnx"
    s = BuildSettings(onnx=onnx, engine=exports / f"model_{precision}.engine", precision=precision, batch=(1, 1, 8),
                      timing_cache=exports / "timing.cache", calib_images=calib_dir if precision == "int8" else None,
                      calib_cache=exports / "calib.cache" if precision == "int8" else None, calib_count=64)
    with open(log_path, "a", encoding="utf-8") as f:
        rep = build_engine(s, log=lambda m: print(m, file=f, flush=True), verify=True)
    row.update(build_path=rep["build_path"], parsed_onnx=Path(rep["parsed_onnx"]).name,
               engine_check=rep.get("verification"), build_log=str(log_path))
    return s.engine


def benchmark_step(row: dict[str, Any], checkpoint: Path, exports: Path, out: Path, dataset: Any) -> None:
    """benchmarks/run.py --quick restricted to the CPU reference and the GPU rows."""
    from benchmarks.run import main as bench_main
    if dataset is None:
        raise Skip("the checkpoint's validation data is not on disk (benchmarks/run.py needs it for mAP)")
    only = ["pytorch-cpu", "pytorch-cuda-fp32", "pytorch-cuda-fp16", "onnxruntime-cuda-nms",
            "onnxruntime-tensorrt-nms"] + [f"tensorrt-{p}" for p in TRT_PRECISIONS]
    code = bench_main(["--checkpoint", str(checkpoint), "--exports", str(exports), "--out", str(out / "benchmark"),
                       "--quick", "--no-peer", "--max-images", "100", "--only", ",".join(only)])
    row.update(ok=code == 0, exit_status=code, report=str(out / "benchmark" / "report.md"))
    if code:
        row["reason"] = f"benchmarks/run.py exited {code} (see its report / the lines above)"


def _reference(row: dict[str, Any], checkpoint: Path) -> tuple[list[Any], list[Any], Any]:
    """The parity images and PyTorch CPU FP32's detections on them (the reference of every row)."""
    from runtime.load import load_detector
    images, where, dataset = check_images(checkpoint)
    with load_detector(checkpoint, device="cpu") as det:
        reference = det(list(images))
    row.update(images=where, reference_detections=sum(len(d["scores"]) for d in reference))
    return images, reference, dataset


def _gpu_rows(rep: Report, checkpoint: Path, exports: Path | None, images: list[Any], reference: list[Any]) -> None:
    import torch

    from runtime.load import load_detector

    def need_exports() -> Path:
        if exports is None:
            raise Skip("the export step did not succeed")
        return exports

    for p in ("fp32", "fp16"):
        rep.run(f"pytorch-cuda-{p}", parity_step,
                lambda p=p: load_detector(checkpoint, device="cuda", fp16=p == "fp16"), reference, images, p,
                torch.cuda.synchronize)
    for name, provider in (("onnxruntime-cuda", "cuda"), ("onnxruntime-tensorrt", "tensorrt")):
        rep.run(name, lambda row, provider=provider: parity_step(
            row, lambda: load_detector(need_exports() / "model_nms.onnx", provider=provider, device="cuda"),
            reference, images, "fp32"))
    calib = rep.out / "calibration_images"
    for p in TRT_PRECISIONS:
        def trt_row(row: dict[str, Any], p: str = p) -> None:
            engine = tensorrt_step(row, p, need_exports(), calib if calib.is_dir() else None,
                                   rep.log_path(f"tensorrt-{p}"))
            parity_step(row, lambda: load_detector(engine, device="cuda"), reference, images, p)
        rep.run(f"tensorrt-{p}", trt_row)


@command("python -m benchmarks.gpu_check")
def main(argv: Sequence[str] | None = None) -> int:
    p = ProductParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--checkpoint", help="checkpoint to check (default: runs/demo/student/best.pt, else the newest "
                                        "runs/**/best.pt, else an untrained smoke model)")
    p.add_argument("--out", default=os.environ.get("OUT") or "reports/gpu_check",
                   help="report folder (default: $OUT, else reports/gpu_check)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds after which remaining steps are skipped")
    args = p.parse_args(argv)
    why = gpu_or_none()
    if why:
        print(why, file=sys.stderr)
        return 2
    rep = Report(Path(args.out), args.budget)
    rep.run("machine", machine_step)
    checkpoint = rep.run("checkpoint", checkpoint_step, args.checkpoint, rep.out)
    found = rep.run("pytorch-cpu-reference", _reference, checkpoint) if checkpoint else None
    if found is not None:
        images, reference, dataset = found
        exports = rep.run("export", export_step, checkpoint, rep.out, images)
        _gpu_rows(rep, checkpoint, exports, images, reference)
        if exports is not None:
            rep.run("benchmark", benchmark_step, checkpoint, exports, rep.out, dataset)
    rep.data["seconds"] = round(time.perf_counter() - rep.t0, 1)
    rep.write()
    print(f"gpu-check: {'ok' if rep.data['ok'] else 'FAILED'} -> {rep.out / 'gpu_check.md'}")
    return 0 if rep.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
