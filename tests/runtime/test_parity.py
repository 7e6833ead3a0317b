"""Parity numbers (ΔmAP, per-class ΔAP, detection agreement) and their verdicts."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from runtime import load_detector
from runtime.matching import match_by_iou
from runtime.parity import EvalResult, Tolerances, agreement, compare_results
from tests.helpers import perturbed_raw, tiny_checkpoint, tiny_coco, tiny_exports


def _d(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "labels": np.asarray(labels, np.int64)}


def test_match_is_one_to_one_same_class_and_iou_bounded():
    ref = _d([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 2])
    cand = _d([[0, 0, 10, 10.2], [20, 20, 30, 30]], [0.85, 0.7], [1, 1])
    m = match_by_iou(ref, cand)
    assert m.tolist() == [0, -1, -1]  # second ref has no partner left; third has the wrong class
    a = agreement([ref], [cand])
    assert a["matched"] == 1 and a["agreement"] == pytest.approx(1 / 3)
    assert a["max_score_diff"] == pytest.approx(0.05, abs=1e-6)
    shifted = _d([[0, 0, 10, 12]], [0.9], [1])  # IoU 0.83 < 0.95
    assert match_by_iou(ref, shifted).tolist() == [-1, -1, -1]
    assert agreement([_d([], [], [])], [_d([], [], [])])["agreement"] == 1.0


def _result(name, precision, map_, dets, per_class=None):
    return EvalResult(name, precision, list(range(len(dets))), dets, {"mAP": map_, "per_class": per_class or {}})


def test_tolerances_follow_the_precision():
    dets = [_d([[0, 0, 10, 10]], [0.9], [1])]
    ref = _result("pytorch-cpu", "fp32", 50.0, dets, {"a": 50.0})
    assert compare_results(ref, _result("x", "fp32", 50.15, dets, {"a": 50.3}))["ok"]
    bad = compare_results(ref, _result("x", "fp32", 50.25, dets))
    assert not bad["ok"] and "ΔmAP" in bad["reasons"][0]
    assert compare_results(ref, _result("x", "fp16", 50.25, dets))["ok"]
    assert not compare_results(ref, _result("x", "fp16", 49.6, dets))["ok"]
    assert compare_results(ref, _result("x", "int8", 49.1, [_d([], [], [])]))["ok"]  # int8: mAP only
    assert not compare_results(ref, _result("x", "int8", 48.9, dets))["ok"]
    r = compare_results(ref, _result("x", "fp32", 50.0, dets, {"a": 50.3}))
    assert r["per_class_delta_ap"]["a"] == pytest.approx(0.3)
    assert not compare_results(ref, _result("x", "fp32", 50.0, [_d([], [], [])]))["ok"]  # agreement 0
    loose = Tolerances(map_points={"fp32": 5.0, "int8": 5.0}, min_agreement={"fp32": None})
    assert compare_results(ref, _result("x", "fp32", 47.0, [_d([], [], [])]), loose)["ok"]
    assert not compare_results(ref, _result("x", "fp32", math.nan, dets))["ok"]


def _pseudo_gt_dataset(reference, images):
    """A dataset whose ground truth is the reference's confident detections (so its mAP is high
    and a model that drifts loses points)."""
    gt_images, anns = [], []
    dets = reference(images)
    for i, (img, d) in enumerate(zip(images, dets)):
        gt_images.append({"id": i + 1, "width": img.shape[1], "height": img.shape[0], "file_name": f"{i}.png"})
        keep = d["scores"] >= 0.3
        for box, lab in zip(d["boxes"][keep], d["labels"][keep]):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": reference.meta.category_ids[lab - 1],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": c, "name": n} for c, n in zip(reference.meta.category_ids, reference.meta.class_names)]

    class DS:
        category_ids = list(reference.meta.category_ids)
        class_names = list(reference.meta.class_names)
        image_ids = list(range(1, len(images) + 1))

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i], {"image_id": i + 1, "orig_size": images[i].shape[:2]}

        def coco_gt(self):
            return {"images": gt_images, "annotations": anns, "categories": cats}

    assert anns, "the reference must have confident detections"
    return DS()


def test_parity_passes_exports_and_flags_a_perturbed_model():
    from runtime.parity import check_parity

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (int(rng.integers(40, 90)), int(rng.integers(40, 90)), 3), dtype=np.uint8)
              for _ in range(6)]
    reference = load_detector(tiny_checkpoint())
    dataset = _pseudo_gt_dataset(reference, images)
    ex = tiny_exports()
    cands = [load_detector(ex / "model_raw.onnx"), load_detector(ex / "model_nms.onnx"),
             load_detector(ex / "model_trt.onnx", provider="reference"), load_detector(perturbed_raw())]
    report = check_parity(reference, cands, dataset, batch_size=4)
    assert report["reference"]["mAP"] > 90
    rows = {r["name"]: r for r in report["candidates"][:3]}
    for name, r in rows.items():
        assert r["ok"], (name, r["reasons"])
        assert abs(r["delta_map"]) <= 0.2 and r["agreement"] >= 0.95
    bad = report["candidates"][3]
    assert not bad["ok"] and not report["ok"]
    assert bad["agreement"] < 0.95 and abs(bad["delta_map"]) > 0.2
    assert set(bad["per_class_delta_ap"]) == set(reference.meta.class_names)


def test_parity_cli_exits_1_on_failure_and_writes_json(tmp_path, capsys):
    from runtime.parity import main

    out = tmp_path / "parity.json"
    code = main(["--reference", str(tiny_checkpoint()), "--data", tiny_coco(), "--out", str(out),
                 "--candidates", str(tiny_exports() / "model_nms.onnx"), str(perturbed_raw())])
    report = json.loads(out.read_text())
    assert [c["name"] for c in report["candidates"]] == ["onnxruntime-cpu-nms", "onnxruntime-cpu-raw"]
    assert report["candidates"][0]["ok"]
    assert code == (0 if report["ok"] else 1)
    assert "onnxruntime-cpu-nms" in capsys.readouterr().out
    assert main(["--reference", str(tmp_path / "nope.pt"), "--candidates", "x.onnx"]) == 2
    assert capsys.readouterr().err.startswith("error:")
