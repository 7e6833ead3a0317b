import numpy as np
import pytest

from runtime.nms_reference import decode_boxes, efficient_nms, iou_one_to_many

NMS = dict(score_threshold=0.1, iou_threshold=0.5, max_output_boxes=5)


def one(boxes, scores, **kw):
    """Batch of one image -> (n, boxes[:n], scores[:n], classes[:n]) plus raw outputs."""
    args = {**NMS, **kw}
    num, b, s, c = efficient_nms(np.asarray(boxes, np.float32)[None], np.asarray(scores, np.float32)[None], **args)
    n = int(num[0, 0])
    return n, b[0, :n], s[0, :n], c[0, :n], (num, b, s, c)


# Two heavily overlapping boxes and one far away.
BOXES = [[0.0, 0.0, 1.0, 1.0], [0.05, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]]


def test_output_shapes_and_dtypes():
    n, _, _, _, (num, b, s, c) = one(BOXES, [[0.9], [0.8], [0.7]])
    assert num.shape == (1, 1) and num.dtype == np.int32
    assert b.shape == (1, 5, 4) and b.dtype == np.float32
    assert s.shape == (1, 5) and s.dtype == np.float32
    assert c.shape == (1, 5) and c.dtype == np.int32


def test_same_class_overlap_suppressed_and_padding():
    n, b, s, c, (num, ob, os_, oc) = one(BOXES, [[0.9], [0.8], [0.7]])
    assert n == 2
    np.testing.assert_allclose(s, [0.9, 0.7])
    np.testing.assert_allclose(b, [BOXES[0], BOXES[2]])
    assert np.all(ob[0, 2:] == 0) and np.all(os_[0, 2:] == 0) and np.all(oc[0, 2:] == 0)


def test_different_classes_kept_unless_class_agnostic():
    scores = [[0.9, 0.0], [0.0, 0.8], [0.0, 0.0]]
    n, _, s, c, _ = one(BOXES, scores)
    assert n == 2 and c.tolist() == [0, 1] and s.tolist() == pytest.approx([0.9, 0.8])
    n, _, _, c, _ = one(BOXES, scores, class_agnostic=True)
    assert n == 1 and c.tolist() == [0]


def test_same_box_two_classes_both_kept():
    n, b, s, c, _ = one([[0, 0, 1, 1]], [[0.6, 0.7]])
    assert n == 2 and c.tolist() == [1, 0] and s.tolist() == pytest.approx([0.7, 0.6])


def test_score_threshold_is_inclusive():
    n, _, s, _, _ = one(BOXES, [[0.1], [0.0999], [0.5]])
    assert n == 2 and s.tolist() == pytest.approx([0.5, 0.1])


def test_iou_threshold_is_inclusive():
    # IoU of [0,0,2,1] and [1,0,3,1] is exactly 1/3.
    boxes = [[0, 0, 2, 1], [1, 0, 3, 1]]
    assert iou_one_to_many(np.array(boxes[0], np.float32), np.array(boxes[1:], np.float32))[0] == pytest.approx(1 / 3)
    n, *_ = one(boxes, [[0.9], [0.8]], iou_threshold=np.float32(1 / 3))
    assert n == 1
    n, *_ = one(boxes, [[0.9], [0.8]], iou_threshold=0.34)
    assert n == 2


def test_max_output_boxes_keeps_the_best():
    boxes = [[i * 2.0, 0, i * 2.0 + 1, 1] for i in range(8)]
    scores = [[0.1 + 0.1 * i] for i in range(8)]
    n, _, s, _, _ = one(boxes, scores, max_output_boxes=3)
    assert n == 3 and s.tolist() == pytest.approx([0.8, 0.7, 0.6])


def test_pre_nms_top_k_limits_candidates():
    boxes = [[i * 2.0, 0, i * 2.0 + 1, 1] for i in range(6)]
    scores = [[0.9 - 0.1 * i] for i in range(6)]
    n, _, s, _, _ = one(boxes, scores, pre_nms_top_k=2)
    assert n == 2 and s.tolist() == pytest.approx([0.9, 0.8])


def test_background_column_ignored():
    scores = [[0.99, 0.3], [0.99, 0.2], [0.99, 0.6]]
    n, _, s, c, _ = one(BOXES, scores, background_class=0)
    assert c.tolist() == [1, 1]  # class = score column index, background never reported
    assert s.tolist() == pytest.approx([0.6, 0.3])
    with pytest.raises(ValueError, match="background_class"):
        one(BOXES, scores, background_class=2)


def test_ties_are_stable_by_index():
    boxes = [[i * 2.0, 0, i * 2.0 + 1, 1] for i in range(4)]
    n, b, _, c, _ = one(boxes, [[0.5, 0.5]] * 4, max_output_boxes=8)
    assert n == 8
    # order: anchor-major, then class
    assert c.tolist() == [0, 1] * 4
    np.testing.assert_allclose(b[::2, 0], [0, 2, 4, 6])


def test_flipped_corners_are_accepted():
    # Same box written with x1 > x2: IoU is still 1, so it is suppressed, and output as given.
    n, b, *_ = one([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]], [[0.9], [0.8]])
    assert n == 1
    np.testing.assert_allclose(b[0], [1.0, 0.0, 0.0, 1.0])


def test_score_activation_sigmoid():
    logits = np.log(np.array([[0.9], [0.8], [0.05]]) / (1 - np.array([[0.9], [0.8], [0.05]])))
    n, _, s, _, _ = one([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], logits, score_activation=True)
    assert n == 2 and s.tolist() == pytest.approx([0.9, 0.8], abs=1e-6)


def test_box_coding_center_size_without_anchors():
    n, b, *_ = one([[0.5, 0.5, 0.2, 0.4]], [[0.9]], box_coding=1)
    np.testing.assert_allclose(b, [[0.4, 0.3, 0.6, 0.7]], atol=1e-6)


def test_box_coding_center_size_with_anchors_matches_hand_decoding():
    anchors = np.array([[[0.5, 0.5, 0.2, 0.4], [0.2, 0.3, 0.1, 0.1]]], np.float32)  # cx, cy, w, h
    deltas = np.array([[[0.1, -0.2, np.log(2.0), 0.0], [0.0, 0.0, 0.0, 0.0]]], np.float32)
    scores = np.array([[[0.9], [0.8]]], np.float32)
    num, b, s, c = efficient_nms(deltas, scores, anchors, box_coding=1, **NMS)
    # by hand: cx = 0.5 + 0.1*0.2 = 0.52, cy = 0.5 - 0.2*0.4 = 0.42, w = 0.4, h = 0.4
    expected0 = [0.52 - 0.2, 0.42 - 0.2, 0.52 + 0.2, 0.42 + 0.2]
    expected1 = [0.15, 0.25, 0.25, 0.35]
    assert num[0, 0] == 2
    np.testing.assert_allclose(b[0, :2], [expected0, expected1], atol=1e-6)


def test_box_coding_corners_with_anchors_adds_offsets():
    anchors = np.array([[[0.1, 0.1, 0.5, 0.5]]], np.float32)
    deltas = np.array([[[0.0, -0.1, 0.2, 0.1]]], np.float32)
    num, b, _, _ = efficient_nms(deltas, np.array([[[0.9]]], np.float32), anchors, **NMS)
    np.testing.assert_allclose(b[0, 0], [0.1, 0.0, 0.7, 0.6], atol=1e-6)
    # The plugin reorders the raw corner deltas too, so y-deltas (0.1, -0.1) act as (-0.1, 0.1).
    flipped = np.array([[[0.0, 0.1, 0.2, -0.1]]], np.float32)
    _, b2, _, _ = efficient_nms(flipped, np.array([[[0.9]]], np.float32), anchors, **NMS)
    np.testing.assert_allclose(b2[0, 0], b[0, 0], atol=1e-6)


def test_per_batch_anchors_and_decode_boxes():
    a = np.array([[0.5, 0.5, 1.0, 1.0]], np.float32)
    np.testing.assert_allclose(decode_boxes(np.zeros((1, 4), np.float32), a, 1), [[0, 0, 1, 1]])
    anchors = np.array([[[0.5, 0.5, 1.0, 1.0]], [[1.5, 1.5, 1.0, 1.0]]], np.float32)  # [B=2, N=1, 4]
    num, b, _, _ = efficient_nms(np.zeros((2, 1, 4), np.float32), np.full((2, 1, 1), 0.9, np.float32),
                                 anchors, box_coding=1, **NMS)
    np.testing.assert_allclose(b[:, 0], [[0, 0, 1, 1], [1, 1, 2, 2]])


def test_per_class_boxes():
    # [B, N, C, 4]: class 0 uses box A, class 1 box B.
    boxes = np.array([[[[0, 0, 1, 1], [5, 5, 6, 6]]]], np.float32)
    num, b, s, c = efficient_nms(boxes, np.array([[[0.6, 0.9]]], np.float32), **NMS)
    assert num[0, 0] == 2
    np.testing.assert_allclose(b[0, :2], [[5, 5, 6, 6], [0, 0, 1, 1]])


def test_batch_with_empty_image_and_different_counts():
    boxes = np.array([BOXES, BOXES], np.float32)
    scores = np.array([[[0.9], [0.8], [0.7]], [[0.05], [0.0], [0.01]]], np.float32)
    num, b, s, c = efficient_nms(boxes, scores, **NMS)
    assert num.ravel().tolist() == [2, 0]
    assert np.all(b[1] == 0) and np.all(s[1] == 0) and np.all(c[1] == 0)
    scores[1] = [[0.3], [0.2], [0.9]]
    num, _, s, _ = efficient_nms(boxes, scores, **NMS)
    assert num.ravel().tolist() == [2, 2]
    np.testing.assert_allclose(s[1, :2], [0.9, 0.3])


def test_zero_anchors_input():
    num, b, _, _ = efficient_nms(np.zeros((2, 0, 4)), np.zeros((2, 0, 3)), **NMS)
    assert num.ravel().tolist() == [0, 0] and b.shape == (2, 5, 4)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="boxes"):
        efficient_nms(np.zeros((1, 3, 5)), np.zeros((1, 3, 2)), **NMS)
    with pytest.raises(ValueError, match="scores"):
        efficient_nms(np.zeros((1, 3, 4)), np.zeros((1, 3)), **NMS)
    with pytest.raises(ValueError, match="anchors"):
        efficient_nms(np.zeros((1, 3, 4)), np.zeros((1, 3, 2)), np.zeros((1, 2, 4)), **NMS)
    with pytest.raises(ValueError, match="box_coding"):
        efficient_nms(np.zeros((1, 3, 4)), np.zeros((1, 3, 2)), box_coding=2, **NMS)


def test_matches_torchvision_batched_nms():
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(0)
    B, N, C, K = 2, 300, 4, 50
    xy = rng.uniform(0, 0.8, (B, N, 2))
    wh = rng.uniform(0.05, 0.3, (B, N, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (B, N, C)).astype(np.float32)
    thr, iou = 0.3, 0.45
    for agnostic in (False, True):
        num, ob, os_, oc = efficient_nms(boxes, scores, score_threshold=thr, iou_threshold=iou,
                                         max_output_boxes=K, class_agnostic=agnostic)
        for i in range(B):
            a_idx, c_idx = np.nonzero(scores[i] >= thr)
            tb = torch.from_numpy(boxes[i, a_idx])
            ts = torch.from_numpy(scores[i, a_idx, c_idx])
            groups = torch.zeros_like(torch.from_numpy(c_idx)) if agnostic else torch.from_numpy(c_idx)
            keep = tv_ops.batched_nms(tb, ts, groups, iou)[:K].numpy()
            n = int(num[i, 0])
            assert n == len(keep)
            np.testing.assert_allclose(ob[i, :n], boxes[i, a_idx[keep]], atol=1e-6)
            np.testing.assert_allclose(os_[i, :n], scores[i, a_idx[keep], c_idx[keep]])
            np.testing.assert_array_equal(oc[i, :n], c_idx[keep])
