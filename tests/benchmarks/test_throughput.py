"""The benchmark's throughput mode (--streams), thread sweep (--threads 1,2), limit ratios, stage
timing, the GEMM microbenchmark, the graph's FLOPs, and JPEG draft decoding."""
from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest
from PIL import Image

from benchmarks.limits import gemm_gflops, limit_ratios, onnx_gflops
from benchmarks.streams import parse_streams
from benchmarks.sweep import parse_threads
from benchmarks.timing import STAGES, TimingConfig, measure_stages
from runtime import load_detector
from runtime.preprocess import Preprocessor, decode_image, load_image, resize
from tests.helpers import tiny_checkpoint, tiny_coco, tiny_exports

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    import torch

    from benchmarks.run import main

    out = tmp_path_factory.mktemp("sweep")
    rows = "onnxruntime-cpu-nms,openvino-cpu-nms" if HAS_OPENVINO else "onnxruntime-cpu-nms"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["--checkpoint", str(tiny_checkpoint()), "--exports", str(tiny_exports()), "--out", str(out),
                     "--data", tiny_coco(), "--quick", "--no-peer", "--only", rows, "--threads", "1,2",
                     "--streams", "2", "--batch-sizes", "1"])
    finally:
        torch.set_num_threads(n)
    return code, json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), rows.split(",")


def test_streams_give_images_per_second_rows(sweep_report):
    code, report, md, names = sweep_report
    assert code == 0, report["failures"]
    rows = {b["name"]: b for b in report["backends"]}
    for name in names:
        ips = rows[name]["streams_ips"]
        assert set(ips["e2e"]) == set(ips["model"]) == {"1", "2"}
        assert all(v > 0 for part in ips.values() for v in part.values())
        assert f"| {name} | " in md.split("Throughput mode")[1]
    assert "streams_ips" not in rows["pytorch-cpu"]  # throughput mode is for the graph runtimes
    assert report["config"]["streams"] == [1, 2] and report["config"]["threads"] == 1


def test_threads_sweep_rows_and_limit_ratios_from_the_measured_values(sweep_report):
    _, report, md, names = sweep_report
    lim = report["limits"]
    assert lim["gflops"] == pytest.approx(onnx_gflops(tiny_exports() / "model_raw.onnx"))
    assert set(lim["gemm_by_threads"]) == {"1", "2"} and all(v > 0 for v in lim["gemm_by_threads"].values())
    got = {(s["name"], s["threads"]): s for s in report["sweep"]}
    assert set(got) == {(n, t) for n in names for t in (1, 2)}  # PyTorch's threads are process-wide: not swept
    for (name, t), s in got.items():
        lat, r = s["latency_p50_ms"], s["limit"]
        floor = 1e3 * lim["gflops"] / lim["gemm_by_threads"][str(t)]
        assert r["floor_ms"] == pytest.approx(floor)
        assert r["model_vs_floor"] == pytest.approx(lat["model"] / floor)
        assert r["e2e_vs_model"] == pytest.approx(lat["e2e"] / lat["model"])
    for b in report["backends"]:
        if b["name"] in names:  # the main pass's rows carry the same ratios of their own timings
            lat = b["latency_ms"]
            floor = 1e3 * lim["gflops"] / lim["gemm"]["gflops"]
            assert b["limit"]["model_vs_floor"] == pytest.approx(lat["model"]["p50"] / floor)
            assert b["limit"]["e2e_vs_model"] == pytest.approx(lat["e2e"]["p50"] / lat["model"]["p50"])
            assert set(b["stages_ms"]) >= set(STAGES) | {"sum", "e2e", "sum_vs_e2e", "best"}
    for title in ("Limit: the model is", "Threads sweep", "Stages of one batch-1 call", "model / floor",
                  "e2e / model"):
        assert title in md


def test_gemm_microbenchmark_and_graph_flops():
    one = gemm_gflops(1, n=256, min_time=0.05)
    assert one["gflops"] > 0 and one["gflops"] >= one["gflops_p50"] > 0 and one["threads"] in (1, None)
    from distill.checkpoint import model_from_checkpoint
    from distill.models import count_gflops

    torch_count = count_gflops(model_from_checkpoint(tiny_checkpoint()), 64)
    for graph in ("raw", "nms", "int8"):  # NMS and Q/DQ add no multiply-adds
        assert onnx_gflops(tiny_exports() / f"model_{graph}.onnx") == pytest.approx(torch_count, rel=0.02)
    assert limit_ratios(2.0, 100.0, 40.0, 50.0) == {"floor_ms": 20.0, "model_vs_floor": 2.0, "e2e_vs_model": 1.25}
    assert limit_ratios(None, 100.0, 40.0, None) == {"floor_ms": None, "model_vs_floor": None, "e2e_vs_model": None}


def test_flag_parsing():
    assert parse_threads("1,2,all", 4) == [1, 2, 4] and parse_threads("2,2", 4) == [2] and parse_threads(None, 4) == []
    assert parse_streams("3", 8) == [1, 2, 3] and parse_streams("all", 2) == [1, 2] and parse_streams(None, 2) == []
    for bad in ("0", "x", "1,,2"):
        with pytest.raises(ValueError, match="--threads"):
            parse_threads(bad, 4)
    with pytest.raises(ValueError, match="--streams"):
        parse_streams("many", 4)


def _big_jpeg(path, w=4000, h=3000, orientation=None):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (h // 100, w // 100, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(path, quality=90, exif=exif.tobytes())
    return path


def test_draft_decode_keeps_the_result_size_and_saves_time(tmp_path):
    path = _big_jpeg(tmp_path / "big.jpg")
    rgb, hw = decode_image(path, (256, 256))
    assert hw == (3000, 4000) and rgb.shape == (750, 1000, 3)  # 1/4 scale: both sides >= 2 x 256
    full = load_image(path)
    a, b = resize(full, (256, 256)).astype(int), resize(rgb, (256, 256)).astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() < 2.0  # the same picture at the input size
    pre = Preprocessor((256, 256), (0.5,) * 3, (0.25,) * 3)
    x, orig = pre([path])
    assert x.shape == (1, 3, 256, 256) and orig.tolist() == [[3000, 4000]]  # boxes map back to full size
    small = decode_image(path, (2000, 2000))[0]
    assert small.shape == (3000, 4000, 3)  # an input not much smaller than the image: no reduction

    def best(fn, n=3):
        times = []
        for _ in range(n):  # CPU time of this thread: Pillow decodes on it
            t0 = time.thread_time()
            fn()
            times.append(time.thread_time() - t0)
        return min(times)

    t_full, t_draft = best(lambda: load_image(path)), best(lambda: decode_image(path, (256, 256)))
    assert t_draft * 2 < t_full, f"draft decode {t_draft * 1e3:.0f} ms vs full {t_full * 1e3:.0f} ms"


def test_draft_decode_reports_the_rotated_size(tmp_path):
    path = _big_jpeg(tmp_path / "rot.jpg", 2000, 1000, orientation=6)  # stored landscape, shown portrait
    rgb, hw = decode_image(path, (128, 128))
    assert hw == (2000, 1000) and rgb.shape[0] > rgb.shape[1] and rgb.shape[:2] != hw
    assert load_image(path).shape[:2] == hw


def test_stage_timings_add_up_to_the_call(tmp_path):
    files = [str(_big_jpeg(tmp_path / f"s{i}.jpg", 640, 480)) for i in range(2)]
    det = load_detector(tiny_exports() / "model_raw.onnx", threads=1)
    st = measure_stages(det, files, TimingConfig(warmup=3, min_time=0.4, min_iters=20), clock=time.thread_time)
    assert all(st[k] > 0 for k in STAGES) and st["sum"] == pytest.approx(sum(st[k] for k in STAGES))
    # CPU time of this thread (ONNX Runtime at 1 thread computes on it): other processes cannot disturb it.
    assert st["sum_vs_e2e"] == pytest.approx(1.0, abs=0.10), {k: st[k] for k in STAGES + ("sum", "e2e")}


def test_a_corrupt_raw_graph_leaves_the_limit_columns_empty(tmp_path, capsys):
    """The broken file is its own row's error; the limit columns just go without GFLOPs."""
    from benchmarks.sweep import graph_gflops

    (tmp_path / "model_raw.onnx").write_bytes(b"\x08not a graph\xff\xff")
    assert graph_gflops(tmp_path) is None
    assert "cannot be parsed" in capsys.readouterr().out
