"""Bad input: every error names the file (and the annotation); 'skip' warns and counts."""

import json

import numpy as np
import pytest
from PIL import Image

from distill.data import build_dataset

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _coco(tmp_path, annotations, images=None, write_images=True):
    img_dir = tmp_path / "img"
    img_dir.mkdir(exist_ok=True)
    images = images or [{"id": 1, "file_name": "a.png", "width": 20, "height": 10},
                        {"id": 2, "file_name": "b.png", "width": 20, "height": 10}]
    if write_images:
        for im in images:
            Image.fromarray(np.zeros((im["height"], im["width"], 3), np.uint8)).save(
                img_dir / im["file_name"])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [{"id": 1, "name": "x"}, {"id": 5, "name": "y"}]}))
    return f"coco:{ann}:{img_dir}", ann


def _build(spec, **kw):
    kw.setdefault("train", False)
    return build_dataset(spec, "train", img_size=16, mean=MEAN, std=STD, **kw)


def _a(aid, bbox, cat=1, image_id=1):
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0}


@pytest.mark.parametrize("ann, match, reason", [
    (_a(7, [25, 2, 4, 4]), r"annotation id 7 .*completely outside the 20x10 image", "box_outside_image"),
    (_a(8, [3, 2, 0, 4]), r"annotation id 8 .*zero area", "degenerate_box"),
    (_a(9, [3, 2, 4, 4], cat=3), r"annotation id 9 .*category_id 3 is not one of .*\[1, 5\]",
     "unknown_category"),
    (_a(10, [3, 2, 4]), r"annotation id 10 .*expected .*bbox", "malformed_annotation"),
    (_a(11, [3, 2, 4, 4], image_id=99), r"annotation id 11 .*image_id 99", "unknown_image"),
])
def test_bad_coco_annotations(tmp_path, ann, match, reason):
    spec, ann_file = _coco(tmp_path, [_a(1, [1, 1, 5, 5]), ann])
    with pytest.raises(ValueError, match=match) as e:
        _build(spec)
    assert str(ann_file) in str(e.value)
    with pytest.warns(UserWarning, match=match):
        ds = _build(spec, on_bad_sample="skip")
    assert ds.bad_samples == {reason: 1}
    assert sum(len(r.boxes) for r in ds.records) == 1  # the good one survives


def test_missing_image_file(tmp_path):
    spec, _ = _coco(tmp_path, [_a(1, [1, 1, 5, 5], image_id=2)])
    (tmp_path / "img" / "a.png").unlink()
    with pytest.raises(ValueError, match=r"image id 1: image file .*a\.png not found"):
        _build(spec)
    with pytest.warns(UserWarning, match="a.png"):
        ds = _build(spec, on_bad_sample="skip")
    assert ds.image_ids == [2] and ds.bad_samples == {"missing_image": 1}


def test_unreadable_image_at_getitem(tmp_path):
    spec, _ = _coco(tmp_path, [_a(1, [1, 1, 5, 5], image_id=2)])
    (tmp_path / "img" / "a.png").write_bytes(b"not a png at all")
    ds = _build(spec)  # construction only checks that the file exists
    with pytest.raises(ValueError, match=r"a\.png"):
        ds[0]
    for train in (False, True):
        ds = _build(spec, on_bad_sample="skip", train=train, augment=False)
        with pytest.warns(UserWarning, match=r"a\.png"):
            _, tgt = ds[0]
        assert tgt["image_id"] == 2  # the next readable item
        assert ds.bad_samples == {"unreadable_image": 1}
        ds[0]  # counted once, no second warning needed
        assert ds.bad_samples == {"unreadable_image": 1}


def test_all_images_unreadable(tmp_path):
    spec, _ = _coco(tmp_path, [])
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(b"garbage")
    ds = _build(spec, on_bad_sample="skip")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="none of the 2 images"):
        ds[0]


def test_size_mismatch_is_reported(tmp_path):
    spec, _ = _coco(tmp_path, [], images=[{"id": 1, "file_name": "a.png", "width": 20, "height": 10}])
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png is 20x12 .* say 20x10"):
        _build(spec)[0]


def test_malformed_and_missing_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    (tmp_path / "img").mkdir()
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        _build(f"coco:{bad}:{tmp_path / 'img'}", on_bad_sample="skip")
    with pytest.raises(ValueError, match=r"nope\.json"):
        _build(f"coco:{tmp_path / 'nope.json'}:{tmp_path / 'img'}")
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match=r"bad\.json: expected a list under 'categories'"):
        _build(f"coco:{bad}:{tmp_path / 'img'}")
    spec, ann_file = _coco(tmp_path, [])
    with pytest.raises(ValueError, match=r"image folder not found: .*missing_dir"):
        _build(f"coco:{ann_file}:{tmp_path / 'missing_dir'}")


def _voc(root, xml_text, w=20, h=10):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for sid in ("a", "b"):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "JPEGImages" / f"{sid}.jpg")
    good = ("<annotation><size><width>20</width><height>10</height></size><object><name>dog</name>"
            "<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>8</xmax><ymax>8</ymax></bndbox></object>"
            "</annotation>")
    (root / "Annotations" / "a.xml").write_text(xml_text)
    (root / "Annotations" / "b.xml").write_text(good)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    return f"voc:{root}:train"


def test_malformed_xml(tmp_path):
    spec = _voc(tmp_path, "<annotation><size>")
    with pytest.raises(ValueError, match=r"a\.xml is not well-formed XML"):
        _build(spec)
    with pytest.warns(UserWarning, match=r"a\.xml"):
        ds = _build(spec, on_bad_sample="skip")
    assert ds.image_ids == [2] and ds.bad_samples == {"malformed_xml": 1}


@pytest.mark.parametrize("bndbox, match, reason", [
    ("<xmin>30</xmin><ymin>2</ymin><xmax>40</xmax><ymax>8</ymax>", "completely outside",
     "box_outside_image"),
    ("<xmin>5</xmin><ymin>2</ymin><xmax>4</xmax><ymax>8</ymax>", "zero area", "degenerate_box"),
    ("<xmin>5</xmin><ymin>2</ymin><xmax>x</xmax>", "numeric", "malformed_annotation"),
])
def test_bad_voc_objects(tmp_path, bndbox, match, reason):
    xml = ("<annotation><size><width>20</width><height>10</height></size>"
           f"<object><name>dog</name><bndbox>{bndbox}</bndbox></object></annotation>")
    spec = _voc(tmp_path, xml)
    with pytest.raises(ValueError, match=rf"a\.xml: object #0.*{match}"):
        _build(spec)
    with pytest.warns(UserWarning, match=match):
        ds = _build(spec, on_bad_sample="skip")
    assert ds.bad_samples == {reason: 1} and ds.image_ids == [1, 2]


def test_voc_missing_files(tmp_path):
    spec = _voc(tmp_path, "<annotation/>")
    (tmp_path / "Annotations" / "a.xml").unlink()
    with pytest.raises(ValueError, match=r"a\.xml not found"):
        _build(spec)
    (tmp_path / "JPEGImages" / "b.jpg").unlink()
    with pytest.warns(UserWarning):
        ds = _build(spec, on_bad_sample="skip")
    assert len(ds) == 0
    assert ds.bad_samples == {"missing_annotation_file": 1, "missing_image": 1}
    with pytest.raises(ValueError, match=r"ImageSets/Main/nosuch\.txt"):
        _build(f"voc:{tmp_path}:nosuch")


def test_voc_size_read_from_image_when_missing(tmp_path):
    xml = ("<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
           "<xmax>4</xmax><ymax>4</ymax></bndbox></object></annotation>")
    ds = _build(_voc(tmp_path, xml, w=12, h=9))
    assert (ds.records[0].width, ds.records[0].height) == (12, 9)
