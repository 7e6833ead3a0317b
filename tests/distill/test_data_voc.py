"""Pascal-VOC loader: class list, 1-based coordinates, difficult objects."""

import numpy as np
import pytest
from PIL import Image

from distill.data import build_dataset, default_val_spec
from distill.data.voc import VOC_CLASSES

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _obj(name, box, difficult=0):
    x1, y1, x2, y2 = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def write_voc(root, images, splits):
    """images: {id: (W, H, [object xml])}; splits: {name: [ids]}."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for sid, (w, h, objs) in images.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "JPEGImages" / f"{sid}.jpg")
        (root / "Annotations" / f"{sid}.xml").write_text(
            f"<annotation><filename>{sid}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{''.join(objs)}</annotation>")
    for name, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))


def _build(root, split, **kw):
    kw.setdefault("train", False)
    return build_dataset(f"voc:{root}:{split}", "train", img_size=32, mean=MEAN, std=STD, **kw)


def test_voc_classes_difficult_and_coordinates(tmp_path):
    write_voc(tmp_path, {
        "000001": (40, 30, [_obj("dog", (1, 1, 10, 10)), _obj("person", (5, 6, 20, 25), 1)]),
        "000002": (24, 24, []),
    }, {"trainval": ["000001", "000002"], "test": ["000002"]})
    ds = _build(tmp_path, "trainval")
    # only VOC names -> the full 20-class list, ids 1..20
    assert ds.class_names == list(VOC_CLASSES) and ds.category_ids == list(range(1, 21))
    assert ds.image_ids == [1, 2]
    rec = ds.records[0]
    np.testing.assert_allclose(rec.boxes, [[0, 0, 10, 10], [4, 5, 20, 25]])  # 1-based -> 0-based
    assert rec.labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1]
    assert rec.ignore.tolist() == [False, True]
    gt = ds.coco_gt()
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    assert gt["annotations"][0]["bbox"] == [0, 0, 10, 10]
    assert gt["images"][0] == {"id": 1, "width": 40, "height": 30,
                               "file_name": "JPEGImages/000001.jpg"}

    tr = _build(tmp_path, "trainval", train=True, augment=False)
    _, tgt = tr[0]
    assert tgt["ignore"].tolist() == [False, True]
    img, tgt = _build(tmp_path, "test")[0]
    assert img.shape == (24, 24, 3) and tgt == {"image_id": 1, "orig_size": (24, 24)}
    assert default_val_spec(f"voc:{tmp_path}:trainval") == f"voc:{tmp_path}:test"


def test_non_voc_names_sorted_over_all_annotation_files(tmp_path):
    write_voc(tmp_path, {
        "a": (30, 30, [_obj("widget", (1, 1, 9, 9))]),
        "b": (30, 30, [_obj("gizmo", (2, 2, 9, 9))]),
        "c": (30, 30, [_obj("alpha", (2, 2, 9, 9))]),  # only in val: still in the train class list
    }, {"train": ["a", "b"], "val": ["c"]})
    tr, va = _build(tmp_path, "train"), _build(tmp_path, "val")
    assert tr.class_names == va.class_names == ["alpha", "gizmo", "widget"]
    assert tr.category_ids == [1, 2, 3]
    assert [r.labels.tolist() for r in tr.records] == [[3], [2]]
    assert default_val_spec(f"voc:{tmp_path}:train") == f"voc:{tmp_path}:val"
    with pytest.raises(ValueError, match="--val-data"):
        default_val_spec(f"voc:{tmp_path}:val")


def test_labels_txt_fixes_the_class_order(tmp_path):
    write_voc(tmp_path, {"a": (30, 30, [_obj("b", (1, 1, 9, 9)), _obj("zzz", (1, 1, 9, 9))])},
              {"train": ["a"]})
    (tmp_path / "labels.txt").write_text("b\na\n")
    with pytest.raises(ValueError, match=r"a\.xml.*object #1.*'zzz'"):
        _build(tmp_path, "train")
    with pytest.warns(UserWarning, match="zzz"):
        ds = _build(tmp_path, "train", on_bad_sample="skip")
    assert ds.class_names == ["b", "a"] and ds.records[0].labels.tolist() == [1]
    assert ds.bad_samples == {"unknown_category": 1}
