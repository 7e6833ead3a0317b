"""benchmarks/run.py --quick end to end on the tiny model: every report file, every row, exit codes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import main
from tests.helpers import tiny_checkpoint, tiny_coco, tiny_exports

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["pytorch-cpu", "onnxruntime-cpu-raw", "onnxruntime-cpu-nms", "onnxruntime-cpu-int8", "trt-reference-cpu",
         "pytorch-cuda-fp16", "tensorrt-fp16", "tensorrt-int8", "peer-torchvision-ssdlite320"]
STATS = {"mean", "std", "p50", "p90", "p99", "n"}


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    import torch

    out = tmp_path_factory.mktemp("bench")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before one_torch_thread (see its docstring)
    try:
        code = main(["--checkpoint", str(tiny_checkpoint()), "--exports", str(tiny_exports()), "--out", str(out),
                    "--data", tiny_coco(), "--quick"])
    finally:
        torch.set_num_threads(n)
    return code, out


def test_quick_run_writes_all_three_files(quick_report):
    code, out = quick_report
    assert code == 0
    assert (out / "fps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    names = [b["name"] for b in report["backends"]]
    for n in NAMES:
        assert n in names and f"| {n} |" in md
    assert "Verdict: PASS" in md and report["ok"]
    for key in ("cpu", "cpu_cores", "gpu", "driver", "cuda", "tensorrt", "onnxruntime", "jetson"):
        assert key in report["machine"]


def test_each_row_has_status_reason_and_numbers(quick_report):
    report = json.loads((quick_report[1] / "report.json").read_text())
    rows = {b["name"]: b for b in report["backends"]}
    for name in NAMES[:5] + ["peer-torchvision-ssdlite320"]:
        b = rows[name]
        assert b["status"] == "ok", (name, b["reason"])
        assert set(b["latency_ms"]) == {"e2e", "model"} and set(b["latency_ms"]["e2e"]) == STATS
        assert set(b["throughput_ips"]) == {"1", "2"} and all(v > 0 for v in b["throughput_ips"].values())
        assert b["ratios"]["vs_pytorch_cpu"] > 0 and b["ratios"]["vs_peer"] > 0
    for name in NAMES[1:5]:
        assert rows[name]["parity"]["ok"], rows[name]["parity"]["reasons"]
        assert rows[name]["mAP"] is not None
    assert rows["pytorch-cpu"]["parity"] is None and rows["peer-torchvision-ssdlite320"]["mAP"] is None
    for name in ("pytorch-cuda-fp16", "tensorrt-fp16", "tensorrt-int8"):
        assert rows[name]["status"] == "unavailable" and rows[name]["reason"]


def test_min_map_fails_the_run(tmp_path):
    code = main(["--checkpoint", str(tiny_checkpoint()), "--exports", str(tiny_exports()), "--out", str(tmp_path),
                 "--data", tiny_coco(), "--quick", "--only", "onnxruntime-cpu-nms", "--no-peer", "--min-map", "101"])
    assert code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["ok"] and any("--min-map" in f for f in report["failures"])
    assert "Verdict: FAIL" in (tmp_path / "report.md").read_text()
    rows = {b["name"]: b for b in report["backends"]}
    assert rows["onnxruntime-cpu-raw"]["reason"] == "skipped (--only)"


def test_no_paths_uses_the_latest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--quick"]) == 2  # no runs/ yet
    for run in ("old", "demo/student"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        shutil.copy(tiny_checkpoint(), tmp_path / "runs" / run / "best.pt")
    shutil.copytree(tiny_exports(), tmp_path / "exports" / "demo" / "student")
    code = main(["--quick", "--data", tiny_coco(), "--only", "onnxruntime-cpu-nms", "--no-peer"])
    assert code == 0
    report = json.loads((tmp_path / "reports" / "demo" / "student" / "report.json").read_text())
    assert report["checkpoint"] == str(Path("runs/demo/student/best.pt"))
    assert report["exports"] == str(Path("exports/demo/student"))
    assert {b["name"]: b["status"] for b in report["backends"]}["onnxruntime-cpu-nms"] == "ok"


def test_script_entry_point_runs_from_anywhere(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--min-map" in r.stdout
