import numpy as np
import pytest
from PIL import Image

from runtime.metadata import ModelMeta
from runtime.preprocess import (
    Preprocessor,
    load_image,
    normalize,
    preprocess_batch,
    resize,
    scale_boxes,
)

MEAN = (0.5, 0.25, 0.0)
STD = (0.5, 0.25, 1.0)


def rgb(h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_load_image_sources_agree(tmp_path):
    arr = rgb()
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    for src in (arr, Image.fromarray(arr), path, str(path)):
        out = load_image(src)
        assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
        np.testing.assert_array_equal(out, arr)


def test_load_image_numpy_gray_and_rgba():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = load_image(g)
    assert out.shape == (3, 4, 3) and np.all(out == g[:, :, None])
    rgba = np.dstack([rgb(3, 4), np.full((3, 4), 7, np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), rgba[:, :, :3])
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((3, 4, 5), np.uint8))


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "1", "I;16", "P"])
def test_load_image_modes_become_rgb(tmp_path, mode):
    base = Image.fromarray(rgb(5, 7))
    if mode == "I;16":
        img = Image.fromarray(np.full((5, 7), 65535, dtype=np.uint16))
        assert img.mode.startswith("I")
    else:
        img = base.convert(mode)
    out = load_image(img)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    if mode == "I;16":
        assert np.all(out == 255)


def test_load_image_palette_with_transparency(tmp_path):
    img = Image.fromarray(rgb(4, 4)).convert("P")
    img.info["transparency"] = 0
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    out = load_image(path)
    assert out.shape == (4, 4, 3)


def test_load_image_16bit_png(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 257 * 128], [65535, 257]], dtype=np.uint16)).save(path)
    out = load_image(path)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 128], [255, 1]])


def test_load_image_exif_orientation(tmp_path):
    arr = rgb(4, 6)  # H=4, W=6
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    out = load_image(path)
    assert out.shape == (6, 4, 3)


def test_load_image_errors_name_file(tmp_path):
    with pytest.raises(ValueError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(bad)
    with pytest.raises(ValueError, match="int"):
        load_image(3)


def test_resize_matches_pil_bilinear():
    arr = rgb(10, 7)
    out = resize(arr, (4, 9))
    assert out.shape == (4, 9, 3) and out.dtype == np.uint8
    ref = np.asarray(Image.fromarray(arr).resize((9, 4), Image.BILINEAR))
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="resize_mode"):
        resize(arr, (4, 9), mode="crop")


def test_normalize_values_and_layout():
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[..., 0] = 255
    arr[..., 1] = 51
    x = normalize(arr, MEAN, STD)
    assert x.dtype == np.float32 and x.shape == (3, 2, 3)
    np.testing.assert_allclose(x[0], (1.0 - 0.5) / 0.5)
    np.testing.assert_allclose(x[1], (0.2 - 0.25) / 0.25, rtol=1e-6)
    np.testing.assert_allclose(x[2], 0.0)


def test_preprocess_batch_mixed_sizes():
    imgs = [rgb(10, 20, 1), rgb(7, 5, 2)]
    batch, orig = preprocess_batch(imgs, (8, 12), MEAN, STD)
    assert batch.shape == (2, 3, 8, 12) and batch.dtype == np.float32
    assert orig.dtype == np.int64 and orig.tolist() == [[10, 20], [7, 5]]
    np.testing.assert_array_equal(batch[1], normalize(resize(imgs[1], (8, 12)), MEAN, STD))
    with pytest.raises(ValueError):
        preprocess_batch([], (8, 12), MEAN, STD)


def test_scale_boxes_single_and_batched():
    b = np.array([[0.1, 0.2, 0.5, 1.2], [-0.1, 0.0, 0.3, 0.5]], np.float32)
    out = scale_boxes(b, (100, 200))
    np.testing.assert_allclose(out, [[20, 20, 100, 100], [0, 0, 60, 50]], rtol=1e-6)
    bb = np.stack([b, b])
    out2 = scale_boxes(bb, np.array([[100, 200], [10, 20]]))
    np.testing.assert_allclose(out2[0], out)
    np.testing.assert_allclose(out2[1], [[2, 2, 10, 10], [0, 0, 6, 5]], rtol=1e-6)
    with pytest.raises(ValueError, match="orig_hw"):
        scale_boxes(bb, np.array([[1, 2, 3]]))


def test_preprocessor_from_meta():
    meta = ModelMeta(
        model_name="m", class_names=["a"], category_ids=[1], input_size=(8, 12), mean=MEAN, std=STD
    )
    pre = Preprocessor.from_meta(meta)
    img = rgb(9, 9)
    batch, orig = pre([img])
    ref, _ = preprocess_batch([img], (8, 12), MEAN, STD)
    np.testing.assert_array_equal(batch, ref)
    np.testing.assert_allclose(pre.scale_boxes(np.array([[0, 0, 1, 1]]), orig[0]), [[0, 0, 9, 9]])


def test_preprocessor_buffer_reuse():
    fresh = Preprocessor((8, 12), MEAN, STD)
    a, _ = fresh([rgb(9, 9, 1)])
    b, _ = fresh([rgb(9, 9, 2)])
    assert not np.shares_memory(a, b)
    reused = Preprocessor((8, 12), MEAN, STD, reuse_buffer=True)
    c, _ = reused([rgb(9, 9, 1), rgb(5, 5, 2)])
    d, _ = reused([rgb(9, 9, 3)])
    assert np.shares_memory(c, d) and d.shape == (1, 3, 8, 12)
    np.testing.assert_array_equal(d, preprocess_batch([rgb(9, 9, 3)], (8, 12), MEAN, STD)[0])
