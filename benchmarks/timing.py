"""Timing with warm-up excluded, device synchronised, a minimum run time per measurement.

Each call of the measured function is timed on its own (``time.perf_counter``) so the spread is
real: mean, std, p50, p90, p99 in milliseconds over the timed calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


@dataclass
class TimingConfig:
    """``warmup`` untimed calls, then timed calls until both ``min_time`` seconds and
    ``min_iters`` calls are reached, or ``max_iters`` calls."""

    warmup: int = 10
    min_time: float = 2.0
    min_iters: int = 10
    max_iters: int = 10_000

    @classmethod
    def quick(cls) -> "TimingConfig":
        return cls(warmup=2, min_time=0.05, min_iters=3, max_iters=50)


def add_step_args(p, what: str, out: str, steps: int) -> None:
    """The arguments of the training-step benchmarks (benchmarks/train_step.py, kd_step.py): ``--steps`` timed
    and ``--warmup`` untimed steps per ``what``, ``--threads``, ``--device``, ``--out``."""
    p.add_argument("--steps", type=int, default=steps, help=f"timed steps per {what} (default: {steps})")
    p.add_argument("--warmup", type=int, default=1, help=f"untimed steps per {what} first (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default: cpu)")
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")


def timed_call(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised before and after (``sync``)."""
    if sync is not None:
        sync()
    t = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t


def stats_ms(samples_s: Any) -> dict[str, float]:
    """Seconds per call -> {mean, std, p50, p90, p99, n} in milliseconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    if a.size == 0:
        raise ValueError("no timing samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "p50": float(p50), "p90": float(p90), "p99": float(p99), "n": int(a.size)}


# A timing whose spread says other work shared the machine: std above half the mean, or a p99
# more than three times the median.
BUSY_SPREAD = 0.5
BUSY_TAIL = 3.0


def busy_signs(stats: dict[str, float], what: str) -> list[str]:
    """Why the timing ``stats`` (from :func:`stats_ms`) looks disturbed, one phrase each; [] if steady."""
    out = []
    if stats["mean"] > 0 and stats["std"] / stats["mean"] > BUSY_SPREAD:
        out.append(f"{what}: std {100 * stats['std'] / stats['mean']:.0f}% of the mean")
    if stats["p50"] > 0 and stats["p99"] / stats["p50"] > BUSY_TAIL:
        out.append(f"{what}: p99 {stats['p99']:.2f} ms is {stats['p99'] / stats['p50']:.1f}x the median")
    return out


def measure(fn: Callable[[], Any], cfg: TimingConfig, sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Time ``fn()``; ``sync()`` (e.g. ``torch.cuda.synchronize``) runs inside each timed call so
    asynchronous work is counted where it is issued."""
    for _ in range(cfg.warmup):
        fn()
    if sync is not None:
        sync()
    samples = []
    start = time.perf_counter()
    while len(samples) < cfg.max_iters:
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        t1 = time.perf_counter()
        samples.append(t1 - t0)
        if t1 - start >= cfg.min_time and len(samples) >= cfg.min_iters:
            break
    return stats_ms(samples)


STAGES = ("decode", "resize", "normalize", "model", "postprocess")


def measure_stages(det: Any, files: Sequence[str], cfg: TimingConfig, sync: Callable[[], None] | None = None,
                   clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Batch-1 time of each stage of a detector's end-to-end call, and of the call itself, interleaved.

    Each timed round runs one image through the stages one by one — ``decode``
    (:func:`runtime.preprocess.decode_image`: JPEG draft decode when much larger than the input),
    ``resize`` (to the input size), ``normalize`` (the detector's own ``preprocess`` of the resized
    image: normalisation and layout), ``model`` (``run_batch``), ``postprocess`` (NMS of raw outputs,
    boxes back to the original image) — then the same image through ``det([file])``, so both see
    the same machine. Returns ``{stage: mean ms, "sum": their sum, "e2e": mean ms of the whole call,
    "sum_vs_e2e": sum / e2e, "p50": {stage or "e2e": median ms}, "n": rounds}``; ``sum_vs_e2e`` near
    1 says the stages account for the time. Means, not medians, are added: the mean of a sum is the
    sum of the means, whereas on a busy machine the stages' medians add up to less than the median
    call (each call is likely to be interrupted in one stage or another). ``"best"``: the fastest
    staged round against the fastest whole call, ``{"sum", "e2e", "sum_vs_e2e"}``. ``clock``: wall
    time (default); ``time.thread_time`` counts this thread's CPU time only, which other processes
    cannot disturb (for a backend that computes on the calling thread, e.g. ONNX Runtime at 1 thread).
    """
    from runtime.preprocess import decode_image, resize

    size, mode = tuple(det.meta.input_size), det.meta.resize_mode
    samples: dict[str, list[float]] = {k: [] for k in STAGES + ("e2e",)}

    def one_round(i: int, record: bool) -> None:
        f = files[i % len(files)]
        t = [clock()]
        rgb, hw = decode_image(f, size)
        t.append(clock())
        if rgb.shape[:2] != size:
            rgb = resize(rgb, size, mode)
        t.append(clock())
        x, _ = det.preprocess([rgb])
        t.append(clock())
        out = det.run_batch(x)
        if sync is not None:
            sync()
        t.append(clock())
        det.postprocess(out, np.asarray([hw], dtype=np.int64))
        t.append(clock())
        det([f])
        if sync is not None:
            sync()
        t.append(clock())
        if record:
            for k, name in enumerate(STAGES + ("e2e",)):
                samples[name].append(t[k + 1] - t[k])

    for i in range(cfg.warmup):
        one_round(i, False)
    start, i = time.perf_counter(), 0
    while i < cfg.max_iters and (i < cfg.min_iters or time.perf_counter() - start < cfg.min_time):
        one_round(i, True)
        i += 1
    stats = {k: stats_ms(v) for k, v in samples.items()}
    out: dict[str, Any] = {k: st["mean"] for k, st in stats.items()}
    out["sum"] = sum(out[k] for k in STAGES)
    out["sum_vs_e2e"] = out["sum"] / out["e2e"] if out["e2e"] > 0 else None
    out["p50"] = {k: st["p50"] for k, st in stats.items()}
    sums = np.sum([samples[k] for k in STAGES], axis=0)
    best_sum, best_e2e = 1e3 * float(np.min(sums)), 1e3 * float(np.min(samples["e2e"]))
    out["best"] = {"sum": best_sum, "e2e": best_e2e, "sum_vs_e2e": best_sum / best_e2e if best_e2e > 0 else None}
    out["n"] = i
    return out
