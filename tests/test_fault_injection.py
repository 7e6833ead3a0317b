"""Hostile inputs and faults against every command: exit status, ONE error line naming the culprit, no
traceback, and nothing written before is changed (sha256 of every file around, before and after).

The commands run in this process (``main(argv)``, output captured); one subprocess checks the real exit status
of ``python -m``. A case is one line of :data:`CASES`: the command, its arguments (``{name}`` fields are paths
of the :class:`World` below, ``{out}`` the case's own output folder), the text the error line must contain,
and optionally the exit status (default 2) and a fault to inject (a function of ``monkeypatch`` and the world).
"""
from __future__ import annotations

import errno
import hashlib
import importlib
import json
import math
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "v1_run"
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "diamond"]  # the fixture's classes
TINY = '{"width_mult": 0.1, "extra_channels": [16, 16, 16, 16], "min_ratio": 0.1, "max_ratio": 0.9}'
# Training flags of a model that trains in about a second; the data comes with each case.
TRAIN = ("--preset smoke --model ssdlite_mobilenetv2 --model-kwargs {tiny} --device cpu --workers 0 --img-size 64 "
         "--batch-size 2 --epochs 1 --data-root {world}/data_root --val-data {good} --out {out}")
# Files a runtime command writes into --out: a failing run must leave the earlier ones as they were.
EARLIER = ("predictions.json", "summary.json", "metrics.json", "parity.json", "report.json")


# ----------------------------------------------------------------------------------------------
# The world: tiny good artefacts and the hostile ones, built once per module.
# ----------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb_png(path: Path, side: int = 100_000) -> Path:
    """A PNG whose header claims side x side pixels (10^10: over twice Pillow's MAX_IMAGE_PIXELS) in 100 bytes."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b""))
    return path


def write_coco(root: Path, n: int = 4, size: tuple[int, int] = (64, 64), boxes: bool = True,
               classes: list[str] = SHAPES) -> str:
    """``n`` dark images with one bright box each (class 1) and a COCO json: the spec ``coco:ANN:IMG_DIR``."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    h, w = size
    for i in range(n):
        a = np.full((h, w, 3), 30, np.uint8)
        a[h // 4:h // 2 + 1, w // 4:w // 2 + 1] = 220
        Image.fromarray(a).save(root / "img" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        if boxes:
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": 1.0,
                         "bbox": [w / 4, h / 4, max(w / 4, 1.0), max(h / 4, 1.0)]})
    cats = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return f"coco:{root / 'ann.json'}:{root / 'img'}"


def write_voc(root: Path, split_text: bytes) -> str:
    """A one-image VOC folder whose ``ImageSets/Main/train.txt`` holds ``split_text``: the spec."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><size><width>32</width><height>32</height></size><object><name>circle</name><bndbox>"
        "<xmin>4</xmin><ymin>4</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_bytes(split_text)
    return f"voc:{root}:train"


def _checkpoints(w: Path) -> None:
    import torch
    ck = torch.load(w / "ckpt.pt", weights_only=True)
    torch.save({**ck, "num_classes": 5}, w / "wrongcls.pt")          # weights of 8 classes, says 5
    torch.save({k: v for k, v in ck.items() if k != "config"}, w / "noconfig.pt")
    model = dict(ck["model"])
    model.pop(next(iter(model)))
    torch.save({**ck, "model": model}, w / "missingkey.pt")
    torch.save({"model": Image.new("RGB", (1, 1))}, w / "code.pt")   # a pickled Python object
    data = (w / "ckpt.pt").read_bytes()
    (w / "trunc.pt").write_bytes(data[:len(data) // 2])
    (w / "garbage.pt").write_bytes(b"\x00garbage" * 16)
    (w / "empty.pt").write_bytes(b"")


def build_world(w: Path) -> dict[str, str]:
    """Every input of the cases under ``w``; returns the ``{name}`` fields of the cases' arguments."""
    shutil.copy(FIXTURE / "plain" / "best.pt", w / "ckpt.pt")
    for name in ("model_nms.onnx", "model_nms.json"):
        shutil.copy(FIXTURE / "export" / name, w / name)
    _checkpoints(w)
    (w / "badsidecar").mkdir()
    shutil.copy(w / "model_nms.onnx", w / "badsidecar" / "model_nms.onnx")
    (w / "badsidecar" / "model_nms.json").write_text("{not json")
    (w / "garbage.onnx").write_bytes(b"not an onnx graph")
    f = {"world": str(w), "tiny": TINY, "good": write_coco(w / "good"), "nobox": write_coco(w / "nobox", boxes=False),
         "bomb_data": write_coco(w / "bombset"), "tiny1x1": write_coco(w / "tiny1x1", size=(1, 1)),
         "garbage_data": write_coco(w / "garbageset"), "empty_data": write_coco(w / "emptyset", n=0),
         "voc_latin1": write_voc(w / "voc_latin1", "a\n\xe9t\xe9\n".encode("latin-1")),
         "voc_empty": write_voc(w / "voc_empty", b"\n\n")}
    write_bomb_png(w / "bombset" / "img" / "0.png")
    for p in (w / "garbageset" / "img").iterdir():
        p.write_bytes(b"not an image")
    f["bomb"] = str(write_bomb_png(w / "bomb.png"))
    (w / "latin1").mkdir()
    (w / "latin1" / "ann.json").write_bytes('{"images": [], "categories": [{"id": 1, "name": "caf\xe9"}]}'
                                            .encode("latin-1"))
    f["latin1_data"] = f"coco:{w / 'latin1' / 'ann.json'}:{w / 'good' / 'img'}"
    malformed = json.loads((w / "good" / "ann.json").read_text())
    del malformed["annotations"][0]["bbox"]
    (w / "malformed.json").write_text(json.dumps(malformed))
    f["malformed_data"] = f"coco:{w / 'malformed.json'}:{w / 'good' / 'img'}"
    (w / "list_latin1.txt").write_bytes("caf\xe9.png\n".encode("latin-1"))
    (w / "empty.png").write_bytes(b"")
    (w / "afile").write_text("a file where a folder is expected")
    (w / "bad.yaml").write_text("epochs: [1\n")
    (w / "latin1.yaml").write_bytes("model: caf\xe9\n".encode("latin-1"))
    (w / "notarun").mkdir()
    from distill.presets import PRESETS
    from runtime.datasets import dataset_name, resolve_params
    smoke = PRESETS["smoke"]
    params = resolve_params(num_train=smoke["shapes_train"], num_val=smoke["shapes_val"])
    foreign = w / "data_root" / dataset_name(params)
    (foreign / "train").mkdir(parents=True)   # a folder of the cache's name that the generator did not write
    f["foreign_shapes"] = str(foreign)
    f.update({n: str(w / n) for n in ("ckpt.pt", "model_nms.onnx", "wrongcls.pt", "noconfig.pt", "missingkey.pt",
                                      "code.pt", "trunc.pt", "garbage.pt", "empty.pt", "garbage.onnx", "empty.png",
                                      "list_latin1.txt", "afile", "bad.yaml", "latin1.yaml", "notarun")})
    f["badsidecar"] = str(w / "badsidecar" / "model_nms.onnx")
    return {k.replace(".", "_"): v for k, v in f.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return build_world(tmp_path_factory.mktemp("world"))


# ----------------------------------------------------------------------------------------------
# Faults injected into a running command.
# ----------------------------------------------------------------------------------------------
def disk_full(monkeypatch, w) -> None:
    """Every atomic JSON write of predict fails as on a full disk."""
    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr("runtime.predict.write_json_atomic", full)


def permission_denied(monkeypatch, w) -> None:
    """The model file cannot be opened by this user (root ignores file modes, so the open fails here)."""
    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr("runtime.load.load_detector", denied)


def ctrl_c(monkeypatch, w) -> None:
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("runtime.load.load_detector", interrupted)


def no_cuda(monkeypatch, w) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


def read_only_folder(monkeypatch, w) -> None:
    """Creating the report folder fails as in a read-only file system."""
    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))
    monkeypatch.setattr(Path, "mkdir", read_only)


# ----------------------------------------------------------------------------------------------
# The cases: (id, command module, arguments, text the one error line contains[, status[, fault]]).
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    module: str
    args: str
    culprit: str
    status: int = 2
    fault: Callable | None = None


T, PRED, EVAL, PAR, BENCH = "distill.train", "runtime.predict", "runtime.evaluate", "runtime.parity", "benchmarks.run"
XO, XT, FDET = "export.onnx", "export.trt.cli", "fdet.cli"
PRED_ARGS = "--no-progress --out {out} --model"
CASES = [Case(*c) for c in [
    # training: values no run can use, folders, data
    ("train-batch-size-0", T, TRAIN + " --data {good} --batch-size 0", "--batch-size 0"),
    ("train-eval-every-0", T, TRAIN + " --data {good} --eval-every 0", "--eval-every 0"),
    ("train-epochs-0", T, TRAIN + " --data {good} --epochs 0", "--epochs 0"),
    ("train-epochs-negative", T, TRAIN + " --data {good} --epochs -3", "--epochs -3"),
    ("train-lr-nan", T, TRAIN + " --data {good} --lr nan", "--lr nan"),
    ("train-out-is-a-file", T, TRAIN.replace("{out}", "{afile}") + " --data {good}", "{afile}"),
    ("train-out-under-a-file", T, TRAIN.replace("{out}", "{afile}/run") + " --data {good}", "{afile}"),
    ("train-device-cuda-without-cuda", T, TRAIN + " --data {good} --device cuda", "--device cuda", 2, no_cuda),
    ("train-data-smaller-than-a-batch", T, TRAIN + " --data {good} --batch-size 8",
     "4 training images < --batch-size 8"),
    ("train-abbreviated-flag", T, TRAIN + " --data {good} --batc 2", "--batc"),
    ("train-unknown-flag", T, TRAIN + " --data {good} --bogus 1", "--bogus"),
    ("train-bad-model-kwargs-json", T, TRAIN.replace("{tiny}", "{{bad") + " --data {good}", "model_kwargs"),
    ("train-decompression-bomb", T, TRAIN + " --data {bomb_data}", "bombset/img/0.png"),
    ("train-every-image-unreadable-skip", T, TRAIN + " --data {garbage_data} "
     "--on-bad-sample skip", "none of the 4 images is readable"),
    ("train-split-not-utf8", T, TRAIN + " --data {voc_latin1}", "voc_latin1/ImageSets/Main/train.txt"),
    ("train-split-empty", T, TRAIN + " --data {voc_empty}", "voc_empty/ImageSets/Main/train.txt"),
    ("train-coco-no-images", T, TRAIN + " --data {empty_data}", "emptyset/ann.json"),
    ("train-coco-not-utf8", T, TRAIN + " --data {latin1_data}", "latin1/ann.json"),
    ("train-config-bad-yaml", T, TRAIN + " --data {good} --config {bad_yaml}", "{bad_yaml}"),
    ("train-config-not-utf8", T, TRAIN + " --data {good} --config {latin1_yaml}", "{latin1_yaml}"),
    ("train-config-is-a-folder", T, TRAIN + " --data {good} --config {notarun}", "{notarun}"),
    ("train-init-weights-garbage", T, TRAIN + " --data {good} --init-weights {garbage_pt}", "{garbage_pt}"),
    ("train-init-weights-do-not-fit", T, TRAIN + " --data {good} --init-weights {missingkey_pt}", "{missingkey_pt}"),
    ("train-teacher-pickled-code", T, TRAIN + " --data {good} --kd soft --teacher {code_pt}", "{code_pt}"),
    ("train-resume-not-a-run", T, "--resume {notarun}", "{notarun}"),
    ("train-shapes-cache-not-ours", T, TRAIN + " --data shapes --val-data shapes:val", "{foreign_shapes}"),
    # export
    ("export-garbage-checkpoint", XO, "--checkpoint {garbage_pt} --out {out}", "{garbage_pt}"),
    ("export-pickled-code-checkpoint", XO, "--checkpoint {code_pt} --out {out}", "{code_pt}"),
    ("export-truncated-checkpoint", XO, "--checkpoint {trunc_pt} --out {out}", "{trunc_pt}"),
    ("export-empty-checkpoint", XO, "--checkpoint {empty_pt} --out {out}", "{empty_pt}"),
    ("export-weights-do-not-fit", XO, "--checkpoint {wrongcls_pt} --out {out}", "{wrongcls_pt}"),
    ("export-weights-missing-a-tensor", XO, "--checkpoint {missingkey_pt} --out {out}", "{missingkey_pt}"),
    ("export-checkpoint-without-config", XO, "--checkpoint {noconfig_pt} --out {out}", "{noconfig_pt}"),
    ("export-missing-checkpoint", XO, "--checkpoint {world}/nothing.pt --out {out}", "nothing.pt"),
    ("export-abbreviated-flag", XO, "--check {ckpt_pt} --out {out}", "--check"),
    ("trt-missing-onnx", XT, "--onnx {world}/nothing.onnx", "nothing.onnx"),
    # runtime: predict
    ("predict-decompression-bomb", PRED, PRED_ARGS + " {model_nms_onnx} --source {bomb}", "{bomb}"),
    ("predict-empty-image-file", PRED, PRED_ARGS + " {model_nms_onnx} --source {empty_png}", "{empty_png}"),
    ("predict-missing-source", PRED, PRED_ARGS + " {model_nms_onnx} --source {world}/nothing.jpg", "nothing.jpg"),
    ("predict-list-not-utf8", PRED, PRED_ARGS + " {model_nms_onnx} --source {list_latin1_txt}", "{list_latin1_txt}"),
    ("predict-garbage-checkpoint", PRED, PRED_ARGS + " {garbage_pt} --source {bomb}", "{garbage_pt}"),
    ("predict-checkpoint-without-config", PRED, PRED_ARGS + " {noconfig_pt} --source {bomb}", "{noconfig_pt}"),
    ("predict-weights-do-not-fit", PRED, PRED_ARGS + " {wrongcls_pt} --source {bomb}", "{wrongcls_pt}"),
    ("predict-garbage-onnx", PRED, PRED_ARGS + " {garbage_onnx} --source {bomb}", "garbage"),
    ("predict-sidecar-not-json", PRED, PRED_ARGS + " {badsidecar} --source {bomb}", "badsidecar/model_nms.json"),
    ("predict-out-under-a-file", PRED, "--out {afile}/preds --model {model_nms_onnx} --source {world}/good/img",
     "{afile}"),
    ("predict-device-cuda-without-cuda", PRED, PRED_ARGS + " {ckpt_pt} --source {bomb} --device cuda", "'cuda'", 2,
     no_cuda),
    ("predict-batch-size-0", PRED, PRED_ARGS + " {model_nms_onnx} --source {world}/good/img --batch-size 0",
     "--batch-size"),
    ("predict-disk-full", PRED, PRED_ARGS + " {model_nms_onnx} --source {world}/good/img",
     "out/predictions.json: No space left on device (the disk is full", 2,
     disk_full),
    ("predict-permission-denied", PRED, PRED_ARGS + " {model_nms_onnx} --source {world}/good/img",
     "model_nms.onnx: Permission denied", 2, permission_denied),
    ("predict-ctrl-c", PRED, PRED_ARGS + " {model_nms_onnx} --source {world}/good/img", "interrupted", 130, ctrl_c),
    ("predict-abbreviated-flag", PRED, PRED_ARGS.replace("progress", "prog") + " {model_nms_onnx} --source {bomb}",
     "--no-prog"),
    # runtime: evaluate, parity
    ("evaluate-decompression-bomb", EVAL, "--no-progress --model {model_nms_onnx} --data {bomb_data} --out {out}",
     "bombset/img/0.png"),
    ("evaluate-split-not-utf8", EVAL, "--no-progress --model {model_nms_onnx} --data {voc_latin1} --out {out}",
     "voc_latin1/ImageSets/Main/train.txt"),
    ("evaluate-coco-no-images", EVAL, "--no-progress --model {model_nms_onnx} --data {empty_data} --out {out}",
     "emptyset/ann.json"),
    ("evaluate-coco-entry-without-bbox", EVAL, "--no-progress --model {model_nms_onnx} --data {malformed_data} "
     "--out {out}", "malformed.json"),
    ("evaluate-checkpoint-without-config", EVAL, "--no-progress --model {noconfig_pt} --data {good} --out {out}",
     "{noconfig_pt}"),
    ("evaluate-read-only-folder", EVAL, "--no-progress --model {model_nms_onnx} --data {good} --out {out}/new",
     "Read-only file system", 2, read_only_folder),
    ("parity-reference-weights-do-not-fit", PAR, "--reference {wrongcls_pt} --candidates {model_nms_onnx} "
     "--data {good} --out {out}", "{wrongcls_pt}"),
    ("parity-exports-not-a-folder", PAR, "--reference {ckpt_pt} --exports {afile} --out {out}", "{afile}"),
    # benchmark
    ("bench-weights-do-not-fit", BENCH, "--checkpoint {wrongcls_pt} --data {good} --out {out}", "{wrongcls_pt}"),
    ("bench-coco-no-images", BENCH, "--checkpoint {ckpt_pt} --data {empty_data} --out {out}", "emptyset/ann.json"),
    ("bench-missing-checkpoint", BENCH, "--checkpoint {world}/nothing.pt --data {good} --out {out}", "nothing.pt"),
    ("bench-abbreviated-flag", BENCH, "--check {ckpt_pt} --out {out}", "--check"),
    # the one command
    ("fdet-predict-pickled-code", FDET, "predict " + PRED_ARGS + " {code_pt} --source {bomb}", "{code_pt}"),
    ("fdet-train-batch-size-0", FDET, "train " + TRAIN + " --data {good} --batch-size 0", "--batch-size 0"),
    ("fdet-export-truncated-checkpoint", FDET, "export --checkpoint {trunc_pt} --out {out}", "{trunc_pt}"),
    ("fdet-unknown-subcommand", FDET, "predcit --model x", "predcit"),
]]


def _sha256_tree(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def run_command(module: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """``module.main(argv)`` in this process: (exit status, stdout, stderr); argparse's exits count too."""
    main = importlib.import_module(module).main
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return int(status or 0), out, err


def error_lines(err: str) -> list[str]:
    """The lines of stderr that report the failure (progress bars and warnings left aside)."""
    lines = [ln.strip() for chunk in err.split("\n") for ln in chunk.split("\r")]
    return [ln for ln in lines if "error:" in ln or ln.startswith("interrupted") or ": interrupted" in ln]


def argv_of(case: Case, world: dict[str, str], out: Path) -> list[str]:
    fields = {**world, "out": str(out)}
    return [a.format(**fields) for a in case.args.split(" ")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_gets_one_line(case, world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    if not case.module.startswith(("distill", "fdet")):
        out.mkdir()
        for name in EARLIER:  # what an earlier run wrote there
            (out / name).write_text(json.dumps({"earlier": name}))
    if case.fault is not None:
        case.fault(monkeypatch, world)
    monkeypatch.delenv("FDET_DEBUG", raising=False)
    before = _sha256_tree(Path(world["world"]), tmp_path)
    status, stdout, stderr = run_command(case.module, argv_of(case, world, out), capsys)
    monkeypatch.undo()
    culprit = case.culprit.format(**world)
    lines = error_lines(stderr)
    assert "Traceback" not in stdout + stderr, stderr
    assert status == case.status, (status, stderr)
    assert len(lines) == 1 and culprit in lines[0], stderr
    assert "internal error" not in lines[0] and "weights_only=False" not in lines[0]
    after = _sha256_tree(Path(world["world"]), tmp_path)
    assert {k: after.get(k) for k in before} == before, "an earlier file changed or went missing"


def test_at_least_forty_cases_across_every_command():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert {c.module for c in CASES} == {T, PRED, EVAL, PAR, BENCH, XO, XT, FDET}


# ----------------------------------------------------------------------------------------------
# Hostile inputs a run survives: it trains, and a warning names the culprit.
# ----------------------------------------------------------------------------------------------
def _train(world: dict[str, str], out: Path, extra: str) -> int:
    from distill.train import main
    return main(argv_of(Case("", T, TRAIN + " " + extra, ""), world, out))


def test_a_1x1_image_trains_without_the_iou_crop(world, tmp_path):
    with pytest.warns(UserWarning, match=r"tiny1x1/img/\d\.png\) is 1x1 px"):
        assert _train(world, tmp_path / "run", "--data {tiny1x1} --augment ssd") == 0
    assert (tmp_path / "run" / "last.pt").is_file()


def test_a_decompression_bomb_is_skipped_and_counted(world, tmp_path):
    with pytest.warns(UserWarning, match=r"bombset/img/0\.png.*decompression bomb"):
        assert _train(world, tmp_path / "run", "--data {bomb_data} --on-bad-sample skip") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["bad_samples"]["train"] == {"unreadable_image": 1}


def test_a_dataset_without_boxes_says_why_there_is_no_best_checkpoint(world, tmp_path):
    with pytest.warns(UserWarning, match="no boxes at all") as record:
        assert _train(world, tmp_path / "run", "--data {nobox} --val-data {nobox}") == 0
    assert any("no epoch is kept as best.pt" in str(w.message) for w in record)
    run = tmp_path / "run"
    assert not (run / "best.pt").exists() and (run / "last.pt").is_file()
    assert math.isnan(json.loads((run / "summary.json").read_text())["mAP"])


def test_a_damaged_shapes_cache_is_generated_again(tmp_path):
    from distill.data.shapes import ensure_shapes_dataset
    kw = dict(num_train=2, num_val=1, size_range=(32, 40), progress=False)
    root = ensure_shapes_dataset(tmp_path, **kw)
    good = (root / "annotations" / "instances_train.json").read_bytes()
    for damage in (lambda: (root / "annotations" / "instances_train.json").write_text('{"images": [tru'),
                   lambda: (root / "val" / "000000.png").unlink(),
                   lambda: (root / "annotations" / "instances_val.json").unlink()):
        damage()
        with pytest.warns(UserWarning, match=f"{root.name} is damaged"):
            assert ensure_shapes_dataset(tmp_path, **kw) == root
        assert (root / "annotations" / "instances_train.json").read_bytes() == good
        assert (root / "val" / "000000.png").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # nothing left aside


# ----------------------------------------------------------------------------------------------
# The wrapper itself: --debug, FDET_DEBUG, bugs, every parser, the real exit status.
# ----------------------------------------------------------------------------------------------
def _traceback_shown(main, argv: list[str], capsys) -> bool:
    """Whether ``main(argv)`` let its error through (with its traceback) or printed the traceback itself."""
    try:
        main(argv)
    except ValueError:
        return True
    return "Traceback (most recent call last)" in capsys.readouterr().err


def test_debug_flag_and_variable_let_the_traceback_through(world, tmp_path, capsys, monkeypatch):
    from fdet.cli import main as fdet
    from runtime.predict import main
    argv = ["--model", world["garbage_pt"], "--source", world["bomb"], "--out", str(tmp_path / "o")]
    monkeypatch.delenv("FDET_DEBUG", raising=False)
    assert _traceback_shown(main, argv + ["--debug"], capsys)
    assert _traceback_shown(fdet, ["--debug", "predict", *argv], capsys)
    assert not _traceback_shown(fdet, ["predict", *argv], capsys)
    monkeypatch.setenv("FDET_DEBUG", "1")
    assert _traceback_shown(main, argv, capsys)


def test_a_bug_is_one_internal_error_line_with_status_1(capsys):
    from runtime.cli import command

    @command("demo")
    def broken(argv=None):
        return {}["x"] if argv else 1 / 0

    assert broken([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("internal error: ZeroDivisionError") and "--debug" in err


@pytest.mark.parametrize("error, text", [
    (OSError(errno.ENOSPC, "No space left on device", "/r/x.json"), "/r/x.json: No space left on device (the disk"),
    (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid"), "not UTF-8 text: byte 0xe9 at position 0"),
    (json.JSONDecodeError("Expecting value", "{x", 1), "invalid JSON at line 1 column 2"),
    (KeyError("bbox"), "missing key 'bbox'"),
    (RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                  "last):\n  File \"x.py\", line 1\nRuntimeError: none of the 4 images is readable"),
     "none of the 4 images is readable"),
])
def test_errors_are_explained_in_one_line(error, text):
    from runtime.cli import explain
    line = explain(error)
    assert line is not None and "\n" not in line and text in line and "Traceback" not in line


def test_every_command_rejects_abbreviated_flags():
    modules = ["distill.train", "distill.ablate", "distill.kd.diagnose", "export.onnx", "export.trt.cli",
               "runtime.predict", "runtime.evaluate", "runtime.parity", "benchmarks.run", "export.openvino"]
    for name in modules:
        mod = importlib.import_module(name)
        parser = mod.build_parser() if hasattr(mod, "build_parser") else None
        if name == "distill.train":
            from distill.config import build_parser as parser_of
            parser = parser_of()
        assert parser is not None and parser.allow_abbrev is False, name
        assert hasattr(mod.main, "__wrapped_main__"), f"{name}.main does not run through runtime.cli.command"
        assert "--debug" in parser.format_help(), f"{name}: --debug is not in --help"


def test_a_usage_error_is_one_line_without_the_usage_block(capsys):
    from export.onnx import main

    with pytest.raises(SystemExit) as stop:
        main(["--checkpoint"])
    assert stop.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: python -m export.onnx: argument --checkpoint"), err


def test_the_real_process_exits_2_with_one_line_and_no_traceback(world, tmp_path):
    argv = [sys.executable, "-m", "runtime.predict", "--model", world["garbage_onnx"], "--source", world["bomb"],
            "--out", str(tmp_path / "o"), "--no-progress"]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(error_lines(r.stderr)) == 1, r.stderr
    r = subprocess.run(argv + ["--debug"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode in (1, 2) and "Traceback (most recent call last)" in r.stderr
