"""Non-square network inputs (``--img-size HxW``): the config, the training boxes, a training run and its export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from distill.config import TrainConfig, build_parser, resolve
from distill.presets import PRESETS
from runtime.sizes import as_hw, size_text, size_value

H, W = 64, 96
TINY_KW = {"width_mult": 0.25, "min_ratio": 0.1, "max_ratio": 0.9}


def test_img_size_parsing():
    flat = vars(build_parser().parse_args(["--img-size", "384x512"]))
    assert resolve(flat, PRESETS).data.img_size == [384, 512]          # H first: 384 high, 512 wide
    assert TrainConfig.from_dict({"img_size": 320}).data.img_size == 320  # square runs keep their int
    assert TrainConfig.from_dict({"img_size": "96x96"}).data.img_size == 96
    assert TrainConfig.from_dict({"data": {"img_size": [64, 96]}}).data.img_size == [64, 96]
    assert as_hw(320) == (320, 320) and as_hw("384x512") == (384, 512) and as_hw([64, 96]) == (64, 96)
    assert size_value((96, 64)) == [96, 64] and size_text([64, 96]) == "64x96" and size_text(300) == "300"
    for bad in ("384x", "x512", "0x5", "1x2x3", "abc", 0, [3, 4, 5], 2.5):
        with pytest.raises(ValueError) as e:
            TrainConfig.from_dict({"img_size": bad})
        msg = str(e.value)
        assert "\n" not in msg and "img_size" in msg and "384x512" in msg, msg


def test_config_yaml_round_trip(tmp_path):
    from distill.config import load_yaml, save_yaml
    cfg = TrainConfig.from_dict({"img_size": "64x96"})
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(tmp_path / "c.yaml").data.img_size == [64, 96]


@pytest.mark.parametrize("resize,expected", [
    ("stretch", [0.1, 0.1, 0.6, 0.6]),
    # letterbox 100x200 -> 64x96: scale 0.48, fitted 48x96, 8 px bars above and below
    ("letterbox", [20 * 0.48 / 96, (10 * 0.48 + 8) / 64, 120 * 0.48 / 96, (60 * 0.48 + 8) / 64]),
])
def test_train_boxes_normalised_by_their_own_side(tmp_path, resize, expected):
    from distill.data.dataset import DetectionDataset
    from runtime.annotations import ImageRecord
    Image.fromarray(np.full((100, 200, 3), 90, np.uint8)).save(tmp_path / "a.png")
    rec = ImageRecord(image_id=1, file_name="a.png", path=tmp_path / "a.png", width=200, height=100,
                      boxes=np.array([[20, 10, 120, 60]], np.float32), labels=np.array([1]),
                      ignore=np.array([False]), areas=np.array([5000.0], np.float32), ann_ids=[1])
    ds = DetectionDataset([rec], ["thing"], [1], train=True, img_size=[H, W], mean=(0.5,) * 3, std=(0.25,) * 3,
                          augment="none", resize_mode=resize)
    image, target = ds[0]
    assert tuple(image.shape) == (3, H, W)
    torch.testing.assert_close(target["boxes"], torch.tensor([expected]), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def nonsquare_run(tmp_path_factory):
    """A one-epoch smoke run at 64x96 (H x W): its folder."""
    import distill.train as train_mod
    root = tmp_path_factory.mktemp("nonsquare")
    cfg = resolve({"preset": "smoke", "model": "ssdlite_mobilenetv2", "model_kwargs": TINY_KW, "img_size": "64x96",
                   "data_root": str(root / "data"), "out": str(root / "run"), "device": "cpu", "workers": 0}, PRESETS)
    train_mod.fit(cfg)
    return root / "run"


def test_training_at_a_nonsquare_input(nonsquare_run):
    from distill.checkpoint import Checkpoint, meta_from_checkpoint
    summary = json.loads((nonsquare_run / "summary.json").read_text())
    assert summary["img_size"] == [H, W] and np.isfinite(summary["mAP"]) and summary["GFLOPs"] > 0
    ck = Checkpoint.load(nonsquare_run / "best.pt")
    assert ck.config["data"]["img_size"] == [H, W]
    assert meta_from_checkpoint(ck).input_size == (H, W)


def test_export_of_a_nonsquare_checkpoint(nonsquare_run, tmp_path):
    import onnx

    from distill.checkpoint import model_from_checkpoint
    from export.onnx import export_onnx
    from runtime.metadata import read_sidecar
    res = export_onnx(nonsquare_run / "best.pt", tmp_path / "exp", verify_images="synthetic", evaluate=False,
                      latency_iters=1, threads=1, quiet=True)
    assert res["ok"], res["report"]                     # every graph's detections match PyTorch's
    model = model_from_checkpoint(nonsquare_run / "best.pt")
    n_anchors = int(model.anchors((H, W)).shape[0])
    per_cell = n_anchors // sum(h * w for h, w in model.feature_sizes((H, W)))
    assert n_anchors == per_cell * sum(h * w for h, w in model.feature_sizes((H, W)))
    assert n_anchors not in (int(model.anchors(H).shape[0]), int(model.anchors(W).shape[0]))
    assert res["report"]["num_anchors"] == n_anchors
    for graph, files in res["files"].items():
        g = onnx.load(files["onnx"])
        dims = [d.dim_value or d.dim_param for d in g.graph.input[0].type.tensor_type.shape.dim]
        assert dims[1:] == [3, H, W] and isinstance(dims[0], str), (graph, dims)
        assert read_sidecar(files["onnx"]).input_size == (H, W), graph
    raw = onnx.load(res["files"]["raw"]["onnx"])
    assert raw.graph.output[0].type.tensor_type.shape.dim[1].dim_value == n_anchors


def test_runtime_matches_pytorch_on_a_nonsquare_input(nonsquare_run, tmp_path):
    """The exported NMS graph and the checkpoint, each through the runtime's preprocessing, on images of
    other shapes: the same detections in original-image pixels."""
    from export.data import synthetic_images
    from export.onnx import export_graphs
    from runtime.load import load_detector
    from runtime.matching import match_by_iou
    export_graphs(nonsquare_run / "best.pt", tmp_path, log=lambda *a: None)
    images = synthetic_images(3, seed=3, size_range=(70, 180))
    with load_detector(tmp_path / "model_nms.onnx") as onnx_det, load_detector(nonsquare_run / "best.pt") as pt_det:
        k = pt_det.meta.nms.max_detections
        for got, ref in zip( onnx_det(images), pt_det(images)):
            assert len(ref["boxes"]) and len(got["boxes"]) == len(ref["boxes"])
            m = match_by_iou(ref, got, iou_threshold=0.99, max_detections=k)
            assert (m != -1).all(), m
            i = np.flatnonzero(m >= 0)
            np.testing.assert_allclose(got["boxes"][m[i]], ref["boxes"][i], atol=0.05)
            np.testing.assert_allclose(got["scores"][m[i]], ref["scores"][i], atol=1e-4)


def test_a_large_nonsquare_input_trains_and_exports(tmp_path):
    """512+ px, not square (512 high, 640 wide): a run trains at it, and every exported graph takes that input and
    matches PyTorch, with the anchors of the actual input -- what a user with small objects raises the size to."""
    import distill.train as train_mod
    from distill.checkpoint import model_from_checkpoint
    from export.onnx import export_onnx
    size = (512, 640)
    cfg = resolve({"preset": "smoke", "model": "ssdlite_mobilenetv2", "model_kwargs": TINY_KW, "img_size": "512x640",
                   "shapes_train": 8, "shapes_val": 4, "data_root": str(tmp_path / "data"), "out": str(tmp_path / "run"),
                   "device": "cpu", "workers": 0}, PRESETS)
    summary = train_mod.fit(cfg)
    assert summary["img_size"] == list(size) and np.isfinite(summary["mAP"])
    model = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert model.feature_sizes(size)[0] == (32, 40)           # stride 16 for SSD-Lite's first map
    res = export_onnx(tmp_path / "run" / "best.pt", tmp_path / "exp", verify_images="synthetic", evaluate=False,
                      latency_iters=1, threads=1, quiet=True)
    assert res["ok"], res["report"]
    assert res["report"]["num_anchors"] == int(model.anchors(size).shape[0]) > int(model.anchors(256).shape[0])
