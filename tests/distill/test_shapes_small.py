"""The embedded dataset's small-objects variant (``--data shapes-small``): small boxes at the default input
sizes, deterministic, cached, reachable through every dataset spec reader."""
from __future__ import annotations

import json

import pytest

from distill.anchors import box_areas_px, input_boxes
from distill.data import build_dataset, default_val_spec, parse_spec, shapes
from runtime.datasets import open_eval_dataset

SMALL = {"num_train": 12, "num_val": 2}


def test_specs():
    assert parse_spec("shapes-small") == ("shapes-small", ("",))
    assert parse_spec("shapes-small:val") == ("shapes-small", ("val",))
    assert default_val_spec("shapes-small") == "shapes-small:val"
    with pytest.raises(ValueError, match="shapes-small"):
        parse_spec("shapes-small:test")


@pytest.mark.parametrize("img_size", [256, 300])   # the quick preset's and the config's default input
def test_most_boxes_are_small_at_the_default_input(tmp_path, img_size):
    ds = build_dataset("shapes-small", "train", img_size=img_size, mean=(0.5,) * 3, std=(0.25,) * 3, train=True,
                       augment="none", data_root=str(tmp_path), shapes_kwargs=SMALL)
    assert ds.name.startswith("shapes-small:train (shapes-small-v")
    assert all((r.width, r.height) == (512, 512) for r in ds.records)
    boxes, dropped = input_boxes(ds.records, img_size)
    assert dropped == 0 and len(boxes) >= 3 * SMALL["num_train"]
    small = float((box_areas_px(boxes, (img_size, img_size)) < 32 ** 2).float().mean())
    assert small > 0.6
    # the plain set is not: about a third of its boxes are small
    plain = build_dataset("shapes", "train", img_size=img_size, mean=(0.5,) * 3, std=(0.25,) * 3, train=True,
                          augment="none", data_root=str(tmp_path), shapes_kwargs=SMALL)
    pb, _ = input_boxes(plain.records, img_size)
    assert float((box_areas_px(pb, (img_size, img_size)) < 32 ** 2).float().mean()) < small - 0.2


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_cached(tmp_path):
    a = shapes.ensure_shapes_dataset(tmp_path / "a", progress=False, variant="shapes-small", seed=5, **SMALL)
    b = shapes.ensure_shapes_dataset(tmp_path / "b", progress=False, variant="shapes-small", seed=5, **SMALL)
    c = shapes.ensure_shapes_dataset(tmp_path / "a", progress=False, variant="shapes-small", seed=6, **SMALL)
    plain = shapes.ensure_shapes_dataset(tmp_path / "a", progress=False, seed=5, **SMALL)
    assert a.name == b.name and a.name.startswith("shapes-small-v") and c.name != a.name
    assert plain.name.startswith("shapes-v") and plain != a
    assert _tree(a) == _tree(b)                              # byte-identical images and json
    ann = shapes.split_paths(a, "train")[0]
    assert json.loads(ann.read_text())["info"]["params"]["objects"] == "small"
    mtime = ann.stat().st_mtime_ns
    assert shapes.ensure_shapes_dataset(tmp_path / "a", progress=False, variant="shapes-small", seed=5, **SMALL) == a
    assert ann.stat().st_mtime_ns == mtime                   # cached: not generated again
    ds = open_eval_dataset("shapes-small", data_root=tmp_path / "a", shapes_kwargs={**SMALL, "seed": 5})
    assert len(ds) == SMALL["num_val"] and ds.name.startswith("shapes-small:val")
    with pytest.raises(ValueError, match="--variant shapes-small"):
        open_eval_dataset("shapes-small", data_root=tmp_path / "none", shapes_kwargs=SMALL)
