import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.metadata import (
    ModelMeta,
    NMSConfig,
    library_versions,
    read_sidecar,
    sha256_file,
    sidecar_path,
    write_sidecar,
)

REPO = Path(__file__).resolve().parents[2]


def make_meta(**kw):
    base = dict(
        model_name="ssdlite_tiny",
        class_names=["cat", "dog", "bird"],
        category_ids=[1, 3, 7],
        input_size=(32, 48),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    base.update(kw)
    return ModelMeta(**base)


def test_runtime_modules_do_not_import_torch():
    code = (
        "import runtime.metadata, runtime.preprocess, runtime.metrics, runtime.nms_reference; "
        "import sys; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'distill' not in sys.modules, 'distill imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "field,value",
    [
        ("score_threshold", -0.1),
        ("score_threshold", 1.5),
        ("iou_threshold", 2.0),
        ("max_detections", 0),
        ("pre_nms_top_k", -5),
        ("max_detections", 1.5),
    ],
)
def test_nms_config_validate_names_field(field, value):
    cfg = NMSConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        cfg.validate()


def test_nms_config_defaults_valid():
    cfg = NMSConfig().validate()
    assert cfg.score_threshold == 0.01 and cfg.iou_threshold == 0.45
    assert cfg.max_detections == 100 and cfg.pre_nms_top_k == 4096 and cfg.class_agnostic is False


def test_round_trip_dict_and_json():
    meta = make_meta(
        nms=NMSConfig(score_threshold=0.2, class_agnostic=True),
        graph="trt",
        precision="fp16",
        onnx_sha256="a" * 64,
        nms_plugin={"name": "EfficientNMS_TRT", "version": "1"},
        versions={"numpy": "2.0"},
        extra={"note": 1},
    )
    d = json.loads(json.dumps(meta.to_dict()))
    back = ModelMeta.from_dict(d)
    assert back == meta
    assert back.input_size == (32, 48) and isinstance(back.nms, NMSConfig)


def test_from_dict_rejects_unknown_version_and_missing_keys():
    d = make_meta().to_dict()
    with pytest.raises(ValueError, match="format_version"):
        ModelMeta.from_dict({**d, "format_version": 99})
    d2 = dict(d)
    del d2["mean"], d2["resize_mode"]
    with pytest.raises(ValueError, match=r"mean.*resize_mode|resize_mode.*mean"):
        ModelMeta.from_dict(d2)
    with pytest.raises(ValueError, match="bogus"):
        ModelMeta.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match="max_detections"):
        ModelMeta.from_dict({**d, "nms": {k: v for k, v in d["nms"].items() if k != "max_detections"}})


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(resize_mode="crop"), "resize_mode"),
        (dict(layout="NHWC"), "layout"),
        (dict(color="BGR"), "color"),
        (dict(graph="tflite"), "graph"),
        (dict(precision="fp8"), "precision"),
        (dict(category_ids=[1, 2]), "category_ids"),
        (dict(input_size=(0, 32)), "input_size"),
        (dict(std=(0.2, 0.0, 0.2)), "std"),
        (dict(mean=(0.5, 0.5)), "mean"),
    ],
)
def test_model_meta_rejects_bad_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        make_meta(**kw)


def test_sidecar_path():
    assert sidecar_path("exports/x/model.onnx") == Path("exports/x/model.json")
    assert sidecar_path(Path("a/model_fp16.engine")) == Path("a/model_fp16.json")
    with pytest.raises(ValueError):
        sidecar_path("a/model.json")


def test_write_read_sidecar(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx")
    meta = make_meta(onnx_sha256=sha256_file(model), versions=library_versions())
    path = write_sidecar(model, meta)
    assert path == tmp_path / "model.json"
    assert read_sidecar(model) == meta
    assert read_sidecar(path) == meta  # the sidecar itself is accepted too
    assert not list(tmp_path.glob("*.tmp"))


def test_read_sidecar_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.json"):
        read_sidecar(tmp_path / "missing.onnx")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_sidecar(tmp_path / "bad.engine")
    (tmp_path / "old.json").write_text(json.dumps({"format_version": 0}))
    with pytest.raises(ValueError, match="old.json.*format_version"):
        read_sidecar(tmp_path / "old.onnx")


def test_sha256_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_library_versions_has_numpy():
    import numpy

    v = library_versions()
    assert v["numpy"] == numpy.__version__
    assert all(isinstance(x, str) for x in v.values())
