"""runtime.datasets: specs and eval-mode readers without torch, the same ground truth as distill.data."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.datasets import coco_folder, open_eval_dataset, parse_spec
from tests.helpers import tiny_coco

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TINY_SHAPES = {"num_train": 2, "num_val": 3, "seed": 0, "size_range": (48, 64)}


def _distill_eval_set(spec: str, **kw):
    from distill.data import build_dataset

    return build_dataset(spec, "val", img_size=32, mean=MEAN, std=STD, train=False, **kw)


def _same_gt(a: dict, b: dict) -> None:
    assert [im["id"] for im in a["images"]] == [im["id"] for im in b["images"]]
    assert [(x["image_id"], x["category_id"], x["iscrowd"]) for x in a["annotations"]] == \
        [(x["image_id"], x["category_id"], x["iscrowd"]) for x in b["annotations"]]
    np.testing.assert_allclose([x["bbox"] for x in a["annotations"]], [x["bbox"] for x in b["annotations"]],
                               atol=1e-3)


def test_coco_folder_items_and_gt():
    _, ann, img_dir = tiny_coco().split(":")
    ds = coco_folder(ann, img_dir)
    assert len(ds) == 6 and ds.category_ids == [1, 3, 5] and ds.class_names == ["class1", "class2", "class3"]
    img, target = ds[2]
    assert img.dtype == np.uint8 and img.ndim == 3 and target == {"image_id": 3, "orig_size": img.shape[:2]}
    assert ds.image_path(2) == Path(img_dir) / "002.png" and ds.image_ids == list(range(1, 7))
    _same_gt(ds.coco_gt(), _distill_eval_set(tiny_coco()).coco_gt())


def test_coco_folder_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="annotation file not found: .*none.json"):
        coco_folder(tmp_path / "none.json", tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        coco_folder(tmp_path / "bad.json", tmp_path)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="list.json: expected a JSON object"):
        coco_folder(tmp_path / "list.json", tmp_path)


def test_voc_reads_like_distill(tmp_path):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    objs = {"a": [("dog", (1, 1, 10, 10), 0), ("person", (5, 6, 20, 25), 1)], "b": [("cat", (3, 3, 30, 20), 0)]}
    for sid, obj in objs.items():
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "JPEGImages" / f"{sid}.jpg")
        xml = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                      f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                      for n, b, d in obj)
        (tmp_path / "Annotations" / f"{sid}.xml").write_text(
            f"<annotation><size><width>40</width><height>30</height></size>{xml}</annotation>")
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("a\nb\n")
    spec = f"voc:{tmp_path}:val"
    ds = open_eval_dataset(spec)
    assert ds.name == f"voc:{tmp_path.name}:val" and len(ds) == 2 and ds.category_ids == list(range(1, 21))
    assert [a["iscrowd"] for a in ds.coco_gt()["annotations"]] == [0, 1, 0]
    assert ds.coco_gt()["annotations"][0]["bbox"] == [0.0, 0.0, 10.0, 10.0]  # 1-based inclusive -> continuous
    _same_gt(ds.coco_gt(), _distill_eval_set(spec).coco_gt())
    (tmp_path / "Annotations" / "b.xml").write_text("<annotation>")
    with pytest.raises(ValueError, match="b.xml is not well-formed XML"):
        open_eval_dataset(spec)


def test_shapes_is_read_where_the_generator_wrote_it(tmp_path):
    with pytest.raises(ValueError, match=(r"not generated yet; generate it with: python -m distill.data.shapes "
                                          rf"--out {tmp_path} --num-train 2 --num-val 3 --seed 0 --size-range 48 64")):
        open_eval_dataset("shapes", data_root=tmp_path, shapes_kwargs=TINY_SHAPES)
    from distill.data.shapes import ensure_shapes_dataset

    ensure_shapes_dataset(tmp_path, progress=False, **TINY_SHAPES)
    ds = open_eval_dataset("shapes", data_root=tmp_path, shapes_kwargs=TINY_SHAPES)
    assert len(ds) == 3 and ds.name.startswith("shapes:val (shapes-v")
    assert len(open_eval_dataset("shapes:train", data_root=tmp_path, shapes_kwargs=TINY_SHAPES)) == 2
    ref = _distill_eval_set("shapes", data_root=str(tmp_path), shapes_kwargs=TINY_SHAPES)
    assert ds.category_ids == ref.category_ids and ds.class_names == ref.class_names
    _same_gt(ds.coco_gt(), ref.coco_gt())


def test_specs_are_parsed_once():
    import distill.data

    assert distill.data.parse_spec is parse_spec
    with pytest.raises(ValueError, match="malformed dataset spec 'coco:x'"):
        open_eval_dataset("coco:x")


def test_reading_and_scoring_import_neither_torch_nor_distill():
    lines = ["import sys, runtime.evaluate, runtime.evaluation, runtime.datasets, runtime.parity",
             f"runtime.datasets.open_eval_dataset({tiny_coco()!r})[0]",
             "assert not {'torch', 'torchvision', 'distill'} & set(sys.modules), sorted(sys.modules)"]
    r = subprocess.run([sys.executable, "-c", "; ".join(lines)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_evaluate_cli_names_the_command_for_missing_shapes(tmp_path, capsys):
    from runtime.evaluate import main
    from tests.helpers import tiny_exports

    code = main(["--model", str(tiny_exports() / "model_nms.onnx"), "--data", "shapes", "--data-root",
                 str(tmp_path), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the shapes dataset") and "python -m distill.data.shapes --out" in err
