"""SSD augmentation: boxes stay in [0, 1], labels and ignore flags stay aligned."""

import pytest
import torch
from torchvision import tv_tensors

from distill.data import collate_train
from distill.data.transforms import build_train_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _sample(n_boxes=6, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
    xy = torch.rand(n_boxes, 2, generator=g) * torch.tensor([w - 8.0, h - 8.0])
    wh = 2 + torch.rand(n_boxes, 2, generator=g) * 20
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1)
    labels = torch.arange(n_boxes, dtype=torch.int64) % 3 + 1
    target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
              "labels": labels, "ignore": labels == 2}  # label 2 <=> ignore, so alignment shows
    return image, target


def test_augmentation_keeps_boxes_inside_and_flags_aligned():
    torch.manual_seed(0)
    tf = build_train_transform(40, MEAN, STD, augment=True)
    seen_counts = set()
    for seed in range(40):
        img, tgt = tf(*_sample(seed=seed))
        assert img.shape == (3, 40, 40) and img.dtype == torch.float32
        b = tgt["boxes"]
        assert b.canvas_size == (40, 40) and b.shape[1] == 4
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 40).all() and (b[:, 1] >= 0).all()
        assert (b[:, 3] <= 40).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert len(tgt["labels"]) == len(tgt["ignore"]) == len(b)
        assert torch.equal(tgt["ignore"], tgt["labels"] == 2)
        seen_counts.add(len(b))
    assert len(seen_counts) > 1  # crops really drop boxes sometimes


def test_no_augmentation_is_resize_and_normalise():
    tf = build_train_transform(32, MEAN, STD, augment=False)
    image, target = _sample(n_boxes=2, h=16, w=64)
    img, tgt = tf(image, target)
    torch.testing.assert_close(tgt["boxes"].as_subclass(torch.Tensor),
                               target["boxes"].as_subclass(torch.Tensor) * torch.tensor([0.5, 2, 0.5, 2]))
    assert img.shape == (3, 32, 32)
    assert img.mean().abs() < 3  # normalised, not 0..255


def test_empty_boxes_without_iou_crop():
    torch.manual_seed(0)
    tf = build_train_transform(24, MEAN, STD, augment=True, iou_crop=False)
    img, tgt = tf(*_sample(n_boxes=0))
    assert img.shape == (3, 24, 24) and tgt["boxes"].shape == (0, 4) and tgt["labels"].shape == (0,)


def test_collate_train_shapes():
    tf = build_train_transform(24, MEAN, STD, augment=False)
    batch = [tf(*_sample(n_boxes=n, seed=n)) for n in (0, 1, 3)]
    images, targets = collate_train(batch)
    assert images.shape == (3, 3, 24, 24) and [len(t["boxes"]) for t in targets] == [0, 1, 3]


def test_bad_parameters():
    with pytest.raises(ValueError, match="mean and std"):
        build_train_transform(24, (0.5, 0.5), STD)
    with pytest.raises(ValueError, match="img_size"):
        build_train_transform(0, MEAN, STD)


def test_light_policy_only_flips_and_resizes(tmp_path):
    """augment="light": every box is the resized box or its horizontal mirror (no crop, no zoom-out)."""
    from distill.data import build_dataset
    ds = build_dataset("shapes", "train", img_size=64, mean=MEAN, std=STD, train=True, augment="light",
                       data_root=tmp_path, shapes_kwargs={"num_train": 6, "num_val": 1})
    plain = build_dataset("shapes", "train", img_size=64, mean=MEAN, std=STD, train=True, augment="none",
                          data_root=tmp_path, shapes_kwargs={"num_train": 6, "num_val": 1})
    assert ds.augment_policy == "light" and plain.augment_policy == "none"
    torch.manual_seed(0)
    flips = 0
    for i in range(len(ds)):
        for _ in range(4):
            b = ds[i][1]["boxes"]
            ref = plain[i][1]["boxes"]
            mirrored = torch.stack([1 - ref[:, 2], ref[:, 1], 1 - ref[:, 0], ref[:, 3]], 1)
            assert b.shape == ref.shape
            same = torch.allclose(b, ref, atol=1e-5)
            flipped = torch.allclose(b, mirrored, atol=1e-5)
            assert same or flipped
            flips += flipped and not same
    assert flips > 0
    with pytest.raises(ValueError, match="augment must be one of"):
        build_dataset("shapes", "train", img_size=64, mean=MEAN, std=STD, train=True, augment="heavy",
                      data_root=tmp_path, shapes_kwargs={"num_train": 6, "num_val": 1})
