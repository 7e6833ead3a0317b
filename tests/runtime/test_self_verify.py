"""Exports that verify themselves: the sidecar's sha256, class count, input size and K checked at load;
corrupt model files are errors (``unavailable`` is for a missing backend only); non-finite checkpoints
are refused at export and at load, naming the tensor."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime.integrity import check_file_hash, check_io_shapes
from runtime.load import load_detector
from runtime.metadata import read_sidecar, sha256_file, write_sidecar
from tests.helpers import tiny_checkpoint, tiny_coco, tiny_exports

GRAPHS = ("model_raw", "model_nms", "model_trt")


def _copy_export(dst: Path, stems=GRAPHS) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        for suffix in (".onnx", ".json"):
            shutil.copy(tiny_exports() / f"{stem}{suffix}", dst / f"{stem}{suffix}")
    return dst


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- sha256
def test_a_file_changed_after_export_is_refused_in_one_line_and_accepted_with_the_flag(tmp_path):
    import onnx

    folder = _copy_export(tmp_path, ("model_nms",))
    path = folder / "model_nms.onnx"
    assert check_file_hash(path) == read_sidecar(path).onnx_sha256 == sha256_file(path)
    model = onnx.load(str(path))
    model.doc_string = "edited after export"          # still a valid graph, another file
    onnx.save(model, str(path))
    with pytest.raises(ValueError) as e:
        load_detector(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("model_nms.onnx does not match its sidecar model_nms.json (sha256 ")
    assert f"{sha256_file(path)[:12]}.. expected {read_sidecar(path).onnx_sha256[:12]}.." in msg
    assert "re-export, or pass accept_modified=True / --accept-modified" in msg
    with pytest.warns(UserWarning, match="does not match its sidecar .* used anyway"):
        det = load_detector(path, accept_modified=True)
    with det:
        assert len(det([_image()])) == 1


def test_the_cli_flag_accepts_a_modified_file(tmp_path, capsys):
    from runtime.predict import main

    folder = _copy_export(tmp_path / "m", ("model_nms",))
    meta = read_sidecar(folder / "model_nms.onnx")
    write_sidecar(folder / "model_nms.onnx", dataclasses.replace(meta, onnx_sha256="0" * 64))
    from PIL import Image
    Image.fromarray(_image()).save(tmp_path / "a.png")
    argv = ["--model", str(folder / "model_nms.onnx"), "--source", str(tmp_path / "a.png"), "--no-progress",
            "--no-save"]
    assert main(argv + ["--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match its sidecar model_nms.json" in err[0]
    with pytest.warns(UserWarning, match="used anyway"):
        assert main(argv + ["--out", str(tmp_path / "o2"), "--accept-modified"]) == 0


# ------------------------------------------------------------------------------- sidecar vs graph shapes
def test_class_count_input_size_and_k_are_checked_against_the_graph(tmp_path):
    folder = _copy_export(tmp_path, ("model_raw", "model_nms"))
    raw, nms = folder / "model_raw.onnx", folder / "model_nms.onnx"
    meta = read_sidecar(raw)
    write_sidecar(raw, dataclasses.replace(meta, class_names=[*meta.class_names, "extra"],
                                           category_ids=[*meta.category_ids, 99]))
    with pytest.raises(ValueError, match=r"^model_raw.onnx: the graph's output 'scores' has 4 columns \(3 classes "
                                         r"\+ background\) but its sidecar model_raw.json lists 4 classes"):
        load_detector(raw)
    write_sidecar(raw, dataclasses.replace(meta, input_size=(32, 48)))
    with pytest.raises(ValueError, match=r"^model_raw.onnx: graph input is 64x64 but the sidecar says input_size 32x48"):
        load_detector(raw)
    nmeta = read_sidecar(nms)
    write_sidecar(nms, dataclasses.replace(nmeta, nms=dataclasses.replace(nmeta.nms, max_detections=7)))
    with pytest.raises(ValueError, match=r"'detection_boxes' has 100 rows per image but its sidecar model_nms.json "
                                         r"says nms.max_detections 7"):
        load_detector(nms)
    write_sidecar(nms, nmeta)
    load_detector(nms).close()                        # the untouched sidecar fits


def test_dynamic_dims_are_skipped_static_ones_compared():
    meta = read_sidecar(tiny_exports() / "model_raw.onnx")      # 3 classes, 64 x 64, K 100
    check_io_shapes("x.engine", meta, (-1, 3, -1, -1), {"scores": (-1, -1, -1), "detection_boxes": (-1, -1, 4)})
    check_io_shapes("x.onnx", meta, ("batch", 3, 64, 64), {"scores": ["batch", 144, 4]})
    with pytest.raises(ValueError, match="x.engine: the graph's output 'scores' has 6 columns"):
        check_io_shapes("x.engine", meta, (-1, 3, 64, 64), {"scores": (-1, 144, 6)})
    with pytest.raises(ValueError, match="x.engine: the graph's input 'images' is 32x64"):
        check_io_shapes("x.engine", meta, (1, 3, 32, 64), {})
    with pytest.raises(ValueError, match="'detection_scores' has 50 rows"):
        check_io_shapes("x.engine", meta, None, {"detection_scores": (-1, 50)})


# ------------------------------------------------------------------------ corrupt files: errors, not skips
def _corrupt(folder: Path) -> None:
    """model_nms.onnx truncated, model_trt.onnx emptied (sidecars kept); model_x.onnx random bytes, no sidecar."""
    nms = folder / "model_nms.onnx"
    nms.write_bytes(nms.read_bytes()[:5000])
    (folder / "model_trt.onnx").write_bytes(b"")
    (folder / "model_x.onnx").write_bytes(np.random.default_rng(1).bytes(3000))


@pytest.mark.filterwarnings("ignore:.*used anyway")
def test_parity_reports_corrupt_models_as_errors_and_exits_non_zero(tmp_path, capsys):
    from runtime.parity import main

    folder = _copy_export(tmp_path / "exports")
    _corrupt(folder)
    out = tmp_path / "parity.json"
    argv = ["--reference", str(tiny_checkpoint()), "--exports", str(folder), "--data", tiny_coco(),
            "--max-images", "2", "--out", str(out)]
    for extra in ([], ["--accept-modified"]):
        assert main(argv + extra) == 1
        rows = {r["name"]: r for r in json.loads(out.read_text())["candidates"]}
        for name in ("model_nms.onnx", "model_trt.onnx", "model_x.onnx"):
            assert rows[name]["status"] == "error" and not rows[name]["ok"], rows[name]
            assert "\n" not in rows[name]["reason"]
        assert rows["onnxruntime-cpu-raw"]["ok"]                     # the intact graph still checked
    printed = capsys.readouterr().out
    assert "ERROR: model_nms.onnx does not match its sidecar" in printed
    assert "ERROR: ONNX Runtime cannot load model_nms.onnx" in printed                # with --accept-modified
    assert "ERROR: model_x.onnx is not a readable ONNX file" in printed


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT installed: not missing")
def test_a_missing_backend_is_unavailable_not_an_error(tmp_path):
    from runtime.parity import main

    folder = _copy_export(tmp_path / "exports", ("model_nms",))
    meta = read_sidecar(folder / "model_nms.onnx")
    (folder / "model.engine").write_bytes(b"\x00" * 64)
    write_sidecar(folder / "model.engine", dataclasses.replace(meta, graph="engine", precision="fp16"))
    out = tmp_path / "parity.json"
    assert main(["--reference", str(tiny_checkpoint()), "--exports", str(folder), "--data", tiny_coco(),
                 "--max-images", "1", "--out", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["candidates"]}
    assert rows["model.engine"]["status"] == "unavailable" and "TensorRT" in rows["model.engine"]["reason"]


def test_the_benchmark_reports_corrupt_models_as_errors_and_exits_non_zero(tmp_path, capsys):
    from benchmarks.run import main

    folder = _copy_export(tmp_path / "exports")
    _corrupt(folder)
    code = main(["--checkpoint", str(tiny_checkpoint()), "--exports", str(folder), "--out", str(tmp_path / "r"),
                 "--data", tiny_coco(), "--quick", "--no-peer", "--threads", "1", "--batch-sizes", "1",
                 "--max-images", "1", "--bench-images", "1", "--only", "onnxruntime-cpu-nms,trt-reference-cpu"])
    assert code == 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    rows = {b["name"]: b for b in report["backends"]}
    for name, file in (("onnxruntime-cpu-nms", "model_nms.onnx"), ("trt-reference-cpu", "model_trt.onnx")):
        assert rows[name]["status"] == "error" and f"{file} does not match its sidecar" in rows[name]["reason"]
        assert any(f.startswith(f"{name} error: ") for f in report["failures"])
    assert rows["pytorch-cpu"]["status"] == "ok" and rows["tensorrt-fp16"]["status"] == "unavailable"
    assert "onnxruntime-cpu-nms          ERROR: load: ValueError: model_nms.onnx" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ non-finite weights
def _diverged(src: Path, dst: Path, nan: int, inf: int) -> tuple[Path, str]:
    import torch

    from distill.checkpoint import Checkpoint
    ck = Checkpoint.load(src)
    name = next(k for k, v in ck.model.items() if k.startswith("cls_head") and k.endswith("weight") and v.numel() > 8)
    flat = ck.model[name].view(-1)
    flat[:nan] = float("nan")
    flat[nan:nan + inf] = float("inf")
    ck.ema = None
    ck.save(dst)
    assert not torch.isfinite(Checkpoint.load(dst).model[name]).all()
    return dst, name


def test_non_finite_weights_are_refused_at_export_and_at_load_naming_the_tensor(tmp_path, capsys):
    from distill.checkpoint import model_from_checkpoint
    from export.onnx import main as export_main

    path, name = _diverged(tiny_checkpoint(), tmp_path / "run" / "best.pt", nan=3, inf=0)
    want = f"{path}: tensor {name!r} has 3 NaN values: the run diverged; use an earlier checkpoint"
    out = tmp_path / "exports"
    assert export_main(["--checkpoint", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(want)
    assert not out.exists() or not any(out.iterdir())                  # nothing written
    with pytest.raises(ValueError) as e:
        load_detector(path)                                            # runtime's PyTorch backend
    assert str(e.value) == want
    path2, _ = _diverged(tiny_checkpoint(), tmp_path / "run2" / "best.pt", nan=0, inf=2)
    with pytest.raises(ValueError, match=rf"tensor {name!r} has 2 Inf values: the run diverged"):
        model_from_checkpoint(path2)                                   # distill's loader, used by export
