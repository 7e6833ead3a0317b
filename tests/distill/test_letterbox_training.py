"""Letterbox on the training side (``--resize letterbox``): the training transform keeps boxes on their
objects, a run's checkpoint and its exported graphs' sidecars declare the mode, and training-time
evaluation sees the pixels and boxes a deployed model sees."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from distill.data.transforms import build_train_transform
from runtime.preprocess import LETTERBOX_FILL, letterbox_geometry, resize
from tests.helpers import same_detections

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BOX = (50.0, 10.0, 120.0, 45.0)  # the white block of _block_image, xyxy pixels


def _block_image(h: int = 60, w: int = 200) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = (int(v) for v in BOX)
    img[y0:y1, x0:x1] = 255
    return img


def _target(boxes, hw: tuple[int, int], masks: torch.Tensor | None = None) -> dict:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    t = {"boxes": tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=hw),
         "labels": torch.ones(len(b), dtype=torch.int64), "ignore": torch.zeros(len(b), dtype=torch.bool)}
    if masks is not None:
        t["masks"] = tv_tensors.Mask(masks)
    return t


def _uint8(x: torch.Tensor) -> np.ndarray:
    """The normalised CHW training input back to uint8 HWC."""
    m, s = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return ((x * s + m) * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _extent(mask: np.ndarray) -> list[float]:
    """xyxy of the pixels set in a 2-D mask (pixel edges, not centres)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_letterbox_training_resize_matches_deployment_and_keeps_the_box_on_the_object():
    img = _block_image()
    tf = build_train_transform(64, MEAN, STD, augment=False, resize_mode="letterbox")
    x, t = tf(tv_tensors.Image(torch.from_numpy(img.transpose(2, 0, 1).copy())), _target([BOX], (60, 200)))
    out = _uint8(x)
    nh, nw, top, left = letterbox_geometry((60, 200), (64, 64))
    # 114 grey bars above and below, where the deployed preprocessing puts them
    assert np.all(out[:top] == LETTERBOX_FILL) and np.all(out[top + nh:] == LETTERBOX_FILL)
    deployed = resize(img, (64, 64), "letterbox").astype(int)
    assert np.abs(out.astype(int) - deployed).max() <= 2, "training pixels = deployment pixels (up to rounding)"
    box = t["boxes"][0].tolist()
    sx, sy = nw / 200, nh / 60
    want = [left + BOX[0] * sx, top + BOX[1] * sy, left + BOX[2] * sx, top + BOX[3] * sy]
    np.testing.assert_allclose(box, want, atol=1e-4)
    np.testing.assert_allclose(box, _extent(deployed[..., 0] > 128), atol=1.0)  # on the white block
    stretched = build_train_transform(64, MEAN, STD, augment=False)(
        tv_tensors.Image(torch.from_numpy(img.transpose(2, 0, 1).copy())), _target([BOX], (60, 200)))[1]
    assert abs(stretched["boxes"][0, 1].item() - box[1]) > 10, "stretch puts the box elsewhere"


@pytest.mark.parametrize("policy", ["ssd", "light"])
def test_augmented_letterbox_keeps_each_box_on_its_object(policy):
    """Each object's mask travels through the same v2 pipeline as its box: after zoom-out, IoU crop, flip
    and the letterbox, every kept box still frames its object's pixels."""
    h, w = 120, 300
    boxes = [(20.0, 10.0, 110.0, 90.0), (160.0, 40.0, 290.0, 115.0)]
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, int(y0):int(y1), int(x0):int(x1)] = 1
    tf = build_train_transform(64, MEAN, STD, augment=True, iou_crop=policy == "ssd", resize_mode="letterbox",
                               zoom_out_side=(1.0, 2.0 if policy == "ssd" else 1.0))
    torch.manual_seed(0)
    checked = 0
    for _ in range(20):
        image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        x, t = tf(image, _target(boxes, (h, w), masks.clone()))
        assert x.shape == (3, 64, 64) and t["boxes"].canvas_size == (64, 64)
        assert len(t["masks"]) == len(t["boxes"])
        for b, m in zip(t["boxes"].tolist(), t["masks"].numpy()):
            if m.sum() >= 4:
                np.testing.assert_allclose(b, _extent(m), atol=1.5)
                checked += 1
    assert checked >= 20


def test_resize_flag_and_bad_mode():
    from distill.config import FLAGS, build_parser
    from distill.data.dataset import DetectionDataset
    assert FLAGS["resize"].field == "resize_mode" and FLAGS["resize"].choices == ("stretch", "letterbox")
    assert "--resize" in build_parser().format_help()
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        build_train_transform(64, MEAN, STD, resize_mode="letterbx")
    with pytest.raises(ValueError, match="Did you mean 'letterbox'"):
        DetectionDataset([], [], [], train=False, img_size=64, mean=MEAN, std=STD, resize_mode="letterbx")


def test_letterbox_run_checkpoint_export_and_evaluation_agree(tmp_path, monkeypatch):
    """A smoke run with --resize letterbox: its checkpoint, config and every exported sidecar say
    letterbox, and training-time evaluation's detections on the (non-square) validation images are
    those of the exported NMS graph and of the PyTorch backend loaded through runtime.load_detector."""
    import distill.engine as engine
    import distill.train as train_mod
    from distill.checkpoint import Checkpoint, meta_from_checkpoint
    from distill.config import load_yaml, resolve
    from distill.presets import PRESETS
    from export.onnx import export_graphs
    from runtime import load_detector
    from runtime.metadata import read_sidecar

    run = tmp_path / "run"
    cfg = resolve({"preset": "smoke", "model_kwargs": {"width_mult": 0.25, "min_ratio": 0.1, "max_ratio": 0.9},
                   "data_root": str(tmp_path / "data"), "out": str(run), "device": "cpu", "resize": "letterbox",
                   "score_threshold": 0.01}, PRESETS)
    train_mod.fit(cfg)
    ck = Checkpoint.load(run / "best.pt")
    assert ck.config["data"]["resize_mode"] == "letterbox"
    assert load_yaml(run / "config.yaml").data.resize_mode == "letterbox"
    assert meta_from_checkpoint(ck).resize_mode == "letterbox"
    art = export_graphs(run / "best.pt", tmp_path / "exports", log=lambda _msg: None)
    sidecars = {g: read_sidecar(w.onnx).resize_mode for g, w in art.graphs.items()}
    assert sidecars == dict.fromkeys(("raw", "trt", "nms"), "letterbox")

    _, val_set = train_mod.build_datasets(cfg)
    assert val_set.resize_mode == "letterbox"
    seen: list = []
    real_predict = engine.predict

    def recording_predict(model, images, device, **kw):
        out = real_predict(model, images, device, **kw)
        seen.extend(zip(images, out))
        return out

    monkeypatch.setattr(engine, "predict", recording_predict)
    model = ck.build_model()
    engine.evaluate(model, val_set, torch.device("cpu"), img_size=64, mean=cfg.data.mean, std=cfg.data.std,
                    nms_cfg=cfg.nms, max_images=3, batch_size=3)
    images, train_dets = [im for im, _ in seen], [d for _, d in seen]
    assert len(images) == 3 and any(im.shape[0] != im.shape[1] for im in images)
    assert sum(len(d["scores"]) for d in train_dets) > 0, "the smoke model must detect something"
    for path in (art.graphs["nms"].onnx, run / "best.pt"):
        got = load_detector(path)(images)
        for i, (a, b) in enumerate(zip(train_dets, got)):
            assert same_detections(a, b), f"{path.name}: image {i} differs from training-time evaluation"
    stretched = real_predict(model, images, "cpu", img_size=64, mean=cfg.data.mean, std=cfg.data.std,
                             nms_cfg=cfg.nms, resize_mode="stretch")
    assert not all(same_detections(a, b) for a, b in zip(train_dets, stretched)), "the mode must matter"
