"""runtime.evaluate's pictures: per-class precision-recall curves and the detection confusion matrix."""
from __future__ import annotations

import json

from runtime.evaluate import main as evaluate_main
from runtime.metrics import confusion_matrix

from .test_rough_edges import _cells_coco, controlled_raw_graph


def test_confusion_matrix_by_hand():
    gt = {"annotations": [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "iscrowd": 0},
        {"image_id": 1, "category_id": 2, "bbox": [80, 80, 10, 10], "iscrowd": 0},   # never detected: missed
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1}]}     # crowd: ignored
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},     # right
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 9], "score": 0.8},    # right box, wrong class
        {"image_id": 1, "category_id": 2, "bbox": [200, 200, 5, 5], "score": 0.7},   # nothing there
        {"image_id": 1, "category_id": 2, "bbox": [80, 80, 10, 10], "score": 0.1},   # below conf
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}]     # on a crowd box: background
    c = confusion_matrix(results, gt, [1, 2], ["a", "b"], [1, 2], conf=0.25)
    assert c["rows"] == ["a", "b", "background"] and c["columns"] == ["a", "b", "missed"]
    assert c["matrix"] == [[1, 0, 0],
                           [1, 0, 1],
                           [1, 1, 0]]


def test_evaluate_writes_pr_curves_and_confusion_beside_metrics(tmp_path):
    out = tmp_path / "reports"
    assert evaluate_main(["--model", str(controlled_raw_graph()), "--data", _cells_coco(tmp_path), "--out", str(out),
                          "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(next(iter(metrics["pr_iou50"].values()))) == 101
    assert sum(map(sum, metrics["confusion"]["matrix"])) > 0
    for name in ("pr_curves.png", "confusion.png"):
        assert (out / name).stat().st_size > 1000
