"""runtime.results.Results and runtime.draw: detections with names, pictures, COCO and JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from runtime import load_detector
from runtime.draw import class_color, draw_detections
from runtime.results import Results
from tests.helpers import GRID, controlled_raw_graph, image_with_bright_cell

NAMES, IDS = ("cat", "dog", "bird"), (3, 17, 90)  # dataset ids with gaps, as COCO has


def make_results(**kw):
    boxes = np.array([[10, 20, 50, 60], [0, 0, 30, 10.5], [5, 5, 6, 6]], np.float32)
    return Results(boxes, [0.9, 0.6, 0.3], [2, 3, 1], names=NAMES, category_ids=IDS, orig_shape=(80, 100), **kw)


def test_results_fields_names_and_dict_access():
    r = make_results(path="a.jpg")
    assert len(r) == 3 and r.det_names == ["dog", "bird", "cat"]
    assert r.det_category_ids.tolist() == [17, 90, 3]
    assert r["boxes"] is r.boxes and r["labels"].dtype == np.int64 and set(dict(r)) == {"boxes", "scores", "labels"}
    assert "scores" in r and "names" not in r
    with pytest.raises(KeyError, match="Results has keys"):
        r["box"]
    with pytest.raises(TypeError, match="one Results for one image"):
        r[0]
    assert len(r.filter(0.5)) == 2 and r.filter(0.5).names == NAMES
    assert "3 detections" in repr(r) and "1 dog" in repr(r) and "a.jpg" in repr(r)


def test_results_reject_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"labels must be in 1\.\.3"):
        Results([[0, 0, 1, 1]], [0.5], [0], names=NAMES, category_ids=IDS, orig_shape=(4, 4))


def test_results_round_trip_through_coco_json():
    r = make_results()
    records = json.loads(json.dumps(r.to_coco(image_id=7)))
    assert {x["category_id"] for x in records} == {17, 90, 3} and all(x["image_id"] == 7 for x in records)
    np.testing.assert_allclose(records[0]["bbox"], [10, 20, 40, 40])  # COCO xywh
    other = [{**records[0], "image_id": 8}]
    back = Results.from_coco(records + other, names=NAMES, category_ids=IDS, orig_shape=(80, 100), image_id=7)
    np.testing.assert_allclose(back.boxes, r.boxes, atol=1e-5)
    np.testing.assert_allclose(back.scores, r.scores)
    assert back.labels.tolist() == r.labels.tolist() and back.det_names == r.det_names


def test_results_to_json():
    d = json.loads(make_results(path="x/a.png").to_json())
    assert d["image"] == "x/a.png" and d["orig_shape"] == [80, 100]
    assert d["detections"][0] == {"box": [10.0, 20.0, 50.0, 60.0], "score": 0.9, "label": 2, "name": "dog",
                                  "category_id": 17}


def test_draw_puts_the_class_colour_on_the_box_outline_only():
    img = np.zeros((100, 120, 3), np.uint8)
    out = draw_detections(img, [[20, 40, 80, 90]], [2], [0.8], NAMES, line_width=2)
    assert out.shape == img.shape and out.dtype == np.uint8 and not out is img and img.max() == 0
    assert tuple(out[65, 20]) == class_color(2) and tuple(out[65, 79]) == class_color(2)  # left, right edges
    assert out[65, 50].max() == 0 and out[95, 5].max() == 0  # inside and far outside untouched
    assert out[30:40, 20:60].max() > 0, "the label tag sits just above the box"
    assert class_color(1) != class_color(2) != class_color(3) and class_color(4) == class_color(4)


def test_detector_returns_results_with_the_sidecar_names(tmp_path):
    det = load_detector(controlled_raw_graph())
    img = image_with_bright_cell(90, 160, 2, 1)
    r = det(img, conf=0.3)
    assert isinstance(r, Results) and r.names == ("bright", "never") and r.det_names == ["bright"]
    np.testing.assert_allclose(r.boxes[0], [160 / GRID, 2 * 90 / GRID, 2 * 160 / GRID, 3 * 90 / GRID], atol=0.2)
    batch = det([img, Image.fromarray(img)])
    assert [type(x) for x in batch] == [Results, Results]
    pic = r.plot()
    assert pic.shape == (90, 160, 3) and tuple(pic[60, 40]) == class_color(1)
    saved = r.save(tmp_path / "p.png")
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), pic)
    assert len(det(np.zeros((40, 40, 3), np.uint8), conf=0.9)) == 0
