"""python -m runtime.evaluate: COCO metrics of any model file on a dataset spec."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime import load_detector
from runtime.datasets import coco_folder as _CocoFolder
from runtime.evaluate import default_data, evaluate_detector, main, open_dataset
from runtime.metadata import read_sidecar
from tests.helpers import GRID, controlled_raw_graph, image_with_bright_cell, tiny_checkpoint, tiny_coco, tiny_exports


def _cells_dataset(tmp_path: Path) -> str:
    """Images of several sizes with one bright grid cell each, annotated exactly there."""
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    images, anns = [], []
    for i, (h, w, r, c) in enumerate([(120, 200, 1, 2), (64, 64, 0, 0), (300, 90, 3, 1), (50, 150, 2, 3)]):
        Image.fromarray(image_with_bright_cell(h, w, r, c)).save(img_dir / f"{i}.png")
        images.append({"id": i + 10, "file_name": f"{i}.png", "width": w, "height": h})
        x0, y0 = c * w / GRID, r * h / GRID
        anns.append({"id": i + 1, "image_id": i + 10, "category_id": 1, "bbox": [x0, y0, w / GRID, h / GRID],
                     "area": w * h / GRID ** 2, "iscrowd": 0})
    ann = tmp_path / "ann.json"
    cats = [{"id": 1, "name": "bright"}, {"id": 2, "name": "never"}]
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return f"coco:{ann}:{img_dir}"


def test_controlled_model_scores_100_map(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main(["--model", str(controlled_raw_graph()), "--data", _cells_dataset(tmp_path), "--out", str(out),
                 "--batch-size", "3", "--no-progress"])
    assert code == 0
    m = json.loads(out.read_text())
    assert m["mAP"] == pytest.approx(100.0) and m["per_class"]["bright"] == pytest.approx(100.0)
    assert m["images"] == 4 and m["backend"] == "onnxruntime-cpu-raw"
    printed = capsys.readouterr().out
    assert "mAP" in printed and "bright" in printed


def test_numpy_coco_reader_matches_distill_data(tmp_path):
    spec = _cells_dataset(tmp_path)
    det = load_detector(controlled_raw_graph())
    _, ann, img_dir = spec.split(":")
    a = evaluate_detector(det, _CocoFolder(ann, img_dir), progress=False)
    b = evaluate_detector(det, open_dataset(default_data_spec(spec), det.meta), progress=False)
    assert a["mAP"] == b["mAP"] == pytest.approx(100.0)


def default_data_spec(spec):
    from runtime.evaluate import DataSpec

    return DataSpec(spec)


@pytest.mark.parametrize("name", ["best.pt", "model_nms.onnx", "model_trt.onnx"])
def test_every_model_kind_evaluates_on_the_same_data(name, tmp_path):
    path = tiny_checkpoint() if name == "best.pt" else tiny_exports() / name
    args = ["--model", str(path), "--data", tiny_coco(), "--out", str(tmp_path / "m.json"), "--no-progress",
            "--max-images", "4"]
    if name == "model_trt.onnx":
        args += ["--provider", "reference"]
    assert main(args) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["images"] == 4 and set(m["per_class"]) == {"class1", "class2", "class3"}
    assert np.isfinite(m["mAP"])


def test_default_data_is_the_models_own_validation_set():
    meta = read_sidecar(tiny_exports() / "model_nms.json")
    d = default_data(meta)  # the sidecar names its checkpoint; its config says data=shapes
    assert d.spec == "shapes:val" and d.shapes_kwargs["num_val"] == 300
    meta.extra = {"data": "voc:/x:trainval", "val_data": "voc:/x:test", "data_root": "/d"}
    assert (default_data(meta).spec, default_data(meta).data_root) == ("voc:/x:test", "/d")
    meta.extra = {}
    with pytest.raises(ValueError, match="pass --data"):
        default_data(meta)


def test_wrong_dataset_or_model_exits_2(tmp_path, capsys):
    assert main(["--model", str(controlled_raw_graph()), "--data", tiny_coco(), "--no-progress"]) == 2
    assert "category ids" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "none.onnx"), "--data", tiny_coco()]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert main(["--model", str(tiny_exports() / "model_trt.onnx"), "--data", tiny_coco()]) == 2
    assert "provider='reference'" in capsys.readouterr().err
