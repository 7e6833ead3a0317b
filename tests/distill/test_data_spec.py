"""Dataset spec parsing and build_dataset argument errors."""

import pytest

from distill.data import build_dataset, default_val_spec, parse_spec

KW = dict(img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, train=False)


@pytest.mark.parametrize("spec", ["", "foo", "coco:only_one", "coco::img", "voc:a:b:c",
                                  "shapes:test", "imagenet:x:y"])
def test_malformed_spec_lists_the_accepted_forms(spec):
    with pytest.raises(ValueError) as e:
        build_dataset(spec, "train", **KW)
    msg = str(e.value)
    assert "'shapes'" in msg and "coco:ANNOTATIONS.json:IMAGE_DIR" in msg and "voc:ROOT:SPLIT" in msg


def test_parse_spec():
    assert parse_spec("shapes") == ("shapes", ("",))
    assert parse_spec("shapes:val") == ("shapes", ("val",))
    assert parse_spec("coco:a.json:imgs") == ("coco", ("a.json", "imgs"))
    assert parse_spec("voc:/d/VOC2007:trainval") == ("voc", ("/d/VOC2007", "trainval"))


def test_default_val_spec():
    assert default_val_spec("shapes") == "shapes:val"
    assert default_val_spec("shapes:train") == "shapes:val"
    with pytest.raises(ValueError, match="--val-data"):
        default_val_spec("coco:/nowhere/custom.json:/nowhere/imgs")
    with pytest.raises(ValueError, match="--val-data"):
        default_val_spec("voc:/nowhere:trainval")
    with pytest.raises(ValueError, match="voc:ROOT:SPLIT"):
        default_val_spec("nonsense")


def test_on_bad_sample_value(tmp_path):
    with pytest.raises(ValueError, match="on_bad_sample"):
        build_dataset("shapes", "train", on_bad_sample="ignore", data_root=str(tmp_path), **KW)
