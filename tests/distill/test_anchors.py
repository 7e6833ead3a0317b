import math

import pytest
import torch

from distill.models.anchors import DefaultBoxGenerator, anchor_scales


def test_scales_linear():
    assert anchor_scales(6, 0.2, 0.95) == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])


def test_golden_anchors_two_maps():
    g = DefaultBoxGenerator(aspect_ratios=[[2], [2]], min_ratio=0.2, max_ratio=0.9, clip=False)
    a = g([(2, 2), (1, 1)])
    assert a.shape == (2 * 2 * 4 + 4, 4)
    r2 = math.sqrt(2)
    # map 0, cell (y=0, x=0): centre (0.25, 0.25), scale 0.2, next scale 0.9
    expected0 = torch.tensor([[0.25, 0.25, 0.2, 0.2],
                              [0.25, 0.25, math.sqrt(0.2 * 0.9), math.sqrt(0.2 * 0.9)],
                              [0.25, 0.25, 0.2 * r2, 0.2 / r2],
                              [0.25, 0.25, 0.2 / r2, 0.2 * r2]])
    torch.testing.assert_close(a[:4], expected0)
    # map 0, cell (y=0, x=1) comes next: x varies fastest
    torch.testing.assert_close(a[4, :2], torch.tensor([0.75, 0.25]))
    # map 1 (1x1), scale 0.9, the extra box uses s=1.0
    expected1 = torch.tensor([[0.5, 0.5, 0.9, 0.9], [0.5, 0.5, math.sqrt(0.9), math.sqrt(0.9)],
                              [0.5, 0.5, 0.9 * r2, 0.9 / r2], [0.5, 0.5, 0.9 / r2, 0.9 * r2]])
    torch.testing.assert_close(a[16:], expected1)


def test_clip_and_count():
    g = DefaultBoxGenerator(min_ratio=0.2, max_ratio=0.95)
    a = g([(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)])
    assert a.shape == ((361 + 100 + 25 + 9 + 4 + 1) * 6, 4)
    assert a.min() >= 0 and a.max() <= 1


def test_bad_scales():
    with pytest.raises(ValueError, match="min_ratio"):
        DefaultBoxGenerator(min_ratio=0.9, max_ratio=0.2)
