"""runtime.load_classifier over PyTorch, ONNX Runtime and OpenVINO; wrong kinds of model; the text evaluation."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.export.test_text_export import make_text_checkpoint


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """(checkpoint, model.onnx) of an untrained student, 64 px, dynamic H x W."""
    import torch

    from export.text import TextSource, export_text_graph
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("clf")
    ck = make_text_checkpoint(root / "best.pt")
    graph = export_text_graph(TextSource.load(ck), root / "export", simplify_graph=False)
    return ck, graph.onnx


@pytest.fixture(scope="module")
def images():
    from distill.text.data import generate
    rng = np.random.default_rng(3)
    out = [generate(1, i, (64, 64)).image for i in range(4)]
    return out + [rng.integers(0, 256, (90, 50, 3), dtype=np.uint8), rng.integers(0, 256, (40, 120, 3), dtype=np.uint8)]


def _check_predictions(preds, n):
    assert len(preds) == n
    for p in preds:
        assert set(p) == {"text_prob", "is_text", "regions"} and isinstance(p["text_prob"], float)
        assert p["is_text"] == (p["text_prob"] >= 0.5)
        assert p["regions"][3].shape == (3, 3) and p["regions"][5].shape == (5, 5)
        assert p["regions"][3].dtype == np.float32
        assert p["text_prob"] == pytest.approx(max(p["regions"][3].max(), p["regions"][5].max()), abs=1e-6)


def _agree(a, b, atol=1e-4):
    for x, y in zip(a, b):
        assert x["is_text"] == y["is_text"]
        assert abs(x["text_prob"] - y["text_prob"]) <= atol
        for g in (3, 5):
            np.testing.assert_allclose(x["regions"][g], y["regions"][g], atol=atol)


def test_torch_and_onnxruntime_agree(text_model, images):
    from runtime import load_classifier
    ck, onnx = text_model
    with load_classifier(ck, threads=1) as pt, load_classifier(onnx, threads=1) as ort:
        assert pt.name == "pytorch-cpu" and ort.name == "onnxruntime-cpu-fp32"
        a, b = pt.predict(images), ort.predict(images)
    _check_predictions(a, len(images))
    _check_predictions(b, len(images))
    _agree(a, b)
    probs = [p["text_prob"] for p in a]
    assert max(probs) - min(probs) > 1e-2            # different images, different answers


def test_openvino_agrees(text_model, images):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    from runtime import load_classifier
    ck, onnx = text_model
    with load_classifier(onnx, backend="openvino", threads=1) as ov, load_classifier(onnx, threads=1) as ort:
        assert ov.name == "openvino-cpu-fp32"
        _agree(ov.predict(images), ort.predict(images))


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_wrong_kind_of_model_is_one_line(text_model, tmp_path):
    from runtime import load_classifier, load_detector
    from runtime.metadata import read_sidecar, write_sidecar
    from tests.helpers import make_tiny_checkpoint
    ck, onnx = text_model
    with pytest.raises(ValueError) as e:
        load_detector(onnx)
    assert "text / non-text classifier export" in _one_line(e) and "load_classifier" in _one_line(e)
    with pytest.raises(ValueError) as e:
        load_detector(ck)
    assert "classifier checkpoint" in _one_line(e)
    det_ck = make_tiny_checkpoint(tmp_path / "det.pt", img_size=64, num_classes=2)
    with pytest.raises(ValueError) as e:
        load_classifier(det_ck)
    assert "detector checkpoint" in _one_line(e) and "load_detector" in _one_line(e)
    det_onnx = tmp_path / "det" / "model_nms.onnx"       # a detector's sidecar beside a graph
    det_onnx.parent.mkdir()
    shutil.copy(onnx, det_onnx)
    write_sidecar(det_onnx, dataclasses.replace(read_sidecar(onnx), task="detect", model_name="ssdlite_mobilenetv2"))
    with pytest.raises(ValueError) as e:
        load_classifier(det_onnx)
    assert "is a detect export" in _one_line(e) and "load_detector" in _one_line(e)
    with pytest.raises(ValueError, match="cannot open"):
        load_classifier(ck, backend="openvino")


def test_bad_sidecar_grids_and_changed_file(text_model, tmp_path):
    from runtime import load_classifier
    from runtime.metadata import read_sidecar, write_sidecar
    _, onnx = text_model
    copy = tmp_path / "model.onnx"
    shutil.copy(onnx, copy)
    meta = read_sidecar(onnx)
    write_sidecar(copy, dataclasses.replace(meta, extra={**meta.extra, "grids": [3, 7]}))
    with pytest.raises(ValueError, match=r"lacks the outputs \['region_prob_7'\]"):
        load_classifier(copy)
    write_sidecar(copy, dataclasses.replace(meta, extra={**meta.extra, "grids": "3"}))
    with pytest.raises(ValueError, match="extra.grids must be a list"):
        load_classifier(copy)
    write_sidecar(copy, meta)
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="changed after export"):
        load_classifier(copy)


def test_evaluate_cli_on_a_text_folder(text_model, tmp_path, capsys):
    from export.text import TextSource, write_embedded_split
    from runtime import load_classifier
    from runtime.evaluate import main
    from runtime.textdata import TextFolder, text_prf
    ck, onnx = text_model
    folder = write_embedded_split(TextSource.load(ck), tmp_path / "data" / "text_val", count=8)
    out = tmp_path / "eval"
    assert main(["--model", str(onnx), "--data", f"text:{folder}", "--out", str(out), "--batch-size", "3"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "text" and m["images"] == 8 and m["tp"] + m["fp"] + m["fn"] + m["tn"] == 8
    ds = TextFolder(folder)
    with load_classifier(onnx, threads=1) as clf:
        probs = np.array([p["text_prob"] for p in clf.predict([ds[i][0] for i in range(len(ds))])])
    expected = text_prf(probs, ds.labels, 0.5)
    assert {k: m[k] for k in ("precision", "recall", "f1", "tp", "fp")} == \
        pytest.approx({k: expected[k] for k in ("precision", "recall", "f1", "tp", "fp")})
    assert (out / "region_maps.png").stat().st_size > 1000
    assert "P" in capsys.readouterr().out
    # --data text: the embedded split under --data-root; a checkpoint is evaluated the same way
    assert main(["--model", str(ck), "--data", "text", "--data-root", str(tmp_path / "data")]) == 0


def test_evaluate_cli_bad_text_data_is_one_line(text_model, tmp_path, capsys):
    from runtime.evaluate import main
    _, onnx = text_model
    (tmp_path / "only_text" / "text").mkdir(parents=True)
    for data, words in ((f"text:{tmp_path / 'only_text'}", "has no nontext/"),
                        ("text", "not on disk")):
        assert main(["--model", str(onnx), "--data", data, "--data-root", str(tmp_path / "none")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0]
