"""export.onnx on a tiny RefineDet (64 px, 3 classes, untrained): the same graphs, sidecars and checks as SSD's.

The ARM decode (refined anchors per image) and negative anchor filtering run in every graph; the raw / trt /
ONNX-NMS graphs equal PyTorch at batch 1 and 3 (the trt graph through the plugin's CPU reference); the runtime's
backends run them with no RefineDet code; the INT8 graph goes through the same mAP gate; the TensorRT build
(a mock of TensorRT 11) takes the FP16 variant like SSD's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from distill.data.shapes import CLASS_NAMES
from export import verify as V
from runtime.matching import match_exact
from runtime.metadata import read_sidecar
from runtime.outputs import NMS_OUTPUTS, RAW_OUTPUTS

IMG = 64
C = len(CLASS_NAMES)        # the embedded dataset's classes, so that the INT8 gate's mAP is measured on them
FILTERED_MAP = 0            # stride-8 map: 8 x 8 cells x 3 anchors at 64 px
FILTERED_SHAPE = 0          # its first anchor shape (ratio 0.5) is forced above theta
GRAPHS = {"raw", "trt", "nms", "int8", "int8_nms", "nms_u8", "int8_nms_u8", "trt_fp16"}


def _forced_refinedet(seed: int = 0):
    """A tiny RefineDet whose scores spread like a trained detector's (BatchNorm scales / shifts drawn at random,
    ODM class logits spread), and whose ARM says "background, p ~ 1 - 1e-7" for one anchor shape of the stride-8
    map (weights 0, bias +8 / -8): exactly those anchors exceed theta = 0.99."""
    import torch

    from distill.models import create_model
    torch.manual_seed(seed)
    m = create_model("refinedet_mobilenetv2", C, width_mult=0.25, tcb_channels=16)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 2.0)
                mod.bias.uniform_(-0.5, 0.5)
        for layer in m.odm_conf.layers:
            layer[-1].weight.normal_(0, 0.3)
            layer[-1].bias.uniform_(-1, 1)
        arm = m.arm_conf.layers[FILTERED_MAP][-1]
        w = arm.weight.view(3, 2, *arm.weight.shape[1:])      # channels a * 2 + k, k = 0 is background
        w[FILTERED_SHAPE] = 0.0
        arm.bias.view(3, 2)[FILTERED_SHAPE] = torch.tensor([8.0, -8.0])
    return m.eval()


def _filtered_mask(n: int) -> np.ndarray:
    """bool [n]: the anchors the forced ARM filters (map FILTERED_MAP = the first, 8 x 8 cells x 3 shapes at 64 px,
    emitted in (y, x, shape) order; shape FILTERED_SHAPE of every cell)."""
    mask = np.zeros(n, bool)
    mask[FILTERED_SHAPE:8 * 8 * 3:3] = True
    return mask


@pytest.fixture(scope="module")
def rd_ckpt(tmp_path_factory) -> Path:
    from distill.checkpoint import Checkpoint
    from distill.config import TrainConfig
    from distill.data.shapes import ensure_shapes_dataset
    root = tmp_path_factory.mktemp("rd")
    ensure_shapes_dataset(root / "data", num_train=8, num_val=12, seed=0, progress=False)
    cfg = TrainConfig.from_dict({"model": "refinedet_mobilenetv2", "img_size": IMG, "score_threshold": 0.05,
                                 "model_kwargs": {"width_mult": 0.25, "tcb_channels": 16},
                                 "data_root": str(root / "data"), "shapes_train": 8, "shapes_val": 12}, "test")
    Checkpoint.create(cfg, _forced_refinedet(), class_names=list(CLASS_NAMES), category_ids=list(range(1, C + 1)),
                      best_map=0.0).save(root / "best.pt")
    return root / "best.pt"


@pytest.fixture(scope="module")
def rd_export(rd_ckpt, calib_dir, tmp_path_factory):
    """Every graph of SSD's export (raw, trt, nms, int8 + its NMS graph, the uint8-input twins, the FP16 plugin
    graph), verified, with the INT8 mAP gate on the 12 validation images."""
    from export.onnx import export_onnx
    out = tmp_path_factory.mktemp("rd_exports") / "rd"
    return export_onnx(rd_ckpt, out, int8=True, fp16=True, uint8_input=True, calib_images=calib_dir,
                       calib_count=8, verify_images="synthetic", evaluate=True, eval_images=12, latency_iters=2,
                       threads=1, quiet=True, int8_max_fp32_layers=2)


@pytest.fixture(scope="module")
def rd_model(rd_ckpt):
    from distill.checkpoint import Checkpoint
    return Checkpoint.load(rd_ckpt).build_model().eval()


@pytest.fixture(scope="module")
def rd_images(rd_export):
    from export.data import synthetic_images
    from runtime.preprocess import Preprocessor
    return Preprocessor.from_meta(read_sidecar(rd_export["files"]["raw"]["onnx"]))(synthetic_images(3, seed=7))[0]


def test_every_graph_is_written_verified_and_follows_the_contract(rd_export, rd_images):
    assert rd_export["ok"], json.dumps(rd_export["report"]["graphs"], indent=1)[:3000]
    assert set(rd_export["files"]) == GRAPHS and set(rd_export["report"]["graphs"]) == GRAPHS
    n = rd_export["report"]["num_anchors"]
    assert n == 255
    for graph, files in rd_export["files"].items():
        meta = read_sidecar(files["onnx"])
        assert meta.model_name == "refinedet_mobilenetv2" and meta.num_classes == C and meta.input_size == (IMG, IMG)
        assert meta.extra["family"] == "refinedet" and meta.extra["theta"] == 0.99 and meta.extra["two_step"]
        sess = V.ort_session(files["onnx"]) if graph not in ("trt", "trt_fp16") else None
        if sess is None:
            continue
        x = rd_images if meta.input_format == "float_nchw" else \
            np.zeros((3, IMG, IMG, 3), np.uint8)
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))
        if meta.graph in ("raw", "int8") and "boxes" in outs:
            assert list(outs) == list(RAW_OUTPUTS)
            assert outs["boxes"].shape == (3, n, 4) and outs["scores"].shape == (3, n, C + 1)
            np.testing.assert_allclose(outs["scores"].sum(-1)[:, ~_filtered_mask(n)], 1.0, atol=1e-5)
        else:
            assert list(outs) == list(NMS_OUTPUTS), graph
            k = meta.nms.max_detections
            assert [outs[o].shape for o in NMS_OUTPUTS] == [(3, 1), (3, k, 4), (3, k), (3, k)]
            assert outs["num_detections"].dtype == np.int32 and outs["detection_classes"].dtype == np.int32
            assert V.padding_is_zero([outs[o] for o in NMS_OUTPUTS])
    trt = onnx.load(rd_export["files"]["trt"]["onnx"])
    node = next(nd for nd in trt.graph.node if nd.op_type == "EfficientNMS_TRT")
    assert list(node.input) == ["nms_deltas", "nms_scores", "nms_anchors"]   # per-image refined anchors


def test_raw_nms_and_trt_graphs_equal_pytorch(rd_export, rd_model, rd_images):
    from runtime.trt_reference import TrtGraphReference
    anchors = rd_model.anchors(IMG)
    nms = read_sidecar(rd_export["files"]["nms"]["onnx"]).nms
    trt_nms = read_sidecar(rd_export["files"]["trt"]["onnx"]).nms
    raw = V.ort_session(rd_export["files"]["raw"]["onnx"])
    nms_s = V.ort_session(rd_export["files"]["nms"]["onnx"])
    trt = TrtGraphReference(rd_export["files"]["trt"]["onnx"], intra_op_threads=1)
    for bs in (1, 3):
        x = rd_images[:bs]
        ref_raw = V.torch_raw(rd_model, anchors, x)
        for got, ref in zip(raw.run(None, {"images": x}), ref_raw):
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5)
        for got, cfg in ((nms_s.run(None, {"images": x}), nms), (trt(x), trt_nms)):
            ref = V.torch_detections(rd_model, anchors, x, cfg)
            m = match_exact(got, ref, raw=ref_raw)
            assert m["match"], m
            assert int(got[0].min()) > 5          # the tiny model really detects things


def test_negative_anchor_filtering_happens_in_the_graphs(rd_export, rd_model, rd_images):
    """The forced anchors (ARM background probability ~1 > 0.99) have exactly zero object scores in the raw graph
    and in the plugin's scores input, every other anchor keeps its softmax; none of them is ever detected."""
    import torch

    from runtime.trt_reference import TrtGraphReference
    mask = _filtered_mask(rd_model.anchors(IMG).shape[0])
    with torch.no_grad():
        _, conf = rd_model(torch.from_numpy(rd_images))
    keep = rd_model.box_coder.keep_mask(conf[..., -2:]).numpy()
    assert (~keep == mask[None]).all() and mask.sum() == 64 and (~mask).sum() > 100
    _, scores = V.ort_session(rd_export["files"]["raw"]["onnx"]).run(None, {"images": rd_images})
    assert (scores[:, mask, 1:] == 0).all() and (scores[:, ~mask, 1:] > 0).all()
    assert (scores[:, mask, 0] > 0).all()                     # the background column is the softmax's
    ref = TrtGraphReference(rd_export["files"]["trt"]["onnx"], intra_op_threads=1)
    deltas, plugin_scores, refined = ref.plugin_inputs(rd_images)
    assert plugin_scores.shape == (3, mask.size, C) and refined.shape == (3, mask.size, 4)
    assert (plugin_scores[:, mask] == 0).all() and (plugin_scores[:, ~mask] > 0).all()
    # the refined anchors are per image: the ARM offsets move them differently on each image
    assert np.abs(refined[0] - refined[1]).max() > 1e-4
    np.testing.assert_allclose(refined, rd_model.box_coder.refine(
        rd_model(torch.from_numpy(rd_images))[0][..., 4:], rd_model.anchors(IMG)).detach().numpy(), atol=1e-6)


def test_plugin_box_modes_give_the_same_detections(rd_ckpt, rd_images, tmp_path):
    """The two ways of handing RefineDet's boxes to EfficientNMS_TRT (export.graphs.PLUGIN_BOXES) on the plugin's
    CPU reference: identical detections; the timing of each is printed (pytest -s) for the record."""
    from export.onnx import export_graphs
    from runtime.trt_reference import TrtGraphReference
    refs, times = {}, {}
    for mode in ("anchors", "decoded"):
        art = export_graphs(rd_ckpt, tmp_path / mode, refinedet_plugin_boxes=mode, simplify_graphs=False,
                            log=lambda *_: None)
        meta = art.graphs["trt"].meta
        assert meta.extra["plugin_boxes"] == mode
        assert meta.extra["plugin_attrs"]["box_coding"] == (1 if mode == "anchors" else 0)
        refs[mode] = TrtGraphReference(art.graphs["trt"].onnx, intra_op_threads=1)
        refs[mode](rd_images)                                  # warm-up
        t0 = time.perf_counter()
        out = [refs[mode](rd_images) for _ in range(3)][-1]
        times[mode] = (time.perf_counter() - t0) / 3 * 1e3
        refs[mode] = out
    assert len(TrtGraphReference(tmp_path / "decoded" / "model_trt.onnx").node.input) == 2
    a, d = refs["anchors"], refs["decoded"]
    np.testing.assert_array_equal(a[0], d[0])
    np.testing.assert_array_equal(a[3], d[3])
    np.testing.assert_allclose(a[2], d[2], rtol=0, atol=0)
    np.testing.assert_allclose(a[1], d[1], atol=1e-6)
    print(f"\nplugin CPU reference, batch 3: anchors {times['anchors']:.2f} ms, decoded {times['decoded']:.2f} ms")


def test_int8_goes_through_the_same_map_gate(rd_export):
    rep = rd_export["report"]
    mp = rep["map"]
    assert {"raw", "int8"} <= set(mp) and mp["int8_max_map_drop"] == 1.0
    assert abs(mp["raw"]["mAP"] - mp["int8"]["mAP"]) <= 1.0, mp
    assert rep["graphs"]["int8"]["ok"] and rep["quantization"]["format"] == "QDQ"
    assert rep["graphs"]["int8_nms"]["detections_match"] and rep["graphs"]["nms_u8"]["detections_match"]


def test_runtime_backends_run_the_graphs_without_refinedet_code(rd_export, rd_ckpt):
    """load_detector on the checkpoint (PyTorch), the raw and NMS graphs (ONNX Runtime) and the plugin graph (CPU
    reference): the same detections on one image."""
    from export.data import synthetic_images
    from runtime.load import load_detector
    img = synthetic_images(1, seed=3)[0]
    with load_detector(rd_ckpt) as det:
        ref = det(img)
    assert len(ref["scores"]) > 5
    for graph, provider in (("raw", None), ("nms", None), ("trt", "reference")):
        with load_detector(rd_export["files"][graph]["onnx"], provider=provider, threads=1) as det:
            got = det(img)
        assert len(got["scores"]) == len(ref["scores"]), graph
        np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1e-3)
        np.testing.assert_array_equal(got["labels"], ref["labels"])


def test_tensorrt_fp16_build_takes_the_refinedet_plugin_graph(rd_export, tmp_path, monkeypatch):
    """python -m export.trt --fp16 on the RefineDet plugin graph, with the mock of TensorRT 11 that the SSD tests
    use: it parses model_trt_fp16.onnx (per-image anchors input kept FP32) and verifies against the CPU reference."""
    import shutil

    from export import trt as T
    from export.trt import env
    from tests.export.fake_tensorrt import FakeCuda, FakeDetector, fake_tensorrt
    from tests.export.fake_tensorrt import cli_args, quiet
    for g in ("trt", "trt_fp16"):
        src = Path(rd_export["files"][g]["onnx"])
        for suffix in (".onnx", ".json"):
            shutil.copy(src.with_suffix(suffix), tmp_path / f"{src.stem}{suffix}")
    trt, cuda = fake_tensorrt(11), FakeCuda((8, 9))
    monkeypatch.setattr(env, "import_tensorrt", lambda: (trt, None))
    monkeypatch.setattr(env, "import_cuda", lambda: (cuda, None))
    monkeypatch.setattr("runtime.backends.trt_backend.TRTDetector", FakeDetector)
    s = T.resolve_settings(cli_args(onnx=str(tmp_path / "model_trt.onnx"), fp16=True, batch="1,2,4"))
    rep = T.build_engine(s, log=quiet)
    assert Path(trt.record["plans"][-1]["parsed"]).name == "model_trt_fp16.onnx"
    assert rep["verification"]["ok"] and rep["verification"]["agreement"] >= 0.8
    assert read_sidecar(s.engine).extra["family"] == "refinedet"
