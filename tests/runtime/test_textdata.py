"""runtime/textdata.py: the text:DIR folder reader, the spec parser and image-level P / R / F."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.textdata import TextFolder, parse_text_spec, text_prf


def _image(path: Path, h: int = 20, w: int = 40, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _image(root / "text" / "b.png", value=10)
    (root / "text" / "b.txt").write_text("# x1 y1 x2 y2\n2 4 12 8\n\n20,0,40,10\n")
    _image(root / "text" / "a.jpg", value=20)          # its boxes come from boxes.json
    _image(root / "text" / "c.png", value=30)          # no boxes anywhere
    _image(root / "nontext" / "z.png", value=40)
    _image(root / "nontext" / "y.png", value=50)
    (root / "boxes.json").write_text(json.dumps({"text/a.jpg": [[0, 0, 10, 10]]}))
    return root


def test_spec_parser():
    assert parse_text_spec("text") == ("embedded", None)
    assert parse_text_spec("text:/some/dir") == ("folder", Path("/some/dir"))
    for bad in ("text:", "shapes", "txt:dir"):
        with pytest.raises(ValueError, match="text:DIR"):
            parse_text_spec(bad)


def test_folder_items_labels_and_boxes(folder: Path):
    ds = TextFolder(folder)
    assert [Path(p).name for p in ds.paths] == ["a.jpg", "b.png", "c.png", "y.png", "z.png"]
    assert ds.labels.tolist() == [1, 1, 1, 0, 0] and ds.has_boxes.tolist() == [True, True, False, True, True]
    image, info = ds[1]
    assert image.shape == (20, 40, 3) and image.dtype == np.uint8 and int(image[0, 0, 0]) == 10
    assert info["label"] == 1 and info["path"].endswith("b.png")
    assert info["boxes"].dtype == np.float32 and info["boxes"].tolist() == [[2, 4, 12, 8], [20, 0, 40, 10]]
    assert ds[0][1]["boxes"].tolist() == [[0, 0, 10, 10]]
    assert ds[2][1]["boxes"].shape == (0, 4) and ds[3][1]["boxes"].shape == (0, 4) and ds[3][1]["label"] == 0
    with pytest.raises(IndexError):
        ds[5]


def test_resize_scales_boxes(folder: Path):
    image, info = TextFolder(folder, img_size=(40, 20))[1]          # (H, W): heights x2, widths / 2
    assert image.shape == (40, 20, 3)
    assert info["boxes"].tolist() == [[1, 8, 6, 16], [10, 0, 20, 20]]


def test_missing_class_folder_is_one_line(tmp_path: Path):
    _image(tmp_path / "d" / "text" / "a.png")
    with pytest.raises(ValueError) as e:
        TextFolder(tmp_path / "d")
    assert "nontext/" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="does not exist"):
        TextFolder(tmp_path / "nowhere")


@pytest.mark.parametrize("name, content, match", [
    ("nontext/notes.md", "hello", "notes.md: not an image"),
    ("text/orphan.txt", "1 2 3 4", "orphan.txt: a box file without an image"),
    ("text/b.txt", "1 2 3\n", r"b.txt line 1"),
    ("text/b.txt", "5 5 1 1\n", r"b.txt line 1"),
    ("boxes.json", "{not json", "boxes.json"),
    ("boxes.json", json.dumps({"text/none.png": []}), "none.png"),
])
def test_bad_files_name_the_file(folder: Path, name: str, content: str, match: str):
    (folder / name).write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        TextFolder(folder)
    assert "\n" not in str(e.value)


def test_unreadable_image_names_the_file(folder: Path):
    (folder / "nontext" / "broken.png").write_bytes(b"not a png")
    ds = TextFolder(folder)
    with pytest.raises(ValueError, match="broken.png"):
        ds[3]


def test_prf_on_hand_counts():
    probs = np.array([0.9, 0.8, 0.4, 0.7, 0.1, 0.2, 0.5])
    labels = np.array([1, 1, 1, 0, 0, 0, 1])
    r = text_prf(probs, labels)                       # >= 0.5: tp 3 (0.9, 0.8, 0.5), fp 1 (0.7), fn 1, tn 2
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 1, 1, 2)
    assert r["precision"] == pytest.approx(75.0) and r["recall"] == pytest.approx(75.0)
    assert r["f1"] == pytest.approx(75.0) and r["accuracy"] == pytest.approx(500 / 7)
    r = text_prf(probs, labels, threshold=0.75)       # tp 2, fp 0, fn 2: P 100, R 50, F 66.67
    assert (r["precision"], r["recall"]) == (100.0, 50.0) and r["f1"] == pytest.approx(200 / 3)
    none = text_prf(np.zeros(3), np.array([1, 0, 1]))
    assert none["precision"] == 0.0 and none["f1"] == 0.0 and none["tn"] == 1
    with pytest.raises(ValueError):
        text_prf(np.zeros(3), np.array([1, 0]))
