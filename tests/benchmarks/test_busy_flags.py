"""benchmarks: figures whose spread says the machine was busy are flagged; no "mAP None" in the log."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np

from benchmarks.report import write_markdown
from benchmarks.run import Backend, busy_flags, run_backend
from benchmarks.timing import TimingConfig, busy_signs


def _stats(mean, std=0.0, p50=None, p99=None):
    p50 = mean if p50 is None else p50
    return {"mean": mean, "std": std, "p50": p50, "p90": p50, "p99": p50 if p99 is None else p99, "n": 10}


def test_steady_figures_are_not_flagged():
    entry = {"latency_ms": {"e2e": _stats(5.0, 0.2), "model": _stats(3.0, 0.1)}}
    assert busy_flags(entry) == [] and busy_signs(_stats(5.0, 0.2), "x") == []


def test_model_only_above_end_to_end_is_flagged():
    entry = {"latency_ms": {"e2e": _stats(3.0, 0.1), "model": _stats(4.0, 0.1)}}
    (flag,) = busy_flags(entry)
    assert "model-only b1" in flag and "above end-to-end" in flag


def test_wide_spread_and_long_tail_are_flagged():
    signs = busy_signs(_stats(10.0, std=8.0, p50=6.0, p99=40.0), "end-to-end b1")
    assert any("std 80% of the mean" in s for s in signs) and any("6.7x the median" in s for s in signs)


class _TimedOnly:
    """A detector that only has to be timed (as the peer row is)."""

    meta = types.SimpleNamespace(precision="fp32")

    def preprocess(self, images):
        return np.zeros((len(images), 3, 4, 4), np.float32), np.zeros((len(images), 2), np.int64)

    def run_batch(self, x):
        return {}

    def __call__(self, images):
        return [{} for _ in images]

    def close(self):
        pass


def test_a_row_without_map_logs_a_dash_and_the_report_marks_busy_rows(tmp_path):
    lines = []
    row = Backend("peer", build=_TimedOnly, timed_only=True)
    entry = run_backend(row, ["a.png"], [1], TimingConfig.quick(), None, [], {}, None, lines.append)
    assert entry["status"] == "ok" and entry["mAP"] is None and "busy" in entry
    assert "mAP –" in lines[0] and "None" not in lines[0]
    entry["busy"] = ["model-only b1 (4.00 ms mean) above end-to-end b1"]
    report = {"machine": {}, "config": {"batch_sizes": [1], "warmup": 1, "min_time": 0.1, "min_iters": 1},
              "backends": [entry], "ok": True}
    md = write_markdown(report, Path(tmp_path / "r.md")).read_text()
    assert "⚠ Timings disturbed" in md and "* peer: model-only b1" in md
