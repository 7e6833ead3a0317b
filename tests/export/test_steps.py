"""The export steps one at a time: export_graphs, quantize_int8, verify_exports, the INT8 mAP gate,
calibration images, and the export of a checkpoint written before the steps were split."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import onnx
import pytest

from export import verify as V
from runtime.metadata import read_sidecar, sha256_file

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "v1_run"


def _quiet(_msg: str) -> None:
    pass


def test_export_graphs_of_a_checkpoint_written_before(tmp_path):
    """export_graphs alone, on the v1 fixture checkpoint: three graphs with sidecars, nothing else,
    and the ONNX-NMS graph gives the same detections as the one the old export wrote."""
    from export.data import synthetic_images
    from export.onnx import export_graphs
    from runtime.matching import match_exact
    from runtime.preprocess import Preprocessor
    art = export_graphs(V1 / "plain" / "best.pt", tmp_path, log=_quiet)
    assert set(art.graphs) == {"raw", "trt", "nms"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"model_{g}.{ext}" for g in ("raw", "trt", "nms") for ext in ("onnx", "json"))
    for g, w in art.graphs.items():
        meta = read_sidecar(w.onnx)
        assert meta.graph == g and meta.onnx_sha256 == sha256_file(w.onnx) and w.meta == meta
        assert meta.extra["checkpoint"] == str(V1 / "plain" / "best.pt")
    old = V1 / "export" / "model_nms.onnx"
    x = Preprocessor.from_meta(read_sidecar(old))(synthetic_images(3, seed=4))[0]
    got = V.ort_session(art.graphs["nms"].onnx, threads=1).run(None, {"images": x})
    want = V.ort_session(old, threads=1).run(None, {"images": x})
    m = match_exact(got, want)
    assert m["match"], m


def test_export_graphs_rejects_bad_options_before_writing(tiny_ckpt, tmp_path):
    from export.onnx import export_graphs
    with pytest.raises(ValueError, match="--opset must be in 13..20"):
        export_graphs(tiny_ckpt, tmp_path / "a", opset=9, log=_quiet)
    with pytest.raises(ValueError, match="--plugin-domain"):
        export_graphs(tiny_ckpt, tmp_path / "b", plugin_domain="not a domain", log=_quiet)
    with pytest.raises(ValueError, match="--plugin-version"):
        export_graphs(tiny_ckpt, tmp_path / "c", plugin_version="latest", log=_quiet)
    assert not any((tmp_path / d).exists() for d in "abc")


def test_quantize_int8_alone(exported, calib_dir, tmp_path):
    from export.quantize import quantize_int8
    raw = Path(exported["files"]["raw"]["onnx"])
    notes: list[str] = []
    written, info = quantize_int8(raw, sorted(str(p) for p in calib_dir.iterdir())[:4], out=tmp_path / "q.onnx",
                                  calibration_source="four test images", notes=notes)
    assert written.onnx == tmp_path / "q.onnx" and sorted(p.name for p in tmp_path.iterdir()) == ["q.json", "q.onnx"]
    meta = read_sidecar(written.onnx)
    assert meta.graph == "int8" and meta.precision == "int8" and meta.onnx_sha256 == sha256_file(written.onnx)
    assert meta.extra["calibration_source"] == "four test images"
    assert meta.extra["quantization"]["calibration_images"] == 4 and info["quantize_nodes"] > 10
    assert meta.nms == read_sidecar(raw).nms and meta.extra["opset"] == read_sidecar(raw).extra["opset"]
    assert notes == []  # the float tail was found
    onnx.checker.check_model(onnx.load(str(written.onnx)), full_check=True)


def test_verify_exports_alone(exported, model_and_meta, tmp_path):
    """The verification table of the exported graphs, and a wrong NMS graph caught by it."""
    import onnx_graphsurgeon as gs

    from export import graphs as G
    from export.artifacts import save_with_meta
    from export.data import synthetic_images
    model, anchors, meta = model_and_meta
    paths = {g: Path(f["onnx"]) for g, f in exported["files"].items() if g in ("raw", "trt", "nms", "int8")}
    rows = V.verify_exports(paths, model, anchors, synthetic_images(3, seed=2), threads=1)
    assert set(rows) == {"raw", "trt", "nms", "int8"} and all(r["ok"] for r in rows.values()), rows
    assert rows["nms"]["detections_match"] and rows["trt"]["detections_match"] and set(rows["raw"]["batches"]) == {
        "1", "3"}
    # an NMS graph that suppresses nothing, under a sidecar that says it does
    no_nms = dataclasses.replace(meta.nms, iou_threshold=1.0)
    wrong = G.to_model(G.add_onnx_nms_tail(gs.import_onnx(onnx.load(str(paths["raw"]))), no_nms))
    save_with_meta(wrong, tmp_path / "model_nms.onnx", read_sidecar(paths["nms"]))
    rows = V.verify_exports({**paths, "nms": tmp_path / "model_nms.onnx"}, model, anchors,
                            synthetic_images(3, seed=2), batches=(3,), threads=1)
    assert not rows["nms"]["ok"] and rows["nms"]["detections_match"] is False and rows["trt"]["ok"]
    assert rows["nms"]["batches"]["3"]["why"].startswith("image ")


def test_int8_map_gate():
    maps = {"raw": {"mAP": 30.0}, "int8": {"mAP": 29.5}}
    assert V.check_int8_map(maps, 1.0) is None and maps["int8_map_drop"] == pytest.approx(0.5)
    maps = {"raw": {"mAP": 30.0}, "int8": {"mAP": 28.0}}
    why = V.check_int8_map(maps, 1.0)
    assert why is not None and "2.00 points below FP32" in why and maps["int8_max_map_drop"] == 1.0
    assert V.check_int8_map({"raw": {"mAP": 30.0}}, 1.0) is None


def test_calibration_images(calib_dir, tmp_path):
    from export.data import calibration_images
    images, src = calibration_images(3, folder=calib_dir)
    assert len(images) == 3 and all(Path(p).is_file() for p in images) and "3 images" in src
    assert calibration_images(3) == (None, "no checkpoint config")
    images, why = calibration_images(3, cfg={"data": "shapes", "img_size": 64, "data_root": str(tmp_path / "none"),
                                             "mean": [0.5] * 3, "std": [0.25] * 3})
    assert images is None and "not generated" in why
    with pytest.raises(ValueError, match="no images"):
        calibration_images(3, folder=tmp_path)
    with pytest.raises(ValueError, match=">= 1"):
        calibration_images(0, folder=calib_dir)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_trt_environment_is_a_backend_unavailable():
    """The build's 'no TensorRT / GPU here' is the shared BackendUnavailable that every layer catches."""
    from export.trt import check_environment
    from runtime.errors import BackendUnavailable
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        check_environment()
