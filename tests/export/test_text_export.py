"""Export of the text / non-text classifier: graph contract, parity with PyTorch, dynamic sizes, sidecar, INT8."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

IMG = 64


def make_text_checkpoint(path: Path, img_size: int = IMG, seed: int = 0, spread: float = 200.0) -> Path:
    """An untrained textnet_student checkpoint (the contract's extra fields). ``spread`` scales the region
    classifier's weights so that probabilities differ between images (an untrained head gives ~0.5 for all)."""
    import torch

    from distill.checkpoint import Checkpoint
    from distill.text.models import create_text_model
    torch.manual_seed(seed)
    model = create_text_model("textnet_student")
    with torch.no_grad():
        for head in model.heads.values():
            head.cls.weight.mul_(spread)
            head.map.weight.mul_(4.0)
    ck = Checkpoint(model_name="textnet_student", model_kwargs={}, num_classes=1, model=model.state_dict(),
                    class_names=["text"], category_ids=[1],
                    extra={"task": "text", "img_size": [img_size, img_size], "mean": [0.485, 0.456, 0.406],
                           "std": [0.229, 0.224, 0.225], "threshold": 0.5, "grids": [3, 5]})
    ck.save(path)
    return path


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory) -> Path:
    return make_text_checkpoint(tmp_path_factory.mktemp("textck") / "best.pt")


@pytest.fixture(scope="module")
def text_export(text_ckpt, tmp_path_factory):
    """export_text(...) report of the checkpoint: model.onnx + model_int8.onnx, 12 validation images."""
    import torch

    from export.text import TextExportOptions, export_text
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("textexp")
    # 12 images: one flipped decision moves F by many points, so the gate is opened here (tested on its own below)
    return export_text(text_ckpt, out, TextExportOptions(int8=True, val_count=12, calib_count=8, threads=1,
                                                         int8_max_f_drop=100.0), log=lambda _m: None)


def _session(path):
    from export.verify import ort_session
    return ort_session(path, threads=1)


def test_graph_follows_the_contract_at_batch_1_and_3_and_other_sizes(text_export):
    sess = _session(Path(text_export["out_dir"]) / "model.onnx")
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["text_prob", "region_prob_3", "region_prob_5"]
    rng = np.random.default_rng(0)
    for shape in [(1, 3, IMG, IMG), (3, 3, IMG, IMG), (2, 3, 48, 80)]:   # dynamic batch and H x W
        text, r3, r5 = sess.run(None, {"images": rng.standard_normal(shape).astype(np.float32)})
        b = shape[0]
        assert text.shape == (b,) and r3.shape == (b, 3, 3) and r5.shape == (b, 5, 5)
        assert all(a.dtype == np.float32 and (a >= 0).all() and (a <= 1).all() for a in (text, r3, r5))
        # image level = logical OR of the regions: the largest region probability
        np.testing.assert_allclose(text, np.maximum(r3.reshape(b, -1).max(1), r5.reshape(b, -1).max(1)), atol=1e-6)


def test_graph_matches_pytorch(text_export, text_ckpt):
    from export.text import TextSource, onnx_probabilities, split_images, torch_probabilities
    from runtime.preprocess import Preprocessor
    row = text_export["graphs"]["fp32"]
    assert row["ok"] and row["decisions_match"] and row["max_abs_diff"] <= 1e-4
    assert {(c["batch"], tuple(c["size"])) for c in row["checks"]} >= {(1, (IMG, IMG)), (3, (IMG, IMG))}
    assert any(tuple(c["size"]) != (IMG, IMG) for c in row["checks"])     # a second input size was checked
    src = TextSource.load(text_ckpt)
    images, _, _ = split_images(src, "val", 3)
    x = Preprocessor.from_meta(src.meta)(images)[0]
    got = onnx_probabilities(Path(text_export["out_dir"]) / "model.onnx", x)
    ref = torch_probabilities(src, x)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], atol=1e-5)
    assert np.ptp(ref["text_prob"]) > 1e-2        # the images are told apart: the comparison means something


def test_sidecar_fields_and_hash(text_export):
    from runtime.metadata import read_onnx_mirror, read_sidecar, sha256_file
    path = Path(text_export["out_dir"]) / "model.onnx"
    meta = read_sidecar(path)
    assert meta.task == "text" and meta.graph == "raw" and meta.precision == "fp32"
    assert meta.input_size == (IMG, IMG) and meta.layout == "NCHW" and meta.color == "RGB"
    assert meta.mean == (0.485, 0.456, 0.406) and meta.std == (0.229, 0.224, 0.225)
    e = meta.extra
    assert e["grids"] == [3, 5] and e["threshold"] == 0.5 and e["opset"] == 17 and e["dynamic_hw"] is True
    assert 70_000 < e["params"] < 105_000                                  # the paper's 0.087 M, within 20 %
    assert list(e["outputs"]) == ["text_prob", "region_prob_3", "region_prob_5"] and e["input"]["name"] == "images"
    assert meta.onnx_sha256 == sha256_file(path)
    assert read_onnx_mirror(path).task == "text"
    report = json.loads((Path(text_export["out_dir"]) / "export_report.json").read_text())
    assert report["ok"] and report["task"] == "text" and set(report["graphs"]) == {"fp32", "int8"}


def test_fixed_size_export(text_ckpt, tmp_path):
    from export.text import TextSource, export_text_graph
    w = export_text_graph(TextSource.load(text_ckpt), tmp_path, dynamic_hw=False, simplify_graph=False)
    dims = _session(w.onnx).get_inputs()[0].shape
    assert dims[1:] == [3, IMG, IMG] and not isinstance(dims[0], int)
    assert w.meta.extra["dynamic_hw"] is False


def test_int8_graph_runs_and_decides_like_fp32(text_export, text_ckpt):
    from export.text import TextSource, onnx_probabilities, split_images
    from runtime.metadata import read_sidecar
    from runtime.preprocess import Preprocessor
    out = Path(text_export["out_dir"])
    meta = read_sidecar(out / "model_int8.onnx")
    assert meta.precision == "int8" and meta.task == "text" and meta.extra["quantization"]["per_channel"]
    prf = text_export["prf"]
    assert text_export["graphs"]["int8"]["ok"]
    assert prf["int8_f_drop"] == pytest.approx(prf["fp32"]["f1"] - prf["int8"]["f1"])
    src = TextSource.load(text_ckpt)
    images, _, _ = split_images(src, "val", 16)
    x = Preprocessor.from_meta(src.meta)(images)[0]
    fp32 = onnx_probabilities(out / "model.onnx", x)["text_prob"]
    int8 = onnx_probabilities(out / "model_int8.onnx", x)["text_prob"]
    assert not np.array_equal(fp32, int8)                                 # really another graph
    cut = float(np.median(fp32))                                          # a threshold that splits the images
    assert np.mean((fp32 >= cut) == (int8 >= cut)) >= 0.75
    assert np.abs(fp32 - int8).max() < 0.1


def test_export_onnx_dispatches_text_checkpoints(text_ckpt, tmp_path, capsys):
    from export.onnx import main
    out = tmp_path / "cli"
    assert main(["--checkpoint", str(text_ckpt), "--out", str(out), "--val-count", "4", "--quiet"]) == 0
    assert (out / "model.onnx").is_file() and (out / "model.json").is_file()
    assert not (out / "model_raw.onnx").exists()
    assert main(["--checkpoint", str(text_ckpt), "--out", str(tmp_path / "x"), "--fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fp16" in err[0] and "detector graphs only" in err[0]


def test_export_text_refuses_a_detector_checkpoint(tmp_path, capsys):
    from export.text import main
    from tests.helpers import make_tiny_checkpoint
    ck = make_tiny_checkpoint(tmp_path / "det.pt", img_size=64, num_classes=2)
    assert main(["--checkpoint", str(ck), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a text / non-text classifier" in err[0]


def test_text_benchmark_rows(text_export, text_ckpt, tmp_path):
    from benchmarks.run import main
    out = tmp_path / "bench"
    assert main(["--checkpoint", str(text_ckpt), "--exports", text_export["out_dir"], "--out", str(out),
                 "--quick", "--max-images", "6"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {e["name"]: e for e in report["backends"]}
    for name in ("pytorch-cpu", "onnxruntime-cpu-fp32", "onnxruntime-cpu-int8"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["latency_b1_ms"]["p50"] > 0 and 0 <= rows[name]["f1"] <= 100
    assert rows["onnxruntime-cpu-fp32"]["parity"]["ok"] and rows["onnxruntime-cpu-fp32"]["params"] == report["params"]
    assert rows["tensorrt"]["status"] == "unavailable"
    assert "p50 ms" in (out / "report.md").read_text()


def test_int8_gate_fails_beyond_the_allowed_drop(text_export, text_ckpt):
    from export.text import TextSource, f_gate, split_images
    out = Path(text_export["out_dir"])
    src = TextSource.load(text_ckpt)
    images, labels, _ = split_images(src, "val", 12)
    graphs = {"fp32": out / "model.onnx", "int8": out / "model_int8.onnx"}
    drop = f_gate(graphs, src, images, labels, max_drop=100.0)["int8_f_drop"]
    assert f_gate(graphs, src, images, labels, max_drop=drop + 0.01)["ok"]
    assert not f_gate(graphs, src, images, labels, max_drop=drop - 0.01)["ok"]


def test_tensorrt_engine_of_the_text_graph(text_export, tmp_path, monkeypatch, capsys):
    """python -m export.trt on model.onnx: without TensorRT one line and exit 2; INT8 refused; with a (fake)
    TensorRT 10 an FP16 engine with the profile at the sidecar's size and a task "text" sidecar; TensorRT 11
    (strongly typed) refuses FP16 with one line."""
    from export.trt import env
    from export.trt.cli import main
    from runtime.metadata import read_sidecar
    from tests.export.fake_tensorrt import FakeCuda, fake_tensorrt
    onnx = Path(text_export["out_dir"]) / "model.onnx"
    assert main(["--onnx", str(onnx), "--int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fp32 or fp16" in err[0]
    if env.import_tensorrt()[0] is None:
        assert main(["--onnx", str(onnx), "--fp16", "--out", str(tmp_path / "none.engine")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "TensorRT" in err[0] and not (tmp_path / "none.engine").exists()
    for major, rc in ((10, 0), (11, 2)):
        trt = fake_tensorrt(major)
        monkeypatch.setattr(env, "import_tensorrt", lambda trt=trt: (trt, None))
        monkeypatch.setattr(env, "import_cuda", lambda: (FakeCuda((8, 9)), None))
        engine = tmp_path / f"text{major}.engine"
        assert main(["--onnx", str(onnx), "--fp16", "--out", str(engine)]) == rc
        if rc:
            assert "TensorRT >= 11" in capsys.readouterr().err and not engine.exists()
            continue
        plan = json.loads(engine.read_bytes())
        assert "FP16" in plan["flags"]
        meta = read_sidecar(engine)
        assert (meta.task, meta.graph, meta.precision) == ("text", "engine", "fp16")
        assert meta.extra["grids"] == [3, 5] and meta.onnx_sha256 == read_sidecar(onnx).onnx_sha256


def test_checks_use_the_checkpoints_training_splits(text_ckpt):
    from distill.checkpoint import Checkpoint
    from distill.config import TrainConfig
    from distill.text.data import generate
    from distill.text.train import VAL_SEED_OFFSET
    from export.text import TextSource, split_samples
    ck = Checkpoint.load(text_ckpt)
    ck.config = TrainConfig.from_dict({"data": {"data": "text", "shapes_train": 6, "shapes_val": 5, "shapes_seed": 3,
                                                "img_size": IMG}}, "test").to_dict()
    src = TextSource.load(ck)
    val, _ = split_samples(src, "val", 4)
    assert [label for _, _, label in val] == [1, 0, 1, 0]
    assert np.array_equal(val[0][0], generate(3 + VAL_SEED_OFFSET, 0, (IMG, IMG)).image)
    train, _ = split_samples(src, "train", 100)
    assert len(train) == 6 and np.array_equal(train[1][0], generate(3, 1, (IMG, IMG)).image)


@pytest.mark.parametrize("major", [10, 11])
def test_text_fp32_engine_clears_tf32_unless_asked(text_export, tmp_path, monkeypatch, major):
    """An FP32 text engine computes in FP32 (TensorRT's default TF32 cleared, 10 and 11); --tf32 keeps TF32."""
    from export.trt import env
    from export.trt.cli import main
    from runtime.metadata import read_sidecar
    from tests.export.fake_tensorrt import FakeCuda, fake_tensorrt
    onnx = Path(text_export["out_dir"]) / "model.onnx"
    trt = fake_tensorrt(major)
    monkeypatch.setattr(env, "import_tensorrt", lambda: (trt, None))
    monkeypatch.setattr(env, "import_cuda", lambda: (FakeCuda((8, 9)), None))
    for flags, tf32 in (([], False), (["--tf32"], True)):
        engine = tmp_path / f"text{len(flags)}.engine"
        assert main(["--onnx", str(onnx), "--out", str(engine), *flags]) == 0
        plan = json.loads(engine.read_bytes())
        assert plan["tf32"] is tf32 and plan["cleared_flags"] == ([] if tf32 else ["TF32"])
        meta = read_sidecar(engine)
        assert meta.precision == "fp32" and meta.extra["tf32"] is tf32 and meta.extra["build_key"]["tf32"] is tf32
        assert json.loads(engine.with_name(engine.stem + ".build.json").read_text())["tf32"] is tf32


def test_uint8_input_graphs_equal_the_float_graphs(text_ckpt, tmp_path, capsys):
    """export.onnx --uint8-input on a text checkpoint: model_u8.onnx / model_int8_u8.onnx (uint8 [B, H, W, 3]
    input, sidecar input_format "uint8_nhwc") give the float graphs' probabilities on the same images at batch 1
    and 3, through ONNX Runtime directly and through load_classifier (ONNX Runtime, OpenVINO when installed)."""
    import importlib.util

    from export.onnx import main
    from export.text import TextSource, onnx_probabilities, split_images
    from export.verify import ort_session
    from runtime import load_classifier
    from runtime.metadata import read_sidecar, sha256_file
    from runtime.preprocess import Preprocessor
    out = tmp_path / "u8"
    assert main(["--checkpoint", str(text_ckpt), "--out", str(out), "--val-count", "4", "--int8", "--calib-count",
                 "4", "--int8-max-f-drop", "100", "--uint8-input", "--quiet"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["graphs"]["fp32_u8"]["ok"] and report["graphs"]["int8_u8"]["ok"]
    meta = read_sidecar(out / "model_u8.onnx")
    assert (meta.task, meta.input_format, meta.precision) == ("text", "uint8_nhwc", "fp32")
    assert meta.extra["uint8_source"] == "model.onnx" and meta.extra["input"]["dtype"] == "uint8"
    assert meta.onnx_sha256 == sha256_file(out / "model_u8.onnx") and meta.extra["grids"] == [3, 5]
    assert read_sidecar(out / "model_int8_u8.onnx").precision == "int8"
    inp = ort_session(out / "model_u8.onnx").get_inputs()[0]
    assert inp.type == "tensor(uint8)" and inp.shape[3] == 3
    images = split_images(TextSource.load(text_ckpt), "val", 3)[0]
    pre_float, pre_u8 = Preprocessor.from_meta(read_sidecar(out / "model.onnx")), Preprocessor.from_meta(meta)
    for bs in (1, 3):
        xu = pre_u8(images[:bs])[0]
        assert xu.dtype == np.uint8 and xu.shape == (bs, IMG, IMG, 3)
        ref = onnx_probabilities(out / "model.onnx", pre_float(images[:bs])[0])
        got = onnx_probabilities(out / "model_u8.onnx", xu)
        assert got["text_prob"].shape == (bs,)
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-5)
    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        with load_classifier(out / "model_u8.onnx", backend=backend, threads=1) as u8, \
                load_classifier(out / "model.onnx", backend=backend, threads=1) as fp:
            assert u8.preprocess(images).dtype == np.uint8
            got, ref = u8.probabilities(images), fp.probabilities(images)
            for name in ref:
                np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-5, err_msg=backend)
    from export.trt.cli import main as trt_main
    assert trt_main(["--onnx", str(out / "model_u8.onnx"), "--out", str(tmp_path / "u8.engine")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uint8_nhwc" in err[-1] and "model.onnx" in err[-1]
