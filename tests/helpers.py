"""Small real artefacts shared by the tests (no tests in here): ``from tests.helpers import ...``.

* :func:`make_tiny_checkpoint`: a valid checkpoint of an untrained tiny model, written where asked;
* built once per test session and cached in a temporary folder: :func:`tiny_checkpoint`, its
  exports (:func:`tiny_exports`), a small COCO-format dataset (:func:`tiny_coco`), a perturbed raw
  graph (:func:`perturbed_raw`) and a "controlled" raw graph whose detections are known in
  advance (:func:`controlled_raw_graph`).
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import shutil
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

IMG_SIZE = 64
NUM_CLASSES = 3
GRID = 4  # the controlled model: a GRID x GRID grid of cells, one box per cell


@lru_cache(maxsize=None)
def _root() -> Path:
    """The session's artefact folder, created on first use and removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="fdet_tests_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def make_tiny_checkpoint(path: str | Path, *, model: str = "ssdlite_mobilenetv2", num_classes: int = 3,
                         img_size: int = 64, model_kwargs: dict | None = None, seed: int = 0,
                         score_threshold: float = 0.05, category_ids: list[int] | None = None) -> Path:
    """A valid checkpoint of an untrained (randomly initialised, seeded) tiny model.

    The class-logit bias is spread so that an untrained model still emits several detections per image.
    """
    import torch

    from distill.checkpoint import Checkpoint
    from distill.config import TrainConfig
    from distill.models import create_model

    torch.manual_seed(seed)
    kw = {"width_mult": 0.25, "min_ratio": 0.1, "max_ratio": 0.9} if model_kwargs is None else model_kwargs
    m = create_model(model, num_classes, **kw)
    with torch.no_grad():
        for layer in m.cls_head.layers:
            conv = layer[-1] if isinstance(layer, torch.nn.Sequential) else layer
            conv.weight.normal_(0, 0.3)
            conv.bias.uniform_(-1, 1)
    m.eval()
    cfg = TrainConfig.from_dict({"model": model, "model_kwargs": kw, "img_size": img_size,
                                 "score_threshold": score_threshold}, "make_tiny_checkpoint")
    Checkpoint.create(cfg, m, class_names=[f"class{i}" for i in range(1, num_classes + 1)],
                      category_ids=list(category_ids or [1 + 2 * i for i in range(num_classes)]),
                      best_map=0.0).save(path)
    return Path(path)


@lru_cache(maxsize=None)
def tiny_checkpoint(seed: int = 0) -> Path:
    """runN/best.pt: the tiny SSD-Lite checkpoint (3 classes, 64 px) shared by the runtime and benchmark tests."""
    return make_tiny_checkpoint(_root() / f"run{seed}" / "best.pt", num_classes=NUM_CLASSES, img_size=IMG_SIZE,
                                seed=seed, score_threshold=0.05)


@lru_cache(maxsize=None)
def tiny_exports(seed: int = 0) -> Path:
    """exports/<run> of the tiny checkpoint by export.onnx: model_raw/nms/trt/int8.onnx + sidecars."""
    from export.onnx import export_onnx

    out = _root() / f"run{seed}_exports"
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

    from runtime.metadata import read_sidecar, sha256_file, write_sidecar

    src = tiny_exports() / "model_raw.onnx"
    model = onnx.load(str(src))
    rng = np.random.default_rng(1)
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.size > 4:  # weights, biases, anchors: everything but scalars
            a = a + rng.standard_normal(a.shape).astype(np.float32) * scale * np.abs(a).mean()
            init.CopyFrom(numpy_helper.from_array(a.astype(np.float32), init.name))
    out = _root() / f"perturbed{scale}" / "model_raw.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    write_sidecar(out, dataclasses.replace(read_sidecar(src), onnx_sha256=sha256_file(out)))  # a consistent export
    return out


# ----------------------------------------------------------------------------------------------
# A small COCO dataset: images of different sizes with bright rectangles on a dark background.
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def tiny_coco(n: int = 6) -> str:
    """A 'coco:ANN:IMG_DIR' spec of ``n`` images, sizes 48..120 px, with the tiny model's classes."""
    root = _root() / "coco"
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

    out = _root() / "controlled"
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
