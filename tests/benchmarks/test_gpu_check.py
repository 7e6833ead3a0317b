"""benchmarks/gpu_check.py (``make gpu-check``) on a machine without a GPU: one line, exit 2, nothing
written; and its report mechanics (a failing or skipped step never ends the check)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check as G
from runtime.errors import BackendUnavailable

ROOT = Path(__file__).resolve().parents[2]


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="a CUDA GPU is visible here")
def test_without_a_gpu_it_stops_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path / "rep")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("gpu-check: no NVIDIA GPU visible to PyTorch") and "Traceback" not in lines[0]
    assert not (tmp_path / "rep").exists()


def test_report_records_every_step_and_survives_failures(tmp_path, capsys):
    rep = G.Report(tmp_path, budget_s=60)

    def ok(row, x):
        row["value"] = x
        return x * 2

    def fails(row):
        raise RuntimeError("boom\nsecond line")

    def unavailable(row):
        raise BackendUnavailable("TensorRT is not installed here")

    def below_bound(row):
        row.update(agreement=0.5, min_agreement=0.8, ok=False, latency_ms={"p50": 1.25})

    assert rep.run("a", ok, 21) == 42
    assert rep.run("b", fails) is None and rep.run("c", unavailable) is None and rep.run("d", below_bound) is None
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(s["name"], s["status"]) for s in data["steps"]] == [("a", "ok"), ("b", "failed"), ("c", "skipped"),
                                                                 ("d", "failed")]
    assert data["steps"][1]["reason"] == "RuntimeError: boom" and not data["ok"]
    assert "Traceback" in (tmp_path / "build_logs" / "b.log").read_text()
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| d | failed |" in md and "0.500 (>= 0.8)" in md and "1.25" in md
    assert "gpu-check: c: skipped - TensorRT is not installed here" in capsys.readouterr().out
    late = G.Report(tmp_path / "late", budget_s=-1)
    assert late.run("e", ok, 1) is None
    assert json.loads((tmp_path / "late" / "gpu_check.json").read_text())["steps"][0]["reason"].startswith(
        "time budget")


def test_smoke_checkpoint_detects_something(tmp_path):
    from export.data import synthetic_images
    from runtime.load import load_detector
    path = G.smoke_checkpoint(tmp_path / "best.pt")
    with load_detector(path, device="cpu", threads=1) as det:
        dets = det(synthetic_images(2, seed=3))
    assert det.meta.input_size == (160, 160) and sum(len(d["scores"]) for d in dets) > 0
