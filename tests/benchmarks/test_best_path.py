"""The benchmark names the CPU path to deploy: the fastest sound CPU row, against OpenVINO's defaults."""
from __future__ import annotations

from benchmarks.best_path import best_cpu_path, best_path_lines
from benchmarks.report import write_markdown


def _row(name, e2e, mAP=50.0, parity_ok=True, status="ok", reasons=("|ΔmAP| = 3.000 points > 1.0",)):
    parity = None if name == "pytorch-cpu" or mAP is None else {
        "ok": parity_ok, "delta_map": mAP - 50.0, "agreement": 1.0, "reasons": [] if parity_ok else list(reasons)}
    return {"name": name, "status": status, "reason": "", "file": f"/x/{name}.onnx", "mAP": mAP,
            "parity": parity, "latency_ms": {"e2e": {"mean": e2e, "p50": e2e}, "model": {"mean": 1.0, "p50": 1.0}}}


def _rows():
    return [_row("pytorch-cpu", 60.0), _row("onnxruntime-cpu-nms", 30.0),
            _row("onnxruntime-cpu-int8-nms", 20.0, mAP=47.0, parity_ok=False),  # fastest, fails parity
            _row("openvino-cpu-int8-nms", 25.0, mAP=49.5),
            _row("trt-reference-cpu", 10.0),  # a reference graph, never deployed
            _row("peer-openvino-latency", 28.0, mAP=None), _row("peer-openvino-throughput", 5.0, mAP=None)]


def test_fastest_row_failing_parity_is_skipped_and_named():
    rows = _rows()
    rows[-1]["status"] = "failed"  # a peer row that did not run is no comparison
    best = best_cpu_path(rows)
    assert best["name"] == "openvino-cpu-int8-nms" and best["backend"] == "OpenVINO"
    assert best["e2e_ms"] == 25.0 and abs(best["delta_map"] + 0.5) < 1e-9
    excluded = {e["name"]: e["reason"] for e in best["excluded"]}
    assert set(excluded) == {"onnxruntime-cpu-int8-nms"}
    assert "parity failed" in excluded["onnxruntime-cpu-int8-nms"] and "ΔmAP" in excluded["onnxruntime-cpu-int8-nms"]
    assert best["openvino_peer"]["name"] == "peer-openvino-latency"
    assert abs(best["vs_openvino"] - 28.0 / 25.0) < 1e-9
    assert "ahead of OpenVINO's defaults (peer-openvino-latency, 28.00 ms) by 1.12×" in best["verdict"]


def test_behind_openvino_says_by_how_much_and_peers_are_never_the_answer():
    best = best_cpu_path(_rows())  # peer-openvino-throughput at 5 ms is the fastest row of all
    assert best["name"] == "openvino-cpu-int8-nms"
    assert "behind OpenVINO's defaults (peer-openvino-throughput, 5.00 ms) by 5.00×" in best["verdict"]


def test_map_outside_the_gate_is_excluded_even_with_parity_ok():
    rows = [_row("pytorch-cpu", 60.0), _row("onnxruntime-cpu-int8", 20.0, mAP=48.5), _row("onnxruntime-cpu-nms", 30.0)]
    best = best_cpu_path(rows)
    assert best["name"] == "onnxruntime-cpu-nms"
    assert best["excluded"][0]["name"] == "onnxruntime-cpu-int8" and "gate ±1" in best["excluded"][0]["reason"]
    assert "no OpenVINO peer row" in best["verdict"]


def test_tie_goes_to_the_higher_map_then_the_earlier_row():
    rows = [_row("pytorch-cpu", 60.0), _row("onnxruntime-cpu-nms", 20.0, mAP=49.8),
            _row("onnxruntime-cpu-int8-nms", 20.0, mAP=50.2), _row("openvino-cpu-int8-nms", 20.0, mAP=50.2)]
    best = best_cpu_path(rows)
    assert best["name"] == "onnxruntime-cpu-int8-nms"
    assert sorted(best["tied_with"]) == ["onnxruntime-cpu-nms", "openvino-cpu-int8-nms"]
    assert "tied with" in best["verdict"]


def test_no_eligible_row_says_so(tmp_path):
    rows = [_row("pytorch-cpu", 60.0, status="failed"), _row("onnxruntime-cpu-nms", 30.0),
            _row("peer-openvino-latency", 28.0, mAP=None)]
    rows[0]["reason"] = "boom"
    best = best_cpu_path(rows)
    assert best["name"] is None and best["verdict"].startswith("no CPU path to deploy")
    reasons = {e["name"]: e["reason"] for e in best["excluded"]}
    assert reasons["pytorch-cpu"] == "failed: boom"
    assert "no reference mAP" in reasons["onnxruntime-cpu-nms"]
    lines = best_path_lines(best)
    assert any("no CPU path to deploy" in s for s in lines)
    report = {"machine": {}, "config": {"batch_sizes": [1], "warmup": 1, "min_time": 0.1, "min_iters": 1},
              "backends": rows, "ok": False, "best_cpu_path": best}
    text = write_markdown(report, tmp_path / "report.md").read_text()
    assert "Best CPU path" in text and "excluded pytorch-cpu: failed: boom" in text
