"""The embedded synthetic dataset: determinism, caching, atomic writes, content."""

import json

import numpy as np
import pytest

from distill.data import build_dataset, default_val_spec
from distill.data import shapes
from runtime.preprocess import load_image

TINY = dict(num_train=4, num_val=2, size_range=(48, 64))


def _read(root):
    out = {}
    for split in shapes.SPLITS:
        ann, img_dir = shapes.split_paths(root, split)
        coco = json.loads(ann.read_text())
        out[split] = (ann.read_text(), [load_image(img_dir / im["file_name"]) for im in coco["images"]])
    return out


def test_same_seed_same_dataset_other_seed_differs(tmp_path):
    a = shapes.ensure_shapes_dataset(tmp_path / "a", progress=False, seed=3, **TINY)
    b = shapes.ensure_shapes_dataset(tmp_path / "b", progress=False, seed=3, **TINY)
    c = shapes.ensure_shapes_dataset(tmp_path / "c", progress=False, seed=4, **TINY)
    assert a.name == b.name != c.name
    ra, rb, rc = _read(a), _read(b), _read(c)
    for split in shapes.SPLITS:
        assert ra[split][0] == rb[split][0]  # byte-identical json
        assert all(np.array_equal(x, y) for x, y in zip(ra[split][1], rb[split][1]))
        assert ra[split][0] != rc[split][0]
        assert not any(x.shape == y.shape and np.array_equal(x, y)
                       for x, y in zip(ra[split][1], rc[split][1]))


def test_generated_once_and_cached(tmp_path):
    root = shapes.ensure_shapes_dataset(tmp_path, progress=False, **TINY)
    ann, _ = shapes.split_paths(root, "train")
    mtime = ann.stat().st_mtime_ns
    assert shapes.ensure_shapes_dataset(tmp_path, progress=False, **TINY) == root
    assert ann.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary leftovers


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real = shapes.write_split

    def fail_on_val(out_dir, split, *a, **k):
        if split == "val":
            raise KeyboardInterrupt
        return real(out_dir, split, *a, **k)

    monkeypatch.setattr(shapes, "write_split", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        shapes.ensure_shapes_dataset(tmp_path, progress=False, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_incomplete_existing_folder_is_an_error(tmp_path):
    name = shapes.dataset_name(shapes.resolve_params(**TINY))
    (tmp_path / name).mkdir()
    with pytest.raises(RuntimeError, match="delete it"):
        shapes.ensure_shapes_dataset(tmp_path, progress=False, **TINY)


def test_params_are_validated():
    with pytest.raises(ValueError, match="num_trian"):
        shapes.resolve_params(num_trian=3)
    with pytest.raises(ValueError, match="size_range"):
        shapes.resolve_params(size_range=(64, 48))


def test_content_sizes_classes_and_area_ranges(tmp_path):
    root = shapes.ensure_shapes_dataset(tmp_path, progress=False, num_train=40, num_val=0)
    coco = json.loads(shapes.split_paths(root, "train")[0].read_text())
    assert [c["name"] for c in coco["categories"]] == list(shapes.CLASS_NAMES)
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    assert all(160 <= w <= 256 and 160 <= h <= 256 for w, h in sizes.values())
    areas = []
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= W + 1e-6 and y + h <= H + 1e-6 and w > 0 and h > 0
        assert 1 <= a["category_id"] <= 8 and a["iscrowd"] == 0
        areas.append(a["area"])
    areas = np.array(areas)
    n = len(areas)
    assert n >= 80
    for frac in ((areas < 32 ** 2).mean(), ((areas >= 32 ** 2) & (areas <= 96 ** 2)).mean(),
                 (areas > 96 ** 2).mean()):
        assert 0.2 < frac < 0.5, frac
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=41)[1:]
    assert per_image.max() <= 6
    # Objects may touch but never hide each other: two boxes share at most 25 % of the smaller one.
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    for boxes in by_image.values():
        for i, (x1, y1, w1, h1) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[i + 1:]:
                iw = min(x1 + w1, x2 + w2) - max(x1, x2)
                ih = min(y1 + h1, y2 + h2) - max(y1, y2)
                if iw > 0 and ih > 0:
                    assert iw * ih <= 0.25 * min(w1 * h1, w2 * h2) + 1e-6


def test_build_dataset_on_shapes(tmp_path):
    kw = dict(img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, data_root=str(tmp_path),
              shapes_kwargs=TINY)
    tr = build_dataset("shapes", "train", train=True, **kw)
    va = build_dataset(default_val_spec("shapes"), "val", train=False, **kw)
    assert len(tr) == 4 and len(va) == 2
    assert tr.class_names == list(shapes.CLASS_NAMES) and tr.category_ids == list(range(1, 9))
    img, tgt = tr[0]
    assert img.shape == (3, 32, 32)
    img, tgt = va[1]
    assert img.dtype == np.uint8 and tgt["orig_size"] == img.shape[:2]
    with pytest.raises(ValueError, match="'train', 'val'"):
        build_dataset("shapes", "test", train=False, **kw)


def test_cli_writes_preview(tmp_path, capsys):
    shapes.main(["--out", str(tmp_path), "--num-train", "2", "--num-val", "1",
                 "--size-range", "48", "64"])
    assert len(list(tmp_path.glob("shapes-v*-preview.png"))) == 1
    assert "train: 2 images" in capsys.readouterr().out
