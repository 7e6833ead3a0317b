"""After the per-backend pass: the machine's limit, throughput mode and the thread sweep.

* ``limits``: the graph's GFLOPs (:func:`benchmarks.limits.onnx_gflops` of ``model_raw.onnx``) and
  the GEMM GFLOP/s at each thread count measured; every measured CPU row gets ``limit``:
  ``floor_ms``, ``model_vs_floor`` (model-only p50 over the FLOPs at the GEMM peak) and
  ``e2e_vs_model`` (end-to-end p50 over model-only p50);
* ``streams_ips`` per CPU row: images/s at batch 1 with 1..N parallel streams
  (:mod:`benchmarks.streams`), beside the batch sweep;
* ``sweep``: batch-1 latency of every measured CPU row at each ``--threads`` value, measured in
  interleaved rounds (round r times every row at every thread count, and the GEMM, before round
  r + 1), the median of the rounds' p50s reported, so a load that comes and goes on the machine
  spreads over all rows alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.limits import gemm_gflops, limit_ratios, onnx_gflops
from benchmarks.streams import measure_streams
from benchmarks.timing import TimingConfig, measure

__all__ = ["SweepPlan", "graph_gflops", "measure_extras", "parse_threads"]


def parse_threads(text: str | int | None, cores: int) -> list[int]:
    """``--threads``: "2" or "1,2,all" (all = every usable core) -> distinct thread counts in order; [] for None."""
    if text is None or str(text).strip() == "":
        return []
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip().lower()
        try:
            n = cores if part == "all" else int(part)
        except ValueError:
            raise ValueError(f"--threads takes numbers and 'all', comma-separated (e.g. 1,2,all), got {text!r}") from None
        if n < 1:
            raise ValueError(f"--threads values must be >= 1, got {n} in {text!r}")
        if n not in out:
            out.append(n)
    return out


def graph_gflops(exports: Path | None) -> float | None:
    """GFLOPs of the exported model (its raw graph), or None without that file or the onnx package, or when
    the file cannot be parsed (its own row already reports the broken file as an error)."""
    path = exports / "model_raw.onnx" if exports else None
    if path is None or not path.is_file():
        return None
    try:
        return onnx_gflops(path)
    except ImportError:
        return None
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and onnx's checker errors share no base class
        print(f"warning: no GFLOPs for the limit columns: {path} cannot be parsed ({type(e).__name__})")
        return None


class SweepPlan:
    """What the extras measure: ``threads`` (the main pass's count), ``sweep`` (the ``--threads``
    values; one value: no sweep), ``streams`` (stream counts; []: none), ``rounds``, ``cfg``."""

    def __init__(self, threads: int, sweep: Sequence[int], streams: Sequence[int], rounds: int,
                 cfg: TimingConfig) -> None:
        self.threads, self.sweep, self.streams = int(threads), list(sweep), list(streams)
        self.rounds, self.cfg = max(1, int(rounds)), cfg


def _short(cfg: TimingConfig, rounds: int) -> TimingConfig:
    """One round's share of a measurement."""
    return TimingConfig(warmup=max(1, cfg.warmup // rounds), min_time=cfg.min_time / rounds,
                        min_iters=max(3, cfg.min_iters // rounds), max_iters=cfg.max_iters)


def _latency_round(det: Any, files: Sequence[str], cfg: TimingConfig) -> dict[str, float]:
    x, _ = det.preprocess([files[0]])
    x = x.copy()
    k = [0]

    def e2e() -> None:
        k[0] += 1
        det([files[k[0] % len(files)]])

    return {"model": measure(lambda: det.run_batch(x), cfg)["p50"], "e2e": measure(e2e, cfg)["p50"]}


def _thread_sweep(rows: Sequence[Any], files: Sequence[str], plan: SweepPlan, gflops: float | None,
                  log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Interleaved rounds over (thread count, row); the median of the rounds' p50s per pair."""
    dets = {(r.name, t): r.make(threads=t) for t in plan.sweep for r in rows}
    cfg = _short(plan.cfg, plan.rounds)
    got: dict[tuple[str, int], list[dict[str, float]]] = {k: [] for k in dets}
    gemm: dict[int, list[float]] = {t: [] for t in plan.sweep}
    try:
        for _ in range(plan.rounds):
            for t in plan.sweep:
                gemm[t].append(gemm_gflops(t, min_time=min(0.3, cfg.min_time))["gflops"])
                for r in rows:
                    got[(r.name, t)].append(_latency_round(dets[(r.name, t)], files, cfg))
    finally:
        for d in dets.values():
            d.close()
    peaks = {str(t): float(np.median(v)) for t, v in gemm.items()}
    out = []
    for (name, t), runs in got.items():
        lat = {k: float(np.median([run[k] for run in runs])) for k in ("e2e", "model")}
        out.append({"name": name, "threads": t, "latency_p50_ms": lat, "rounds": len(runs),
                    "limit": limit_ratios(gflops, peaks[str(t)], lat["model"], lat["e2e"])})
        log(f"{name:<28} threads {t}: e2e b1 p50 {lat['e2e']:7.2f} ms  model b1 p50 {lat['model']:7.2f} ms")
    return out, peaks


def measure_extras(rows: Sequence[Any], entries: list[dict[str, Any]], files: Sequence[str], plan: SweepPlan,
                   exports: Path | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Limits, throughput mode and the thread sweep for the CPU rows measured ``ok`` that can be
    reopened (``row.make``); sets ``limit`` / ``streams_ips`` on their entries and returns the
    report's ``limits`` and ``sweep`` sections."""
    ok = {e["name"] for e in entries if e.get("status") == "ok"}
    cpu = [r for r in rows if r.name in ok and getattr(r, "make", None) is not None]
    gflops = graph_gflops(exports)
    gemm = gemm_gflops(plan.threads, min_time=min(0.5, max(0.1, plan.cfg.min_time)))
    log(f"limit: model {gflops if gflops is None else round(gflops, 3)} GFLOPs, GEMM 1024^2 "
        f"{gemm['gflops']:.1f} GFLOP/s at {plan.threads} thread(s) ({gemm['library']})")
    by_name = {e["name"]: e for e in entries}
    for r in cpu:
        e = by_name[r.name]
        lat = e.get("latency_ms") or {}
        e["limit"] = limit_ratios(gflops, gemm["gflops"], (lat.get("model") or {}).get("p50"),
                                  (lat.get("e2e") or {}).get("p50"))
        counts = [0] if r.streams_auto else plan.streams if r.streams else []
        if counts:
            e["streams_ips"] = measure_streams(r.make, files, counts, plan.threads,
                                               seconds=max(0.2, plan.cfg.min_time / 2), openvino=r.openvino)
            log(f"{r.name:<28} streams e2e images/s " + ", ".join(
                f"{k}: {v:.1f}" for k, v in e["streams_ips"]["e2e"].items()))
    sweep, peaks = ([], {}) if len(plan.sweep) < 2 else _thread_sweep(cpu, files, plan, gflops, log)
    return {"limits": {"gflops": gflops, "gemm": gemm, "gemm_by_threads": peaks or
                       {str(plan.threads): gemm["gflops"]}},
            "sweep": sweep}
