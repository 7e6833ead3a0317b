"""Graphs with uint8 NHWC input (--uint8-input): the same detections as the float-input graph, and
the runtime feeds them from the sidecar's input_format."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import verify as V
from runtime.metadata import ModelMeta, read_sidecar


@pytest.fixture(scope="module")
def u8_graphs(exported, tmp_path_factory):
    """model_nms_u8.onnx and model_int8_nms_u8.onnx written from the shared tiny export."""
    from export.uint8_input import write_uint8_input
    out = tmp_path_factory.mktemp("u8")
    return {g: write_uint8_input(exported["files"][g]["onnx"], out / f"model_{g}_u8.onnx").onnx
            for g in ("nms", "int8_nms")}


def test_uint8_graph_gives_the_float_graphs_detections(exported, u8_graphs):
    from export.data import synthetic_images
    from export.uint8_input import verify_uint8_input
    from runtime.matching import match_exact
    from runtime.preprocess import Preprocessor
    images = synthetic_images(3, seed=11)
    for g, path in u8_graphs.items():
        m = onnx.load(str(path))
        (inp,) = m.graph.input
        dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
        assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert dims[1:] == [64, 64, 3] and isinstance(dims[0], str)  # [B, H, W, 3], dynamic batch
        meta = read_sidecar(path)
        assert meta.input_format == "uint8_nhwc" and meta.graph == "nms"
        assert meta.extra["uint8_source_sha256"] == read_sidecar(exported["files"][g]["onnx"]).onnx_sha256
        row = verify_uint8_input(exported["files"][g]["onnx"], path, images, threads=1)
        assert row["ok"] and row["detections_match"] and row["max_abs_diff"] < 1e-5, row
        # directly: resized uint8 pixels in, the float graph's four outputs out, at batch 3
        xf = Preprocessor.from_meta(read_sidecar(exported["files"][g]["onnx"]))(images)[0]
        xu = Preprocessor.from_meta(meta)(images)[0]
        assert xu.dtype == np.uint8 and xu.shape == (3, 64, 64, 3)
        want = V.ort_session(exported["files"][g]["onnx"], threads=1).run(None, {"images": xf})
        got = V.ort_session(path, threads=1).run(None, {"images": xu})
        assert match_exact(tuple(got), tuple(want))["match"]
        assert int(np.asarray(got[0]).sum()) > 0  # there is something to compare


def test_export_step_writes_and_verifies_uint8_graphs_on_request(exported, tmp_path):
    """--uint8-input: the export's step writes a uint8 twin of each NMS graph, and its rows verify them."""
    import shutil

    from export.artifacts import WrittenGraph
    from export.data import synthetic_images
    from export.onnx import ExportArtifacts, _uint8_step, build_parser
    from export.uint8_input import uint8_rows
    assert build_parser().parse_args(["--uint8-input"]).uint8_input and not build_parser().parse_args([]).uint8_input
    assert not any(g.endswith("_u8") for g in exported["files"])  # not without the flag
    graphs = {}
    for g in ("raw", "nms", "int8", "int8_nms"):
        src = Path(exported["files"][g]["onnx"])
        for suffix in (".onnx", ".json"):
            shutil.copy(src.with_suffix(suffix), tmp_path / src.with_suffix(suffix).name)
        graphs[g] = WrittenGraph(tmp_path / src.name, tmp_path / f"{src.stem}.json", read_sidecar(src), 0.0)
    art = ExportArtifacts(tmp_path, graphs, {}, None, "")
    _uint8_step(art, lambda _m: None)
    assert sorted(g for g in art.graphs if g.endswith("_u8")) == ["int8_nms_u8", "nms_u8"]
    assert (tmp_path / "model_int8_nms_u8.onnx").is_file() and (tmp_path / "model_nms_u8.json").is_file()
    rows = uint8_rows(art.paths(), synthetic_images(3, seed=4), threads=1)
    assert set(rows) == {"nms_u8", "int8_nms_u8"} and all(r["ok"] and r["detections_match"] for r in rows.values())


def test_runtime_picks_uint8_input_from_the_sidecar(exported, u8_graphs, tmp_path):
    from export.data import synthetic_images
    from runtime.load import load_detector
    images = synthetic_images(2, seed=3)
    with load_detector(exported["files"]["int8_nms"]["onnx"], threads=1) as ref, \
            load_detector(u8_graphs["int8_nms"], threads=1) as det:
        batch, hw = det.preprocess(images)
        assert batch.dtype == np.uint8 and batch.shape == (2, 64, 64, 3) and hw.tolist() == [list(i.shape[:2])
                                                                                              for i in images]
        for a, b in zip(det(images), ref(images)):
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)  # pixels
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
            np.testing.assert_array_equal(a.labels, b.labels)
    # a sidecar that contradicts the graph's input is refused at load, in one line
    bad = tmp_path / "model_nms_u8.onnx"
    bad.write_bytes(Path(u8_graphs["nms"]).read_bytes())
    d = read_sidecar(u8_graphs["nms"]).to_dict()
    d["input_format"] = "float_nchw"
    bad.with_suffix(".json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="input_format 'float_nchw' needs a float32"):
        load_detector(bad, threads=1)


def test_input_format_in_the_sidecar(exported):
    d = read_sidecar(exported["files"]["nms"]["onnx"]).to_dict()
    assert d["input_format"] == "float_nchw"
    del d["input_format"]  # a sidecar written before the field existed
    assert ModelMeta.from_dict(d).input_format == "float_nchw"
    with pytest.raises(ValueError, match="input_format"):
        ModelMeta.from_dict({**d, "input_format": "uint8_nchw"})
