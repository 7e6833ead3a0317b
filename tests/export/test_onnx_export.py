"""export.onnx end to end on a tiny model: files, checker, sidecars, raw and ONNX-NMS parity."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import verify as V
from runtime.matching import match_exact
from runtime.metadata import ModelMeta, read_sidecar, sha256_file

ROOT = Path(__file__).resolve().parents[2]


def test_report_ok_and_files(exported):
    assert exported["ok"], json.dumps(exported["report"]["graphs"], indent=1)[:3000]
    graphs = {"raw", "trt", "nms", "int8", "int8_nms", "trt_fp16", "trt_int8"}  # --int8 writes model_int8_nms.onnx too
    assert set(exported["files"]) == graphs
    rep = json.loads(Path(exported["report_path"]).read_text())
    assert rep["ok"] and set(rep["graphs"]) == graphs
    assert rep["graphs"]["nms"]["detections_match"] and rep["graphs"]["trt"]["detections_match"]
    assert rep["verify_batches"] == [1, 3]


@pytest.mark.parametrize("graph", ["raw", "trt", "nms", "int8"])
def test_checker_sidecar_and_metadata(exported, graph):
    path = Path(exported["files"][graph]["onnx"])
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    meta = read_sidecar(path)
    assert meta.graph == graph and meta.onnx_sha256 == sha256_file(path)
    assert meta.precision == ("int8" if graph == "int8" else "fp32")
    assert meta.input_size == (64, 64) and meta.num_classes == 3
    props = {p.key: p.value for p in model.metadata_props}
    embedded = ModelMeta.from_dict(json.loads(props["fdet_meta"]))
    assert embedded.onnx_sha256 is None  # a file cannot contain its own hash
    assert dataclasses.replace(embedded, onnx_sha256=meta.onnx_sha256) == meta
    # dynamic batch, fixed size
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "images" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]


def test_raw_graph_matches_pytorch(exported, model_and_meta, images_nchw):
    model, anchors, _ = model_and_meta
    sess = V.ort_session(exported["files"]["raw"]["onnx"])
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores"]
    for bs in (1, 3):
        x = images_nchw[:bs]
        boxes, scores = sess.run(None, {"images": x})
        ref_b, ref_s = V.torch_raw(model, anchors, x)
        assert boxes.dtype == np.float32 and boxes.shape == (bs, anchors.shape[0], 4)
        assert scores.shape == (bs, anchors.shape[0], 4)
        np.testing.assert_allclose(boxes, ref_b, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(scores, ref_s, rtol=1e-3, atol=1e-5)


def test_nms_graph_equals_pytorch_postprocess(exported, model_and_meta, images_nchw):
    model, anchors, meta = model_and_meta
    sess = V.ort_session(exported["files"]["nms"]["onnx"])
    assert [o.name for o in sess.get_outputs()] == ["num_detections", "detection_boxes", "detection_scores",
                                                    "detection_classes"]
    for bs in (1, 3):
        x = images_nchw[:bs]
        got = sess.run(None, {"images": x})
        ref = V.torch_detections(model, anchors, x, meta.nms)
        m = match_exact(got, ref, raw=V.torch_raw(model, anchors, x))
        assert m["match"], m
        assert got[0].dtype == np.int32 and got[3].dtype == np.int32 and got[0].shape == (bs, 1)
        assert got[1].shape == (bs, meta.nms.max_detections, 4)
        assert V.padding_is_zero(got)
        assert int(got[0].min()) > 5  # the tiny model really detects things here
    # Overlapping objects: NMS must have suppressed boxes (fewer than with NMS switched off).
    no_nms = dataclasses.replace(meta.nms, iou_threshold=1.0, max_detections=10_000)
    many = V.torch_detections(model, anchors, images_nchw, no_nms)[0]
    assert np.all(many[:, 0] > ref[0][:, 0])


@pytest.mark.parametrize("agnostic,top_k,k", [(True, 4096, 100), (False, 50, 80), (True, 30, 12)])
def test_nms_tail_variants(exported, model_and_meta, images_nchw, agnostic, top_k, k):
    """Graph surgery alone: class-agnostic NMS, pre-NMS top-k below N*C, K larger than top-k (padding)."""
    import onnx_graphsurgeon as gs

    from export import graphs as G
    model, anchors, meta = model_and_meta
    nms = dataclasses.replace(meta.nms, class_agnostic=agnostic, pre_nms_top_k=top_k, max_detections=k)
    raw = onnx.load(exported["files"]["raw"]["onnx"])
    g = G.add_onnx_nms_tail(gs.import_onnx(raw), nms)
    m = G.to_model(g)
    onnx.checker.check_model(m, full_check=True)
    got = V.ort_session(m).run(None, {"images": images_nchw})
    ref = V.torch_detections(model, anchors, images_nchw, nms)
    res = match_exact(got, ref, raw=V.torch_raw(model, anchors, images_nchw))
    assert res["match"], res
    assert got[1].shape == (3, k, 4) and V.padding_is_zero(got)


def test_image_without_objects(empty_ckpt, tmp_path):
    from export.onnx import export_onnx
    from runtime.trt_reference import run_trt_graph_reference
    res = export_onnx(empty_ckpt, tmp_path / "out", verify_images="synthetic", evaluate=False, simplify_graphs=False,
                      threads=1, quiet=True)
    assert res["ok"], res["report"]["graphs"]
    from export.data import synthetic_images
    from runtime.preprocess import Preprocessor
    meta = read_sidecar(res["files"]["nms"]["onnx"])
    x = Preprocessor.from_meta(meta)(synthetic_images(2, seed=3))[0]
    for outs in (V.ort_session(res["files"]["nms"]["onnx"]).run(None, {"images": x}),
                 run_trt_graph_reference(res["files"]["trt"]["onnx"], x)):
        num, boxes, scores, classes = outs
        assert num.tolist() == [[0], [0]] and num.dtype == np.int32
        assert not boxes.any() and not scores.any() and not classes.any()


def test_cli_help_is_complete():
    out = subprocess.run([sys.executable, "-m", "export.onnx", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--checkpoint", "--out", "--int8", "--calib-images", "--plugin-version", "--verify-images",
                 "--eval", "--no-simplify", "--opset", "--threads"):
        assert flag in out.stdout


def test_int8_without_calibration_source_is_a_usage_error(tiny_ckpt, tmp_path):
    from distill.checkpoint import load_checkpoint, save_checkpoint
    from export.onnx import export_onnx, main
    ck = load_checkpoint(tiny_ckpt)
    ck.pop("path")
    ck["config"] = {**ck["config"], "data_root": str(tmp_path / "nowhere")}
    save_checkpoint(tmp_path / "c.pt", ck)
    with pytest.raises(ValueError, match="--int8 needs --calib-images"):
        export_onnx(tmp_path / "c.pt", tmp_path / "o", int8=True, quiet=True)
    assert not (tmp_path / "o").exists()  # nothing written before inputs are validated
    assert main(["--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o"), "--int8"]) == 2
    with pytest.raises(ValueError, match="only used with --int8"):
        export_onnx(tmp_path / "c.pt", tmp_path / "o", calib_images=tmp_path, quiet=True)


def test_latest_run_lookup(tmp_path):
    import os

    from export.data import default_export_dir, find_latest_checkpoint, run_name
    runs = tmp_path / "runs"
    for i, name in enumerate(["a/best.pt", "kd/best.pt", "x/y/best.pt"]):
        p = runs / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        os.utime(p, (1000 + i, 1000 + (i if name != "kd/best.pt" else 10)))
    latest = find_latest_checkpoint(runs)
    assert latest == runs / "kd" / "best.pt"
    assert run_name(runs / "x/y/best.pt", runs) == "x/y" and run_name(runs / "kd", runs) == "kd"
    assert default_export_dir(latest, runs, tmp_path / "exports") == tmp_path / "exports" / "kd"
    with pytest.raises(ValueError, match="no best.pt"):
        find_latest_checkpoint(tmp_path / "empty")
