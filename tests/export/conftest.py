"""One export of a tiny (64 px, untrained) checkpoint shared by the export tests, plus helpers."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


def save_images(folder: Path, images) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from tests.helpers import make_tiny_checkpoint
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", img_size=64, num_classes=3,
                                score_threshold=0.05)


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    from export.data import synthetic_images
    return save_images(tmp_path_factory.mktemp("calib"), synthetic_images(8, seed=1))


@pytest.fixture(scope="session")
def exported(tiny_ckpt, calib_dir, tmp_path_factory):
    """export_onnx(...) result for the tiny checkpoint, all graphs: raw, trt, nms, int8 and the
    TensorRT 11 variants trt_fp16 / trt_int8."""
    from export.onnx import export_onnx
    out = tmp_path_factory.mktemp("exports") / "tiny"
    res = export_onnx(tiny_ckpt, out, int8=True, fp16=True, trt_int8=True, calib_images=calib_dir, calib_count=8,
                      verify_images="synthetic", evaluate=False, latency_iters=3, threads=1, quiet=True)
    return res


@pytest.fixture(scope="session")
def model_and_meta(tiny_ckpt, exported):
    from distill.checkpoint import model_from_checkpoint
    from runtime.metadata import read_sidecar
    model = model_from_checkpoint(tiny_ckpt)
    return model, model.anchors(64), read_sidecar(exported["files"]["raw"]["onnx"])


@pytest.fixture(scope="session")
def images_nchw(model_and_meta):
    """Three preprocessed synthetic images with many overlapping objects (float32 [3, 3, 64, 64])."""
    from export.data import synthetic_images
    from runtime.preprocess import Preprocessor
    return Preprocessor.from_meta(model_and_meta[2])(synthetic_images(3, seed=7))[0]


@pytest.fixture(scope="session")
def empty_ckpt(tiny_ckpt, tmp_path_factory) -> Path:
    return no_object_checkpoint(tiny_ckpt, tmp_path_factory.mktemp("empty") / "best.pt")


def no_object_checkpoint(src: Path, dst: Path) -> Path:
    """Copy of a checkpoint whose class logits are constant (weights 0, background bias +20, objects
    -20): every object score is ~1e-17, far below any threshold."""
    import torch

    from distill.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    ck = load_checkpoint(src)
    ck.pop("path", None)
    model = model_from_checkpoint(ck)
    c1 = ck["num_classes"] + 1
    with torch.no_grad():
        for layer in model.cls_head.layers:
            conv = layer[-1] if isinstance(layer, torch.nn.Sequential) else layer
            conv.weight.zero_()
            b = conv.bias.view(-1, c1)       # channels a * (C + 1) + k, k = 0 is background
            b[:, 0] = 20.0
            b[:, 1:] = -20.0
    ck["model"] = model.state_dict()
    save_checkpoint(dst, ck)
    return dst

