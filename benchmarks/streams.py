"""Throughput mode: N parallel streams at batch 1, images/s end to end and model-only.

* OpenVINO (a detector with ``fork`` and ``infer_queue``): one compiled model in throughput mode
  with N streams sharing the threads; end to end, N Python threads each run the whole pipeline
  (decode, preprocess, its own infer request, postprocess); model-only keeps N requests in flight
  through an ``openvino.AsyncInferQueue``.
* Any other CPU backend (ONNX Runtime): N sessions, one per thread, the intra-op threads split
  among them (``threads // N``, at least 1), each thread running the whole pipeline (end to end)
  or its session alone (model-only).

Both are what a server with N concurrent requests does; batch 1 keeps each request's latency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["measure_streams", "parse_streams"]


def parse_streams(text: str | int | None, cores: int) -> list[int]:
    """``--streams``: N (1..N streams), "all" (1..cores) or 0 / None (no throughput mode) -> stream counts."""
    if text in (None, "", 0, "0"):
        return []
    if str(text).strip().lower() == "all":
        return list(range(1, max(1, cores) + 1))
    try:
        n = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"--streams must be a number of parallel streams or 'all', got {text!r}") from None
    if n < 0:
        raise ValueError(f"--streams must be >= 0, got {n}")
    return list(range(1, n + 1))


def _threaded_ips(lanes: Sequence[Callable[[], int]], seconds: float) -> float:
    """Each lane (a callable returning how many images it just did) runs in its own thread, over and
    over, for ``seconds`` after a warm-up call; images per second over the wall time."""
    for lane in lanes:
        lane()
    counts = [0] * len(lanes)
    errors: list[BaseException] = []
    gate = threading.Barrier(len(lanes) + 1)
    stop = [0.0]

    def loop(k: int) -> None:
        gate.wait()
        try:
            while time.perf_counter() < stop[0]:
                counts[k] += lanes[k]()
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(len(lanes))]
    for t in threads:
        t.start()
    start = time.perf_counter()
    stop[0] = start + seconds
    gate.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts) / (time.perf_counter() - start)


def _queue_ips(det: Any, batch: Any, jobs: int, seconds: float) -> float:
    """Model-only images/s with ``jobs`` requests in flight (OpenVINO AsyncInferQueue), batch 1."""
    queue = det.infer_queue(jobs)
    for _ in range(jobs):
        queue.start_async({0: batch})
    queue.wait_all()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        queue.start_async({0: batch})  # blocks while every request is busy
        done += 1
    queue.wait_all()
    return done * batch.shape[0] / (time.perf_counter() - start)


class _Files:
    """Image files handed out round-robin to every lane (thread-safe enough: a race repeats a file)."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files, self.i = list(files), 0

    def next(self) -> str:
        self.i = (self.i + 1) % len(self.files)
        return self.files[self.i]


def _lanes(make: Callable[..., Any], openvino: bool, n: int, threads: int) -> list[Any]:
    """The detectors of ``n`` streams (OpenVINO, ``n == 0``: as many as its throughput hint asks for)."""
    if openvino:
        first = make(threads=threads, hint="throughput", streams=n or None)
        return [first] + [first.fork() for _ in range((n or first.optimal_requests()) - 1)]
    if n < 1:
        raise ValueError("a stream count of 0 (OpenVINO's own choice) needs an OpenVINO row")
    return [make(threads=max(1, threads // n)) for _ in range(n)]


def measure_streams(make: Callable[..., Any], files: Sequence[str], streams: Sequence[int], threads: int,
                    seconds: float = 1.0, openvino: bool = False) -> dict[str, dict[str, float]]:
    """Images/s at batch 1 with each number of parallel streams in ``streams``.

    ``make(threads=..., [hint=..., streams=...])`` opens one detector of the row (OpenVINO rows get
    the throughput hint and the stream count; 0 = the number its hint picks, reported under "auto");
    ``threads``: CPU threads in all. Returns ``{"e2e": {"N": images/s}, "model": {"N": images/s}}``.
    """
    pool = _Files(files)
    out: dict[str, dict[str, float]] = {"e2e": {}, "model": {}}
    for n in streams:
        lanes = _lanes(make, openvino, n, threads)
        key = str(n) if n else f"auto ({len(lanes)})"
        try:
            out["e2e"][key] = _threaded_ips([lambda d=d: len(d([pool.next()])) for d in lanes], seconds)
            batches = [d.preprocess([pool.next()])[0].copy() for d in lanes]
            if openvino:
                out["model"][key] = _queue_ips(lanes[0], batches[0], len(lanes), seconds)
            else:
                out["model"][key] = _threaded_ips(
                    [lambda d=d, x=x: (d.run_batch(x), 1)[1] for d, x in zip(lanes, batches)], seconds)
        finally:
            for d in lanes[:1] if openvino else lanes:
                d.close()
    return out
