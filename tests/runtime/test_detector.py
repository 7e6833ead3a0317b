"""load_detector and the Detector interface across backends (PyTorch, ONNX Runtime, TRT reference)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime import load_detector
from runtime.detector import detections_from_nms
from runtime.metadata import read_sidecar
from runtime.outputs import output_kind
from runtime.preprocess import Preprocessor, preprocess_batch
from runtime.results import Results
from tests.helpers import (
    GRID, controlled_raw_graph, image_with_bright_cell, same_detections, tiny_checkpoint, tiny_exports,
)

ROOT = Path(__file__).resolve().parents[2]


def noise_images():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((50, 70), (64, 64), (120, 33))]


def model_files():
    """Every model file of the tiny run with the load_detector arguments it needs."""
    out = [(tiny_checkpoint(), {})]
    ex = tiny_exports()
    for name, kw in (("model_raw.onnx", {}), ("model_nms.onnx", {}), ("model_int8.onnx", {}),
                     ("model_trt.onnx", {"provider": "reference"})):
        if (ex / name).is_file():
            out.append((ex / name, kw))
    return out


def test_every_file_kind_gives_the_same_detections():
    images = noise_images()
    files = model_files()
    assert len(files) >= 2
    ref = load_detector(files[0][0])(images)
    assert all(len(d["scores"]) > 0 for d in ref), "the tiny model must detect something"
    for path, kw in files[1:]:
        det = load_detector(path, **kw)
        if det.meta.precision == "int8":
            continue  # quantised: parity tests hold it to mAP bounds instead
        got = det(images)
        for i, (a, b) in enumerate(zip(ref, got)):
            assert same_detections(a, b), f"{det.name} differs from pytorch on image {i}"
        for d in got:
            assert d["boxes"].dtype == np.float32 and d["boxes"].shape[1:] == (4,)
            assert d["labels"].dtype == np.int64 and d["labels"].min() >= 1 and d["labels"].max() <= det.meta.num_classes
            assert np.all(np.diff(d["scores"]) <= 0), "sorted by descending score"


def test_names_and_kinds():
    assert load_detector(tiny_checkpoint()).name == "pytorch-cpu"
    raw = load_detector(tiny_exports() / "model_raw.onnx")
    assert (raw.name, raw.kind) == ("onnxruntime-cpu-raw", "raw")
    nms = tiny_exports() / "model_nms.onnx"
    if nms.is_file():
        det = load_detector(nms)
        assert (det.name, det.kind) == ("onnxruntime-cpu-nms", "nms")


@pytest.mark.parametrize("which", ["checkpoint", "onnx"])
def test_mixed_sizes_in_one_batch_equal_one_by_one(which):
    path = tiny_checkpoint() if which == "checkpoint" else tiny_exports() / "model_raw.onnx"
    det = load_detector(path)
    images = noise_images()
    batch = det(images)
    for img, d in zip(images, batch):
        single = det(img)  # a single image gives a single result
        assert isinstance(single, Results) and set(dict(single)) == {"boxes", "scores", "labels"}
        assert same_detections(single, d)
        h, w = img.shape[:2]
        assert d["boxes"][:, [0, 2]].max() <= w and d["boxes"][:, [1, 3]].max() <= h


def test_path_pil_and_array_inputs_agree(tmp_path):
    img = noise_images()[0]
    Image.fromarray(img).save(tmp_path / "a.png")
    det = load_detector(tiny_exports() / "model_raw.onnx")
    a, b, c = det([str(tmp_path / "a.png"), Image.fromarray(img), img])
    assert same_detections(a, b) and same_detections(a, c)


@pytest.mark.parametrize("hw", [(120, 200), (64, 64), (300, 90)])
def test_boxes_map_back_to_original_pixels(hw):
    """The controlled model finds the bright cell; the box must land on it in original pixels."""
    h, w = hw
    det = load_detector(controlled_raw_graph())
    row, col = 1, 2
    d = det(image_with_bright_cell(h, w, row, col))
    assert d["labels"].tolist() == [1]
    expected = np.array([col * w / GRID, row * h / GRID, (col + 1) * w / GRID, (row + 1) * h / GRID], np.float32)
    np.testing.assert_allclose(d["boxes"][0], expected, atol=1e-3 * max(h, w))
    assert d["scores"][0] > 0.99


def test_controlled_model_mixed_batch_each_in_its_own_frame():
    det = load_detector(controlled_raw_graph())
    imgs = [image_with_bright_cell(80, 160, 0, 0), image_with_bright_cell(200, 40, 3, 3)]
    a, b = det(imgs)
    np.testing.assert_allclose(a["boxes"][0], [0, 0, 40, 20], atol=0.2)
    np.testing.assert_allclose(b["boxes"][0], [30, 150, 40, 200], atol=0.2)


def test_detector_preprocessor_is_bit_identical_to_preprocess_batch():
    meta = read_sidecar(tiny_exports() / "model_raw.onnx")
    pre = Preprocessor.from_meta(meta, reuse_buffer=True)
    images = noise_images() + [np.zeros((64, 64, 3), np.uint8), np.full((7, 9, 3), 255, np.uint8)]
    ref, ref_hw = preprocess_batch(images, meta.input_size, meta.mean, meta.std)
    got, got_hw = pre(images)
    assert got.dtype == np.float32 and np.array_equal(got, ref) and np.array_equal(got_hw, ref_hw)


def test_detections_from_nms_reads_only_valid_rows_and_scales():
    num = np.array([[2], [0]], np.int32)
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0] = [0.1, 0.2, 0.5, 0.6]
    boxes[0, 1] = [0.0, 0.0, 1.0, 1.0]
    boxes[0, 2] = [0.3, 0.3, 0.4, 0.4]  # past num_detections: ignored
    scores = np.array([[0.9, 0.5, 0.4], [0, 0, 0]], np.float32)
    classes = np.array([[0, 2, 1], [0, 0, 0]], np.int32)
    out = detections_from_nms(num, boxes, scores, classes, np.array([[100, 200], [10, 10]]), num_classes=3)
    np.testing.assert_allclose(out[0]["boxes"], [[20, 20, 100, 60], [0, 0, 200, 100]])
    assert out[0]["labels"].tolist() == [1, 3] and out[1]["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match="0-based object classes"):
        detections_from_nms(num, boxes, scores, classes + 2, np.array([[1, 1], [1, 1]]), num_classes=3)


def test_output_kind():
    assert output_kind(["num_detections", "detection_boxes", "detection_scores", "detection_classes"]) == "nms"
    assert output_kind(["scores", "boxes"]) == "raw"
    with pytest.raises(ValueError, match="neither"):
        output_kind(["loc", "conf"])


def test_user_errors(tmp_path):
    with pytest.raises(ValueError, match="model file not found"):
        load_detector(tmp_path / "missing.onnx")
    (tmp_path / "x.tflite").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot tell the backend"):
        load_detector(tmp_path / "x.tflite")
    with pytest.raises(ValueError, match="fp16 is not an ONNX Runtime option"):
        load_detector(tiny_exports() / "model_raw.onnx", fp16=True)
    with pytest.raises(ValueError, match="provider must be one of"):
        load_detector(tiny_exports() / "model_raw.onnx", provider="coreml")
    with pytest.raises(RuntimeError, match="not available here"):
        load_detector(tiny_exports() / "model_raw.onnx", provider="cuda")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        load_detector(tiny_checkpoint(), fp16=True)


def test_trt_graph_needs_the_reference_provider():
    trt_graph = tiny_exports() / "model_trt.onnx"
    if not trt_graph.is_file():
        pytest.skip("export.onnx has not produced model_trt.onnx yet")
    with pytest.raises(RuntimeError, match="provider='reference'"):
        load_detector(trt_graph)
    det = load_detector(trt_graph, provider="reference")
    assert det.name == "trt-reference-cpu" and det.kind == "nms"


def test_ort_session_is_lean():
    from runtime.backends import cpu_cores

    det = load_detector(tiny_exports() / "model_raw.onnx")
    so = det.session.get_session_options()
    import onnxruntime as ort

    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.intra_op_num_threads == cpu_cores()
    assert load_detector(tiny_exports() / "model_raw.onnx", threads=1).session.get_session_options().intra_op_num_threads == 1


def test_runtime_onnx_path_never_imports_torch():
    model = tiny_exports() / "model_raw.onnx"
    code = (
        "import sys, numpy as np\n"
        "import runtime\n"
        "from runtime import load_detector\n"
        "import runtime.evaluate, runtime.parity, runtime.backends.trt_backend, runtime.predict, runtime.video\n"
        f"det = load_detector({str(model)!r})\n"
        "det([np.zeros((30, 40, 3), np.uint8)])\n"
        "bad = [m for m in ('torch', 'torchvision', 'distill') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
