"""Timing with warm-up excluded, device synchronised, a minimum run time per measurement.

Each call of the measured function is timed on its own (``time.perf_counter``) so the spread is
real: mean, std, p50, p90, p99 in milliseconds over the timed calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Callable
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
