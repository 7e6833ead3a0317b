"""runtime.evaluation: the one subset helper and the one inference loop."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.evaluation import eval_subset, inference_on_dataset, iter_batches
from runtime.metrics import CocoEvaluator

BOXES = {1: [[2, 2, 12, 12]], 2: [[4, 4, 20, 14]], 3: [], 4: [[0, 0, 8, 8], [10, 10, 16, 16]]}


class TinySet:
    """Four images with exact, known boxes (class 1 = category id 7); image ids 1..4."""

    category_ids = [7]
    class_names = ["thing"]
    image_ids = [1, 2, 3, 4]

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return np.full((24, 32, 3), i, np.uint8), {"image_id": i + 1, "orig_size": (24, 32)}

    def coco_gt(self):
        anns = [{"id": k + 1, "image_id": iid, "category_id": 7, "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0}
                for k, (iid, (x1, y1, x2, y2)) in enumerate((i, b) for i, bs in BOXES.items() for b in bs)]
        return {"images": [{"id": i, "width": 32, "height": 24} for i in BOXES], "annotations": anns,
                "categories": [{"id": 7, "name": "thing"}]}


def perfect(images):
    """Finds the ground truth of each image (the image's pixel value is its index)."""
    out = []
    for im in images:
        b = np.asarray(BOXES[int(im[0, 0, 0]) + 1], np.float32).reshape(-1, 4)
        out.append({"boxes": b, "scores": np.full(len(b), 0.9, np.float32), "labels": np.ones(len(b), np.int64)})
    return out


def test_eval_subset_restricts_images_and_annotations():
    ds = TinySet()
    assert eval_subset(ds, None) == (list(range(4)), ds.coco_gt())
    assert eval_subset(ds, 10)[0] == [0, 1, 2, 3]
    idx, gt = eval_subset(ds, 2)
    assert idx == [0, 1]
    assert [im["id"] for im in gt["images"]] == [1, 2] and {a["image_id"] for a in gt["annotations"]} == {1, 2}
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        eval_subset(ds, 0)


@pytest.mark.parametrize("batch_size, prefetch", [(1, False), (3, False), (3, True), (8, True)])
def test_perfect_predictor_scores_100(batch_size, prefetch):
    ds = TinySet()
    ev = CocoEvaluator(ds.coco_gt(), ds.category_ids)
    m = inference_on_dataset(perfect, ds, ev, batch_size=batch_size, progress=False, prefetch=prefetch)
    assert m["mAP"] == pytest.approx(100.0) and m["per_class"]["thing"] == pytest.approx(100.0)
    assert m["images"] == 4 and m["seconds"] >= 0 and m["num_detections"] == 4


def test_subset_and_evaluator_reset():
    ds = TinySet()
    indices, gt = eval_subset(ds, 2)
    ev = CocoEvaluator(gt, ds.category_ids)
    ev.process(1, [[0, 0, 1, 1]], [0.1], [1])  # stale: inference_on_dataset starts from reset()
    m = inference_on_dataset(perfect, ds, ev, indices=indices, progress=False, per_class=False)
    assert m["mAP"] == pytest.approx(100.0) and m["images"] == 2 and "per_class" not in m


def test_bad_predictor_and_batch_size():
    ds = TinySet()
    ev = CocoEvaluator(ds.coco_gt(), ds.category_ids)
    with pytest.raises(RuntimeError, match="returned 1 detection sets for 2 images"):
        inference_on_dataset(lambda ims: perfect(ims[:1]), ds, ev, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        inference_on_dataset(perfect, ds, ev, batch_size=0)


def test_iter_batches_keeps_order_with_prefetch():
    ds = TinySet()
    for prefetch in (False, True):
        batches = list(iter_batches(ds, [3, 0, 2, 1], 3, prefetch))
        assert [[t["image_id"] for t in ts] for _, ts in batches] == [[4, 1, 3], [2]]
