"""Artefacts shared by the runtime and benchmark tests (no tests in here).

Built once per test session and cached in a temporary folder: a tiny checkpoint, its exports,
a small COCO-format dataset, and a "controlled" raw graph whose detections are known in advance.
Import with ``sys.path.insert(0, str(Path(__file__).parent))`` (tests/runtime is not a package).
"""
from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py

IMG_SIZE = 64
NUM_CLASSES = 3
GRID = 4  # the controlled model: a GRID x GRID grid of cells, one box per cell

_ROOT = Path(tempfile.mkdtemp(prefix="fdet_runtime_tests_"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Import into a test module to run its PyTorch code on one thread: on a 2-core machine shared
    with other jobs, PyTorch's OpenMP threads wait on each other (100x slower); speed is not
    what these tests measure."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@lru_cache(maxsize=None)
def tiny_checkpoint(seed: int = 0) -> Path:
    from helpers import make_tiny_checkpoint

    return make_tiny_checkpoint(_ROOT / f"run{seed}" / "best.pt", num_classes=NUM_CLASSES, img_size=IMG_SIZE,
                                seed=seed, score_threshold=0.05)


@lru_cache(maxsize=None)
def tiny_exports(seed: int = 0) -> Path:
    """exports/<run> of the tiny checkpoint by export.onnx: model_raw/nms/trt/int8.onnx + sidecars."""
    from export.onnx import export_onnx

    out = _ROOT / f"run{seed}_exports"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = export_onnx(tiny_checkpoint(seed), out, int8=True, calib_images=coco_image_dir(), calib_count=6,
                        verify_images="synthetic", evaluate=False, latency_iters=1, quiet=True)
    assert r["ok"], r.get("report_path")
    return out


@lru_cache(maxsize=None)
def perturbed_raw(scale: float = 0.5) -> Path:
    """model_raw.onnx of the tiny run with noise on every weight (a broken export parity must flag)."""
    import onnx
    from onnx import numpy_helper

    from runtime.metadata import read_sidecar, write_sidecar

    src = tiny_exports() / "model_raw.onnx"
    model = onnx.load(str(src))
    rng = np.random.default_rng(1)
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.size > 4:  # weights, biases, anchors: everything but scalars
            a = a + rng.standard_normal(a.shape).astype(np.float32) * scale * np.abs(a).mean()
            init.CopyFrom(numpy_helper.from_array(a.astype(np.float32), init.name))
    out = _ROOT / f"perturbed{scale}" / "model_raw.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    write_sidecar(out, read_sidecar(src))
    return out


# ----------------------------------------------------------------------------------------------
# A small COCO dataset: images of different sizes with bright rectangles on a dark background.
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def tiny_coco(n: int = 6) -> str:
    """A 'coco:ANN:IMG_DIR' spec of ``n`` images, sizes 48..120 px, with the tiny model's classes."""
    root = _ROOT / "coco"
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        h, w = int(rng.integers(48, 120)), int(rng.integers(48, 120))
        img = np.full((h, w, 3), 30, np.uint8)
        for _ in range(2):
            bw, bh = int(rng.integers(10, w // 2)), int(rng.integers(10, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y:y + bh, x:x + bw] = rng.integers(120, 255, 3)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": [1, 3, 5][int(rng.integers(0, 3))],
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
        name = f"{i:03d}.png"
        Image.fromarray(img).save(img_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    cats = [{"id": c, "name": f"class{k + 1}"} for k, c in enumerate([1, 3, 5])]
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return f"coco:{ann}:{img_dir}"


def coco_image_dir() -> str:
    return tiny_coco().split(":")[2]


# ----------------------------------------------------------------------------------------------
# The controlled model: boxes are the cells of a GRID x GRID grid; the object score of a cell is
# a steep function of its mean brightness, so a bright rectangle covering exactly one cell is
# detected there (class 1) and nowhere else.
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def controlled_raw_graph() -> Path:
    import torch

    from runtime.metadata import ModelMeta, NMSConfig, write_sidecar

    class Cells(torch.nn.Module):
        def forward(self, x):  # x [B, 3, H, W] normalised with mean 0, std 1 -> pixel / 255
            b = x.shape[0]
            cell = torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), GRID)  # [B, 1, G, G]
            bright = cell.reshape(b, GRID * GRID, 1)
            logit_obj = (bright - 0.5) * 40.0
            zeros = torch.zeros_like(logit_obj)
            scores = torch.softmax(torch.cat([zeros, logit_obj, zeros - 20.0], -1), -1)  # bg, class1, class2
            ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
            cells = torch.stack([xs, ys, xs + 1, ys + 1], -1).reshape(1, GRID * GRID, 4).float() / GRID
            boxes = cells.expand(b, -1, -1) + 0.0 * bright
            return boxes, scores

    out = _ROOT / "controlled"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model_raw.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Cells(), torch.zeros(1, 3, IMG_SIZE, IMG_SIZE), str(path), input_names=["images"],
                          output_names=["boxes", "scores"], dynamic_axes={"images": {0: "batch"}},
                          opset_version=17, dynamo=False)
    meta = ModelMeta(model_name="cells", class_names=["bright", "never"], category_ids=[1, 2],
                     input_size=(IMG_SIZE, IMG_SIZE), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                     nms=NMSConfig(score_threshold=0.5, iou_threshold=0.5, max_detections=10), graph="raw")
    write_sidecar(path, meta)
    return path


def image_with_bright_cell(h: int, w: int, row: int, col: int) -> np.ndarray:
    """An h x w image, dark except the cell (row, col) of the GRID x GRID grid, which is white."""
    img = np.zeros((h, w, 3), np.uint8)
    y0, y1 = round(row * h / GRID), round((row + 1) * h / GRID)
    x0, x1 = round(col * w / GRID), round((col + 1) * w / GRID)
    img[y0:y1, x0:x1] = 255
    return img


def same_detections(a: dict, b: dict, iou: float = 0.95, score_atol: float = 1e-4) -> bool:
    """Same detections up to the order of equal scores: every one matched at IoU >= iou, same class."""
    from runtime.parity import agreement

    r = agreement([a], [b], iou)
    return r["matched"] == r["reference_detections"] == r["candidate_detections"] and r["max_score_diff"] <= score_atol
