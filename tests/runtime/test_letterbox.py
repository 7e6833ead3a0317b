"""Letterbox resize as a sidecar-declared mode: the image, the boxes mapped back, and a detector using it."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from runtime import load_detector
from runtime.metadata import read_sidecar, write_sidecar
from runtime.preprocess import LETTERBOX_FILL, Preprocessor, letterbox_geometry, resize, scale_boxes
from tests.helpers import IMG_SIZE, controlled_raw_graph


def test_geometry_keeps_the_aspect_ratio_and_centres():
    assert letterbox_geometry((60, 200), (64, 64)) == (19, 64, 22, 0)
    assert letterbox_geometry((200, 60), (64, 64)) == (64, 19, 0, 22)
    assert letterbox_geometry((64, 64), (64, 64)) == (64, 64, 0, 0)
    assert letterbox_geometry((1, 5000), (32, 48)) == (1, 48, 15, 0)  # never a zero-height image


def test_letterboxed_image_sits_where_the_geometry_says():
    img = np.full((60, 200, 3), 250, np.uint8)
    out = resize(img, (64, 64), "letterbox")
    nh, nw, top, left = letterbox_geometry((60, 200), (64, 64))
    assert out.shape == (64, 64, 3)
    assert np.all(out[:top] == LETTERBOX_FILL) and np.all(out[top + nh:] == LETTERBOX_FILL)
    assert np.all(out[top:top + nh, left:left + nw] == 250)


def test_boxes_map_back_through_the_padding_unlike_stretch():
    h, w, size = 60, 200, (64, 64)
    nh, nw, top, left = letterbox_geometry((h, w), size)
    # The fitted image's corners in the network input, normalised: they map back to the whole image.
    corners = np.array([[left / 64, top / 64, (left + nw) / 64, (top + nh) / 64]], np.float32)
    np.testing.assert_allclose(scale_boxes(corners, (h, w), "letterbox", size), [[0, 0, w, h]], atol=1e-3)
    # A box in the original -> where letterbox puts it -> back again.
    box = np.array([50.0, 10.0, 120.0, 45.0])
    sx, sy = nw / w, nh / h
    net = np.array([[(left + box[0] * sx) / 64, (top + box[1] * sy) / 64,
                     (left + box[2] * sx) / 64, (top + box[3] * sy) / 64]], np.float32)
    np.testing.assert_allclose(scale_boxes(net, (h, w), "letterbox", size), [box], atol=1e-3)
    stretch = scale_boxes(net, (h, w), "stretch")
    assert np.abs(stretch - box).max() > 10, "stretch reads the same output differently"
    batched = scale_boxes(np.stack([net, corners]), np.array([[h, w], [h, w]]), "letterbox", size)
    np.testing.assert_allclose(batched[0], [box], atol=1e-3)
    with pytest.raises(ValueError, match="needs input_size"):
        scale_boxes(net, (h, w), "letterbox")


def test_preprocessor_letterboxes_and_maps_back():
    pre = Preprocessor((64, 64), (0, 0, 0), (1, 1, 1), resize_mode="letterbox")
    x, orig = pre([np.zeros((60, 200, 3), np.uint8)])
    assert x.shape == (1, 3, 64, 64) and orig.tolist() == [[60, 200]]
    np.testing.assert_allclose(x[0, :, 0, 0], LETTERBOX_FILL / 255, rtol=1e-6)  # the padding
    np.testing.assert_allclose(x[0, :, 32, 32], 0.0)  # the image
    np.testing.assert_allclose(pre.scale_boxes(np.array([[0, 22 / 64, 1, 41 / 64]]), orig[0]), [[0, 0, 200, 60]],
                               atol=1e-3)


def test_a_detector_with_a_letterbox_sidecar_finds_the_box_on_a_non_square_image(tmp_path):
    """The controlled model detects bright cells of its 4 x 4 input grid. A 64 x 128 picture
    letterboxed into 64 x 64 fills input rows 16..48; its bright block x 32..64, y 0..32 is input
    cell (row 1, col 1) exactly, which maps back to that block. Stretched, the block covers two
    input cells (rows 0 and 1): two half-height boxes come out instead."""
    model = tmp_path / "model_raw.onnx"
    shutil.copy(controlled_raw_graph(), model)
    meta = read_sidecar(controlled_raw_graph())
    img = np.zeros((64, 128, 3), np.uint8)
    img[0:32, 32:64] = 255
    write_sidecar(model, dataclasses.replace(meta, resize_mode="letterbox"))
    r = load_detector(model)(img)
    assert r.labels.tolist() == [1]
    np.testing.assert_allclose(r.boxes[0], [32, 0, 64, 32], atol=0.5)
    write_sidecar(model, dataclasses.replace(meta, resize_mode="stretch"))
    stretched = load_detector(model)(img)
    got = sorted(stretched.boxes.tolist(), key=lambda b: b[1])
    np.testing.assert_allclose(got, [[32, 0, 64, 16], [32, 16, 64, 32]], atol=0.5)
    assert IMG_SIZE == 64
