"""COCO-json loader: category ids with gaps, crowd boxes, images without annotations."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from distill.data import build_dataset, collate_eval, collate_train, default_val_spec, describe

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _write_coco(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    sizes = {10: (32, 24), 11: (40, 40), 12: (20, 16)}  # id -> (W, H)
    for iid, (w, h) in sizes.items():
        Image.fromarray(np.full((h, w, 3), iid * 10, np.uint8)).save(img_dir / f"{iid}.png")
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h}
                   for i, (w, h) in sizes.items()],
        # unsorted on purpose, with gaps: labels follow sorted ids 1, 3, 7
        "categories": [{"id": 7, "name": "g"}, {"id": 1, "name": "a"}, {"id": 3, "name": "c"}],
        "annotations": [
            {"id": 100, "image_id": 10, "category_id": 3, "bbox": [2, 3, 10, 8], "area": 70.0,
             "iscrowd": 0},
            {"id": 101, "image_id": 10, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 20.0,
             "iscrowd": 1},
            # small overshoot past the 40x40 image: clipped silently to [30, 30, 40, 40]
            {"id": 102, "image_id": 11, "category_id": 1, "bbox": [30, 30, 10.5, 11], "iscrowd": 0},
        ],
    }
    ann = tmp_path / "instances_train2017.json"
    ann.write_text(json.dumps(data))
    return ann, img_dir


def _build(tmp_path, **kw):
    ann, img_dir = _write_coco(tmp_path)
    kw.setdefault("train", False)
    return build_dataset(f"coco:{ann}:{img_dir}", "train", img_size=32, mean=MEAN, std=STD, **kw)


def test_categories_with_gaps_and_images_without_annotations(tmp_path):
    ds = _build(tmp_path)
    assert ds.category_ids == [1, 3, 7]
    assert ds.class_names == ["a", "c", "g"]
    assert ds.image_ids == [10, 11, 12]
    assert ds.bad_samples == {}
    r10, r11, r12 = ds.records
    np.testing.assert_array_equal(r10.labels, [2, 3])
    np.testing.assert_array_equal(r10.ignore, [False, True])
    np.testing.assert_allclose(r10.boxes, [[2, 3, 12, 11], [0, 0, 5, 5]])
    np.testing.assert_allclose(r11.boxes, [[30, 30, 40, 40]])
    assert len(r12.boxes) == 0 and r12.boxes.shape == (0, 4)
    assert "3 images" in describe(ds)


def test_eval_items_are_original_uint8(tmp_path):
    ds = _build(tmp_path)
    img, tgt = ds[0]
    assert img.dtype == np.uint8 and img.shape == (24, 32, 3)
    assert tgt == {"image_id": 10, "orig_size": (24, 32)}
    imgs, tgts = collate_eval([ds[0], ds[1], ds[2]])
    assert [i.shape for i in imgs] == [(24, 32, 3), (40, 40, 3), (16, 20, 3)]
    assert [t["image_id"] for t in tgts] == [10, 11, 12]


def test_train_items_without_augmentation(tmp_path):
    ds = _build(tmp_path, train=True, augment=False)
    img, tgt = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    # constant grey 100: (100/255 - 0.5) / 0.25
    torch.testing.assert_close(img, torch.full_like(img, (100 / 255 - 0.5) / 0.25), atol=1e-5, rtol=0)
    torch.testing.assert_close(tgt["boxes"], torch.tensor([[2 / 32, 3 / 24, 12 / 32, 11 / 24],
                                                           [0, 0, 5 / 32, 5 / 24]]))
    assert tgt["boxes"].dtype == torch.float32
    assert tgt["labels"].tolist() == [2, 3] and tgt["labels"].dtype == torch.int64
    assert tgt["ignore"].tolist() == [False, True] and tgt["ignore"].dtype == torch.bool
    assert tgt["image_id"] == 10
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    images, targets = collate_train([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 32, 32) and len(targets) == 3


def test_train_items_with_augmentation_handle_empty_images(tmp_path):
    torch.manual_seed(0)
    ds = _build(tmp_path, train=True, augment=True)
    for _ in range(5):
        img, tgt = ds[2]  # no annotations: RandomIoUCrop must be skipped
        assert img.shape == (3, 32, 32) and tgt["boxes"].shape == (0, 4)


def test_coco_gt_round_trip_through_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = _build(tmp_path)
    gt = ds.coco_gt()
    assert [c["id"] for c in gt["categories"]] == [1, 3, 7]
    anns = {(a["image_id"], a["category_id"]): a for a in gt["annotations"]}
    assert anns[(10, 7)]["iscrowd"] == 1 and anns[(10, 3)]["iscrowd"] == 0
    assert anns[(10, 3)]["bbox"] == [2, 3, 10, 8] and anns[(10, 3)]["area"] == 70.0
    assert anns[(11, 1)]["bbox"] == [30, 30, 10, 10]  # clipped, xywh, original pixels
    assert {im["id"] for im in gt["images"]} == {10, 11, 12}
    assert all(a["id"] >= 1 for a in gt["annotations"])

    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in gt["annotations"] if not a["iscrowd"]]
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_default_val_spec_for_coco(tmp_path):
    ann, img_dir = _write_coco(tmp_path)
    train_img = tmp_path / "train2017"
    img_dir.rename(train_img)
    spec = f"coco:{ann}:{train_img}"
    with pytest.raises(ValueError, match="--val-data"):
        default_val_spec(spec)
    (tmp_path / "val2017").mkdir()
    (tmp_path / "instances_val2017.json").write_text(ann.read_text())
    assert default_val_spec(spec) == (f"coco:{tmp_path / 'instances_val2017.json'}:"
                                      f"{tmp_path / 'val2017'}")
