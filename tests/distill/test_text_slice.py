"""Text / non-text classifier: generator, region-label rule, teacher / student shapes, student size, overfit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.text.data import TextImages, generate
from distill.text.models import TextStudent, TextTeacher, count_parameters, region_bce, region_pool
from distill.text.regions import (MSP_RULE, OVERLAP_RULE, RegionRule, region_label_grids, region_labels,
                                  union_area_fraction)

HW = (90, 90)          # grid 3 -> 30 x 30 regions: area 900 (5 % = 45 px^2), half height 15 px


def _label(box: list[float], rule: RegionRule = MSP_RULE, grid: int = 3) -> np.ndarray:
    return region_labels(np.array([box]), HW, grid, rule)


def test_generator_is_deterministic_and_has_both_classes():
    a, b = generate(7, 4, (64, 96)), generate(7, 4, (64, 96))
    assert a.image.shape == (64, 96, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, generate(8, 4, (64, 96)).image)
    samples = [generate(0, i, (64, 64)) for i in range(8)]
    assert {s.is_text for s in samples} == {True, False}
    for s in samples:
        assert (len(s.boxes) > 0) == s.is_text
        if s.is_text:
            assert np.all(s.boxes[:, 2] > s.boxes[:, 0]) and np.all(s.boxes[:, 3] > s.boxes[:, 1])
            assert np.all(s.boxes >= 0) and np.all(s.boxes[:, [2, 3]] <= 64)


def test_dataset_items_and_region_labels():
    ds = TextImages(6, seed=3, size=(64, 80))
    image, label, regions = ds[0]
    assert image.shape == (3, 64, 80) and 0.0 <= image.min() and image.max() <= 1.0
    assert float(label) == 1.0 and set(regions) == {3, 5} and regions[5].shape == (5, 5)
    s = generate(3, 0, (64, 80))
    assert np.array_equal(regions[3].numpy(), region_labels(s.boxes, (64, 80), 3))
    _, label1, regions1 = ds[1]
    assert float(label1) == 0.0 and all(float(r.sum()) == 0.0 for r in regions1.values())
    with pytest.raises(IndexError):
        ds[6]


def test_area_condition_just_above_and_below_five_percent():
    assert _label([0, 0, 2.9, 16])[0, 0] == 1          # 46.4 / 900 > 5 %, height 16 > 15
    assert _label([0, 0, 2.8, 16])[0, 0] == 0          # 44.8 / 900 < 5 %
    assert _label([0, 0, 2.9, 16]).sum() == 1          # nothing outside the region


def test_height_condition_just_above_and_below_half():
    assert _label([0, 0, 10, 15.5])[0, 0] == 1
    assert _label([0, 0, 10, 15.0])[0, 0] == 0         # "exceeds": 15 is not > 15


def test_area_is_a_union_not_a_sum():
    twice = np.array([[0, 0, 2.5, 16], [0, 0, 2.5, 16]])   # 40 px^2 each, the same pixels
    assert region_labels(twice, HW, 3, rule=MSP_RULE)[0, 0] == 0
    side = np.array([[0, 0, 2.5, 16], [2.5, 0, 5, 16]])    # 80 px^2 together
    assert region_labels(side, HW, 3, rule=MSP_RULE)[0, 0] == 1


def test_the_paper_rule_is_the_default():
    from distill.text.regions import PAPER_RULE
    sliver = np.array([[0, 0, 2.5, 16]])                   # 40 px^2: above 1 %, below 5 % of the region
    assert region_labels(sliver, HW, 3)[0, 0] == 1 and PAPER_RULE == OVERLAP_RULE
    assert region_labels(sliver, HW, 3, rule=MSP_RULE)[0, 0] == 0


def test_whole_line_height_versus_clipped():
    box = [0, 10, 30, 40]                                # 30 px tall: rows 0 (20 px) and 1 (10 px)
    assert _label(box)[:2, 0].tolist() == [1, 1]
    clipped = RegionRule(clip_height=True)
    assert _label(box, clipped)[:2, 0].tolist() == [1, 0]


def test_paper_overlap_rule_and_grid_five():
    small = [0, 0, 10, 10]                                # 11 % of a 3x3 region, 10 px < 15 px
    assert _label(small)[0, 0] == 0 and _label(small, OVERLAP_RULE)[0, 0] == 1
    grids = region_label_grids(np.array([[45, 36, 81, 54]]), HW)   # 5x5 regions are 18 x 18
    assert grids[5][2].tolist() == [0, 0, 1, 1, 1] and grids[5].sum() == 3
    assert region_labels(np.zeros((0, 4)), HW, 5).sum() == 0


def test_union_area_matches_rasterised_boxes():
    rng = np.random.default_rng(0)
    boxes = np.sort(rng.integers(-5, 70, (7, 2, 2)), axis=1).reshape(7, 4)[:, [0, 2, 1, 3]].astype(float)
    mask = np.zeros((60, 75), dtype=bool)
    for x0, y0, x1, y1 in np.clip(boxes, 0, [75, 60, 75, 60]).astype(int):
        mask[y0:y1, x0:x1] = True
    got = union_area_fraction(boxes, (60, 75), 5)
    want = mask.reshape(5, 12, 5, 15).mean(axis=(1, 3))
    assert np.allclose(got, want)


@pytest.mark.parametrize("hw", [(7, 11), (8, 8), (2, 3), (16, 10)])
def test_region_pool_equals_adaptive_average_pooling(hw):
    x = torch.rand(2, 4, *hw)
    for g in (3, 5):
        want = torch.nn.functional.adaptive_avg_pool2d(x, g).flatten(2).transpose(1, 2)
        assert torch.allclose(region_pool(x, g), want, atol=1e-6)


@pytest.mark.parametrize("hw", [(64, 64), (96, 128)])
@pytest.mark.parametrize("model_cls", [TextTeacher, TextStudent])
def test_output_shapes(model_cls, hw):
    torch.manual_seed(0)
    model = model_cls().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *hw))
    for g in (3, 5):
        assert out["region_logits"][g].shape == (2, g, g)
        assert out["region_features"][g].shape == (2, g * g, 128)
    regions = torch.cat([out["region_logits"][g].flatten(1) for g in (3, 5)], dim=1)
    assert torch.equal(out["image_logit"], regions.max(dim=1).values)


def test_student_parameter_count_near_paper():
    n = count_parameters(TextStudent())
    print(f"student parameters: {n}")
    assert 0.07e6 <= n <= 0.11e6 and abs(n - 87_000) <= 0.2 * 87_000
    assert count_parameters(TextTeacher()) > 100 * n


def test_student_overfits_eight_generated_images():
    torch.manual_seed(0)
    ds = TextImages(8, seed=1, size=(64, 64))
    images, labels, regions = torch.utils.data.default_collate([ds[i] for i in range(8)])
    assert labels.tolist() == [1.0, 0.0] * 4 and float(regions[3].sum()) > 0
    model = TextStudent()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = region_bce(model(images), regions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
