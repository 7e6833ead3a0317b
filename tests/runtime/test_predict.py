"""runtime.predict: pictures with boxes drawn, one COCO results file, a summary; runtime.sources."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.draw import class_color
from runtime.predict import main
from runtime.sources import expand_source
from tests.helpers import GRID, controlled_raw_graph, image_with_bright_cell

ROOT = Path(__file__).resolve().parents[2]

# name -> (h, w, row, col) of the displayed picture and its bright cell.
CASES = {"a_jpeg.jpg": (96, 128, 1, 2), "b_alpha.png": (80, 120, 3, 0), "c_gray.png": (64, 160, 0, 3),
         "d_exif.jpg": (120, 72, 2, 1)}


def expected_box(h, w, row, col):
    return [col * w / GRID, row * h / GRID, (col + 1) * w / GRID, (row + 1) * h / GRID]


def write_mixed_folder(folder: Path) -> Path:
    """JPEG, PNG with alpha, greyscale PNG and an EXIF-rotated JPEG, each with one bright cell."""
    folder.mkdir(parents=True, exist_ok=True)
    pics = {name: image_with_bright_cell(*hwrc) for name, hwrc in CASES.items()}
    Image.fromarray(pics["a_jpeg.jpg"]).save(folder / "a_jpeg.jpg", quality=95)
    rgba = np.dstack([pics["b_alpha.png"], np.full(pics["b_alpha.png"].shape[:2], 90, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "b_alpha.png")
    Image.fromarray(pics["c_gray.png"][:, :, 0], "L").save(folder / "c_gray.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left; viewers (and load_image) turn it back
    Image.fromarray(pics["d_exif.jpg"]).transpose(Image.Transpose.ROTATE_90).save(folder / "d_exif.jpg", exif=exif,
                                                                                   quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_on_a_folder_of_mixed_images(tmp_path, capsys):
    src = write_mixed_folder(tmp_path / "photos")
    out = tmp_path / "preds"
    assert main(["--model", str(controlled_raw_graph()), "--source", str(src), "--out", str(out),
                 "--conf", "0.3", "--no-progress", "--line-width", "4"]) == 0
    line = capsys.readouterr().out
    assert "predict: 4 images, 4 detections" in line and "onnxruntime-cpu-raw" in line and "ms per image" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and summary["detections"] == 4 and summary["categories"][0]["name"] == "bright"
    preds = json.loads((out / "predictions.json").read_text())
    by_file = {Path(f["file_name"]).name: f for f in summary["files"]}
    assert sorted(by_file) == sorted(CASES)
    for name, (h, w, row, col) in CASES.items():
        f = by_file[name]
        assert (f["height"], f["width"]) == (h, w), name  # EXIF orientation applied
        (p,) = [p for p in preds if p["image_id"] == f["id"]]
        x0, y0, x1, y1 = expected_box(h, w, row, col)
        np.testing.assert_allclose(p["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=0.5, err_msg=name)
        assert p["category_id"] == 1
        pic = np.asarray(Image.open(out / f["output"]).convert("RGB")).astype(int)
        assert pic.shape == (h, w, 3), name
        xm = int((x0 + x1) / 2)  # the bottom edge (the label tag sits on the top one)
        assert np.abs(pic[int(y1) - 2, xm] - class_color(1)).max() < 60, f"{name}: no box outline at its bottom"
        far = (h - 1 if row < 2 else 0, w - 1 if col < 2 else 0)
        assert pic[far].max() < 40, f"{name}: drawing where there is no box"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["a_jpeg.jpg", "b_alpha.png", "c_gray.png", "d_exif.jpg", "predictions.json", "summary.json"])


def test_predictions_load_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    src = write_mixed_folder(tmp_path / "photos")
    out = tmp_path / "preds"
    assert main(["--model", str(controlled_raw_graph()), "--source", str(src / "*.png"), "--out", str(out),
                 "--no-progress", "--no-save"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source_kind"] == "glob" and summary["images"] == 2 and summary["pictures"] == []
    gt = COCO()
    gt.dataset = {"images": [{"id": f["id"], "height": f["height"], "width": f["width"]} for f in summary["files"]],
                  "annotations": [], "categories": summary["categories"]}
    gt.createIndex()
    dt = gt.loadRes(str(out / "predictions.json"))
    assert len(dt.getAnnIds()) == summary["detections"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json", "summary.json"]


def test_list_file_unreadable_image_and_name_clashes(tmp_path, capsys):
    a, b = tmp_path / "x", tmp_path / "y"
    a.mkdir(), b.mkdir()
    for folder in (a, b):
        Image.fromarray(image_with_bright_cell(64, 64, 0, 0)).save(folder / "same.png")
    (b / "broken.jpg").write_bytes(b"not a jpeg")
    lst = tmp_path / "list.txt"
    lst.write_text("# my pictures\nx/same.png\n\ny/same.png\ny/broken.jpg\n")
    out = tmp_path / "out"
    assert main(["--model", str(controlled_raw_graph()), "--source", str(lst), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "1 unreadable skipped" in captured.out and "broken.jpg" in captured.err
    assert sorted(p.name for p in out.glob("*.png")) == ["same.png", "same_2.png"]


@pytest.mark.parametrize("source, message", [
    ("missing_dir", "does not exist"), ("*.nothing", "matches no image"), ("notes.csv", "cannot tell what .csv is"),
])
def test_bad_sources_are_one_line_errors(tmp_path, capsys, monkeypatch, source, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.csv").write_text("a,b\n")
    assert main(["--model", str(controlled_raw_graph()), "--source", source, "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_out_must_be_a_folder(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(image_with_bright_cell(32, 32, 0, 0)).save(img)
    (tmp_path / "taken").write_text("x")
    assert main(["--model", str(controlled_raw_graph()), "--source", str(img), "--out", str(tmp_path / "taken")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_sources(tmp_path):
    write_mixed_folder(tmp_path)
    assert expand_source(str(tmp_path)).kind == "folder" and len(expand_source(str(tmp_path)).images) == 4
    assert [p.name for p in expand_source(str(tmp_path / "**" / "*.jpg")).images] == ["a_jpeg.jpg", "d_exif.jpg"]
    assert expand_source(str(tmp_path / "a_jpeg.jpg")).kind == "image"
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert expand_source(str(tmp_path / "clip.mp4")).video == tmp_path / "clip.mp4"
    (tmp_path / "l.txt").write_text("a_jpeg.jpg\nmissing.png\n")
    with pytest.raises(ValueError, match=r"l\.txt:2: image file not found"):
        expand_source(str(tmp_path / "l.txt"))


def test_video_in_annotated_video_out(tmp_path):
    pytest.importorskip("av")
    from runtime.video import VideoWriter, probe, read_frames

    with VideoWriter(tmp_path / "clip.mp4", fps=10) as w:
        for k in range(5):
            w.write(image_with_bright_cell(63, 85, k % GRID, 1))  # odd sizes: padded by the writer
    out = tmp_path / "preds"
    assert main(["--model", str(controlled_raw_graph()), "--source", str(tmp_path / "clip.mp4"), "--out", str(out),
                 "--no-progress", "--batch-size", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source_kind"] == "video" and summary["images"] == 5 and summary["detections"] == 5
    assert probe(out / "clip.mp4").frames in (0, 5) and len(list(read_frames(out / "clip.mp4"))) == 5
    assert {p["image_id"] for p in json.loads((out / "predictions.json").read_text())} == {1, 2, 3, 4, 5}


def test_video_without_pyav_says_how_to_install_it(tmp_path, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 16)
    code = ("import sys; sys.modules['av'] = None\n"
            "from runtime.predict import main\n"
            f"sys.exit(main(['--model', {str(controlled_raw_graph())!r}, '--source', {str(tmp_path / 'clip.mp4')!r}, "
            f"'--out', {str(tmp_path / 'o')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "video needs PyAV" in r.stderr and "pip install" in r.stderr, r.stderr[-1000:]
    assert "Traceback" not in r.stderr
