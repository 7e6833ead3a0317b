"""What a new user hit: class order unchecked, --out DIR crashing, unreadable artefacts, a missing sidecar."""
from __future__ import annotations

import json
import os
import shutil
import stat
import types

import pytest
from PIL import Image

from runtime import load_detector
from runtime.evaluate import check_classes, main as evaluate_main
from runtime.metadata import read_model_meta, read_onnx_mirror, read_sidecar, write_sidecar
from runtime.onnx_props import read_metadata_props
from runtime.parity import export_files, main as parity_main
from tests.helpers import controlled_raw_graph, image_with_bright_cell, tiny_checkpoint, tiny_coco, tiny_exports


def _cells_coco(tmp_path, names=("bright", "never")):
    img_dir = tmp_path / "img"
    img_dir.mkdir(exist_ok=True)
    Image.fromarray(image_with_bright_cell(64, 96, 1, 2)).save(img_dir / "0.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "0.png", "width": 96, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [48, 16, 24, 16], "area": 384,
                         "iscrowd": 0}],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}))
    return f"coco:{ann}:{img_dir}"


# -- classes: names and order, not only ids ---------------------------------------------------
def test_same_ids_but_classes_in_another_order_is_refused(tmp_path, capsys):
    spec = _cells_coco(tmp_path, names=("never", "bright"))
    assert evaluate_main(["--model", str(controlled_raw_graph()), "--data", spec, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "another order" in err and "'never'" in err and err.count("\n") == 1


def test_same_ids_other_names_is_refused_and_the_right_classes_pass():
    meta = read_sidecar(controlled_raw_graph())
    ok = types.SimpleNamespace(name="d", category_ids=[1, 2], class_names=["bright", "never"])
    check_classes(ok, meta)
    with pytest.raises(ValueError, match="names its classes differently.*id 2: dataset 'cat', model 'never'"):
        check_classes(types.SimpleNamespace(name="d", category_ids=[1, 2], class_names=["bright", "cat"]), meta)
    with pytest.raises(ValueError, match="category ids"):
        check_classes(types.SimpleNamespace(name="d", category_ids=[2, 1], class_names=["never", "bright"]), meta)


# -- --out is a folder --------------------------------------------------------------------------
def test_evaluate_out_is_a_folder(tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    assert evaluate_main(["--model", str(controlled_raw_graph()), "--data", _cells_coco(tmp_path), "--out", str(out),
                          "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["images"] == 1
    assert evaluate_main(["--model", str(controlled_raw_graph()), "--data", _cells_coco(tmp_path), "--out",
                          str(tmp_path / "new"), "--no-progress"]) == 0
    assert (tmp_path / "new" / "metrics.json").is_file()


def test_parity_out_is_a_folder_and_skipped_files_are_named(tmp_path, capsys):
    ex = tmp_path / "exports"
    ex.mkdir()
    shutil.copy(tiny_exports() / "model_nms.onnx", ex)  # no sidecar: its metadata_props copy is used
    (ex / "model_fp16.engine").write_bytes(b"plan")  # no sidecar: cannot be run, named as skipped
    (ex / "timing.cache").write_bytes(b"")
    files, skipped = export_files(ex)
    assert [f.name for f in files] == ["model_nms.onnx"]
    assert [s["name"] for s in skipped] == ["model_fp16.engine"]
    assert "no sidecar model_fp16.json" in skipped[0]["reason"]
    out = tmp_path / "reports"
    with pytest.warns(UserWarning, match="metadata_props"):
        code = parity_main(["--reference", str(tiny_checkpoint()), "--data", tiny_coco(), "--exports", str(ex),
                            "--out", str(out), "--max-images", "3"])
    report = json.loads((out / "parity.json").read_text())
    assert code == (0 if report["ok"] else 1)
    rows = {r["name"]: r for r in report["candidates"]}
    assert rows["onnxruntime-cpu-nms"]["ok"] and rows["model_fp16.engine"]["status"] == "skipped"
    assert "model_fp16.engine" in capsys.readouterr().out


# -- the sidecar mirrored in the ONNX file ------------------------------------------------------
def test_onnx_without_its_sidecar_loads_from_the_mirror(tmp_path):
    src = tiny_exports() / "model_nms.onnx"
    lonely = tmp_path / "model_nms.onnx"
    shutil.copy(src, lonely)
    props = read_metadata_props(lonely)
    assert "fdet_meta" in props
    mirror = read_onnx_mirror(lonely)
    side = read_sidecar(src)
    assert mirror.class_names == side.class_names and mirror.category_ids == side.category_ids
    assert mirror.nms == side.nms and mirror.onnx_sha256 is None
    with pytest.warns(UserWarning, match="no sidecar model_nms.json.*metadata_props"):
        det = load_detector(lonely)
    assert det.meta.class_names == side.class_names
    write_sidecar(lonely, side)  # with the sidecar back, it is the sidecar that is read
    assert read_model_meta(lonely).onnx_sha256 == side.onnx_sha256


def test_onnx_without_sidecar_or_mirror_says_both_are_missing(tmp_path):
    bare = tmp_path / "model_raw.onnx"
    shutil.copy(controlled_raw_graph(), bare)  # exported by torch.onnx: no metadata_props
    with pytest.raises(ValueError, match=r"sidecar not found: .*model_raw\.json.*carries no copy"):
        load_detector(bare)
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="cannot read the metadata of ONNX file"):
        read_onnx_mirror(tmp_path / "junk.onnx")


# -- file modes ---------------------------------------------------------------------------------
def test_artefacts_are_written_with_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        side = write_sidecar(tmp_path / "m.onnx", read_sidecar(controlled_raw_graph()))
        code = evaluate_main(["--model", str(controlled_raw_graph()), "--data", _cells_coco(tmp_path), "--out",
                              str(tmp_path / "r"), "--no-progress"])
    finally:
        os.umask(old)
    assert code == 0
    for p in (side, tmp_path / "r" / "metrics.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
