import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest

from runtime.metrics import CocoEvaluator, to_coco_results, write_coco_results

CATEGORY_IDS = [1, 3, 7]  # ids with gaps, as in COCO
CLASS_NAMES = ["cat", "dog", "bird"]


def make_gt():
    def ann(i, img, cat, x, y, w, h, crowd=0):
        return {"id": i, "image_id": img, "category_id": cat, "bbox": [x, y, w, h],
                "area": float(w * h), "iscrowd": crowd}

    return {
        "images": [{"id": 10, "width": 100, "height": 80}, {"id": 11, "width": 64, "height": 64},
                   {"id": 12, "width": 50, "height": 50}],
        "annotations": [
            ann(1, 10, 1, 10, 10, 30, 20),
            ann(2, 10, 3, 50, 40, 40, 35),
            ann(3, 11, 7, 5, 5, 20, 20),
            ann(4, 11, 1, 30, 30, 30, 30),
            ann(5, 12, 3, 0, 0, 40, 40, crowd=1),
            ann(6, 12, 7, 10, 10, 12, 12),
        ],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)],
    }


# Per image: boxes xyxy abs px, scores, labels in 1..C.
PREDICTIONS = {
    10: ([[11, 9, 41, 31], [50, 40, 90, 75], [0, 0, 20, 20]], [0.9, 0.8, 0.3], [1, 2, 3]),
    11: ([[5, 6, 25, 24], [28, 33, 60, 58], [30, 30, 60, 60]], [0.7, 0.6, 0.2], [3, 1, 2]),
    12: ([[1, 1, 39, 39], [10, 11, 22, 21]], [0.95, 0.5], [2, 3]),
}


def run_evaluator(gt=None):
    ev = CocoEvaluator(gt or make_gt(), CATEGORY_IDS)
    for img, (b, s, l) in PREDICTIONS.items():
        ev.process(img, np.array(b, np.float32), np.array(s, np.float32), np.array(l))
    return ev


def pycocotools_map(gt, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def test_to_coco_results_xyxy_to_xywh_and_ids():
    res = to_coco_results(5, np.array([[10, 20, 40, 60]]), np.array([0.5]), np.array([3]), CATEGORY_IDS)
    assert res == [{"image_id": 5, "category_id": 7, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.5}]
    assert to_coco_results(5, np.zeros((0, 4)), [], [], CATEGORY_IDS) == []
    with pytest.raises(ValueError, match="1..3"):
        to_coco_results(5, [[0, 0, 1, 1]], [0.5], [0], CATEGORY_IDS)
    with pytest.raises(ValueError, match="same length"):
        to_coco_results(5, [[0, 0, 1, 1]], [0.5, 0.2], [1], CATEGORY_IDS)


def test_evaluator_matches_pycocotools_directly():
    gt = make_gt()
    results = []
    for img, (b, s, l) in PREDICTIONS.items():
        x1, y1, x2, y2 = np.array(b, float).T
        for i in range(len(s)):
            results.append({"image_id": img, "category_id": CATEGORY_IDS[l[i] - 1],
                            "bbox": [x1[i], y1[i], x2[i] - x1[i], y2[i] - y1[i]], "score": s[i]})
    stats = pycocotools_map(gt, results)

    out = run_evaluator(gt).evaluate()
    assert out["mAP"] == pytest.approx(stats[0] * 100, abs=1e-9)
    assert out["AP50"] == pytest.approx(stats[1] * 100, abs=1e-9)
    assert out["AP75"] == pytest.approx(stats[2] * 100, abs=1e-9)
    assert out["AR100"] == pytest.approx(stats[8] * 100, abs=1e-9)
    assert out["num_detections"] == 8
    assert 0 < out["mAP"] < 100
    assert set(out["per_class"]) == set(CLASS_NAMES)
    assert np.nanmean(list(out["per_class"].values())) == pytest.approx(out["mAP"], abs=1e-9)
    for k in ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert isinstance(out[k], float)


def test_crowd_gt_is_ignored():
    # The 0.95 "dog" box on image 12 matches only the crowd box: it must be neither TP nor FP.
    # Dropping that prediction must not change the result.
    full = run_evaluator().evaluate()
    ev = CocoEvaluator(make_gt(), CATEGORY_IDS)
    for img, (b, s, l) in PREDICTIONS.items():
        if img == 12:
            b, s, l = b[1:], s[1:], l[1:]
        ev.process(img, b, s, l)
    assert ev.evaluate()["mAP"] == pytest.approx(full["mAP"], abs=1e-9)
    assert full["per_class"]["dog"] == pytest.approx(100.0)
    # Without the crowd region the same prediction is a top-scoring false positive.
    gt = make_gt()
    del gt["annotations"][4]
    assert run_evaluator(gt).evaluate()["per_class"]["dog"] < 100.0


def test_perfect_predictions_give_100():
    gt = make_gt()
    ev = CocoEvaluator(gt, CATEGORY_IDS)
    for img in (10, 11, 12):
        anns = [a for a in gt["annotations"] if a["image_id"] == img and not a["iscrowd"]]
        b = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        ev.process(img, b, [1.0] * len(b), [CATEGORY_IDS.index(a["category_id"]) + 1 for a in anns])
    out = ev.evaluate()
    assert out["mAP"] == pytest.approx(100.0)
    assert math.isnan(out["APl"])  # no large objects in this gt


def test_empty_predictions_give_zero(capsys):
    ev = CocoEvaluator(make_gt(), CATEGORY_IDS)
    out = ev.evaluate()
    assert out["mAP"] == 0.0 and out["num_detections"] == 0
    assert out["per_class"] == {n: 0.0 for n in CLASS_NAMES}
    ev.process(10, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    assert ev.evaluate(per_class=False) == {k: 0.0 for k in ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR100")} | {"num_detections": 0}
    assert capsys.readouterr().out == ""


def test_quiet_by_default_and_reset(capsys):
    ev = run_evaluator()
    ev.evaluate()
    assert capsys.readouterr().out == ""
    ev.reset()
    assert ev.evaluate()["num_detections"] == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="99"):
        CocoEvaluator(make_gt(), [1, 3, 99])
    ev = CocoEvaluator(make_gt(), CATEGORY_IDS)
    with pytest.raises(ValueError, match="image_id 999"):
        ev.process(999, [[0, 0, 1, 1]], [0.5], [1])
    gt = make_gt()
    del gt["annotations"][0]["area"]
    with pytest.raises(ValueError, match="area"):
        CocoEvaluator(gt, CATEGORY_IDS)


def test_write_coco_results(tmp_path):
    ev = run_evaluator()
    p = write_coco_results(tmp_path / "res.json", ev.results)
    data = json.loads(p.read_text())
    assert len(data) == 8 and data[0]["bbox"] == [11.0, 9.0, 30.0, 22.0]


def test_per_class_detail_instances_precision_recall_ap50():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "annotations": [{"image_id": 1, "category_id": 4, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
                          {"image_id": 1, "category_id": 4, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
                          {"image_id": 1, "category_id": 9, "bbox": [30, 0, 20, 20], "area": 400, "iscrowd": 0},
                          {"image_id": 1, "category_id": 9, "bbox": [70, 0, 20, 20], "area": 400, "iscrowd": 1}],
          "categories": [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]}
    ev = CocoEvaluator(gt, [4, 9], detail=True)
    # class a: a hit (0.9), a false positive (0.8), the second hit (0.3); class b: nothing found.
    ev.process(1, [[0, 0, 20, 20], [80, 80, 95, 95], [50, 50, 70, 70]], [0.9, 0.8, 0.3], [1, 1, 1])
    d = ev.evaluate()["per_class_detail"]
    assert d["a"]["instances"] == 2 and d["b"]["instances"] == 1  # the crowd box is not an instance
    assert d["a"]["precision"] == pytest.approx(200 / 3) and d["a"]["recall"] == pytest.approx(100.0)
    assert d["a"]["conf"] == pytest.approx(0.3) and d["a"]["AP50"] > 80
    assert (d["b"]["precision"], d["b"]["recall"], d["b"]["conf"], d["b"]["AP"]) == (0.0, 0.0, None, 0.0)
    assert "per_class_detail" not in CocoEvaluator(gt, [4, 9]).evaluate()
    empty = CocoEvaluator(gt, [4, 9], detail=True)
    empty.process(1, [], [], [])
    assert empty.evaluate()["per_class_detail"]["a"] == {"instances": 2, "precision": 0.0, "recall": 0.0,
                                                         "conf": None, "AP50": 0.0, "AP": 0.0}
