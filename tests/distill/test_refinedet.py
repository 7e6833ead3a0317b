"""RefineDet: maps and anchors, L2Norm, the two-step decode, negative anchor filtering, eq. 1, and a tiny run
through the product's training command, evaluation, the PyTorch runtime backend and the export."""
from __future__ import annotations

import json
import math

import pytest
import torch

from distill.losses.multibox import IGNORE
from distill.losses.refinedet import RefineDetLoss, odm_targets
from distill.models import Matcher, create_model
from distill.models.refinedet import RefineDet, TwoStepBoxCoder
from distill.postprocess import decode_outputs

STRIDES = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return create_model("refinedet_vgg16", 3).eval()


@pytest.fixture(scope="module")
def mbv2():
    torch.manual_seed(0)
    return create_model("refinedet_mobilenetv2", 3).eval()


@pytest.mark.parametrize("size", [320, 256])
@pytest.mark.parametrize("name", ["vgg", "mbv2"])
def test_maps_heads_and_anchor_counts(name, size, request):
    model = request.getfixturevalue(name)
    with torch.no_grad():
        loc, conf, maps = model.forward_features(torch.zeros(1, 3, size, size))
    expected = [(math.ceil(size / s),) * 2 for s in STRIDES]
    assert [tuple(m.shape[-2:]) for m in maps] == expected == model.feature_sizes(size)
    assert [m.shape[1] for m in maps] == model.feature_channels == [256 if name == "vgg" else 128] * 4
    n = 3 * sum(h * w for h, w in expected)
    assert n == (6375 if size == 320 else 4080)
    assert loc.shape == (1, n, 8) and conf.shape == (1, n, 3 + 1 + 2)
    assert model.anchors(size).shape == (n, 4)


def test_anchor_scales_are_four_strides_and_follow_a_non_square_input(mbv2):
    h, w = 100, 132                                            # neither a multiple of 64: maps are ceil(h / s)
    with torch.no_grad():
        loc, _, maps = mbv2.forward_features(torch.zeros(1, 3, h, w))
    assert [tuple(m.shape[-2:]) for m in maps] == mbv2.feature_sizes((h, w)) == [(13, 17), (7, 9), (4, 5), (2, 3)]
    anchors = mbv2.anchors((h, w))
    assert loc.shape[1] == anchors.shape[0]
    start = 0
    for (fh, fw), s in zip(mbv2.feature_sizes((h, w)), STRIDES):
        a = anchors[start:start + fh * fw * 3].view(fh, fw, 3, 4)
        start += fh * fw * 3
        square = a[0, 0, 1]                                   # ratio 1
        assert square[2] * w == pytest.approx(min(4 * s, w)) and square[3] * h == pytest.approx(min(4 * s, h))
        assert a[0, 0, 0, 2] * w == pytest.approx(min(4 * s * math.sqrt(0.5), w))    # ratio 0.5: w / h = 0.5
        assert a[0, 0, 0, 3] * h == pytest.approx(min(4 * s / math.sqrt(0.5), h))
        assert a[0, 1, 1, 0] - a[0, 0, 1, 0] == pytest.approx(1 / fw)                   # one cell apart
    assert start == anchors.shape[0]


def test_l2norm_starts_at_10_and_8_and_normalises(vgg):
    b = vgg.backbone
    assert torch.all(b.norm4.weight == 10) and torch.all(b.norm5.weight == 8)
    x = torch.rand(2, b.norm4.weight.numel(), 3, 3) + 0.1
    torch.testing.assert_close(b.norm4(x).norm(dim=1).detach(), torch.full((2, 3, 3), 10.0))


def test_two_step_decode_matches_a_hand_computed_box():
    coder = TwoStepBoxCoder(theta=0.99)
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    # ARM moves the anchor right by 1 x 0.1 x 0.2; ODM doubles its width: log(2) / 0.2 in SSD encoding.
    loc = torch.tensor([[[0.0, 0.0, math.log(2) / 0.2, 0.0, 1.0, 0.0, 0.0, 0.0]]])
    conf = torch.tensor([[[0.0, 2.0, 0.0, 1.0, 0.0]]])          # 2 classes; ARM bg prob = sigmoid(1) < theta
    boxes, scores = decode_outputs(loc, conf, anchors, coder)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.32, 0.40, 0.72, 0.60]))
    torch.testing.assert_close(scores[0, 0], torch.tensor([0.0, 2.0, 0.0]).softmax(0))
    one_step, _ = decode_outputs(loc, conf, anchors, TwoStepBoxCoder(two_step=False))
    torch.testing.assert_close(one_step[0, 0], torch.tensor([0.30, 0.40, 0.70, 0.60]))


def _filtering_case(theta: float):
    """Four anchors; ARM background probabilities 0.999, 0.995, 0.98, 0.5: above / above / below / below 0.99."""
    coder = TwoStepBoxCoder(theta=theta)
    anchors = torch.tensor([[0.25, 0.25, 0.3, 0.3], [0.75, 0.25, 0.3, 0.3], [0.25, 0.75, 0.3, 0.3],
                            [0.75, 0.75, 0.3, 0.3]])
    p_bg = torch.tensor([0.999, 0.995, 0.98, 0.5])
    arm_conf = torch.stack([torch.log(p_bg), torch.log(1 - p_bg)], -1)[None]        # [1, 4, 2]
    loc = torch.zeros(1, 4, 8)
    odm_conf = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])    # 1 class
    targets = [{"boxes": torch.tensor([[0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9]]), "labels": torch.tensor([1, 1])}]
    return coder, anchors, loc, torch.cat([odm_conf, arm_conf], -1), targets


@pytest.mark.parametrize("theta,dropped", [(0.99, [True, True, False, False]), (1.0, [False] * 4)])
def test_negative_anchor_filtering_drops_exactly_the_anchors_above_theta(theta, dropped):
    coder, anchors, loc, conf, targets = _filtering_case(theta)
    keep = coder.keep_mask(conf[..., -2:])
    assert (~keep[0]).tolist() == dropped
    t = odm_targets(targets, coder.refine(loc[..., 4:], anchors), keep, coder, Matcher(0.5))
    assert (t.labels[0] == IGNORE).tolist() == dropped          # neither positive nor mined as negative
    _, scores = decode_outputs(loc, conf, anchors, coder)
    assert ((scores[0, :, 1:] == 0).all(-1)).tolist() == dropped
    # the ODM terms do not see a filtered anchor: any logits / offsets there leave the loss unchanged
    loss = RefineDetLoss()
    base = loss(loc, conf, targets, anchors, coder, Matcher(0.5))
    loc2, conf2 = loc.clone(), conf.clone()
    loc2[0, 0, :4], conf2[0, 0, :2] = torch.tensor([3.0, -2.0, 1.0, 1.0]), torch.tensor([-5.0, 9.0])
    other = loss(loc2, conf2, targets, anchors, coder, Matcher(0.5))
    same = all(torch.equal(base[k], other[k]) for k in ("odm_loc", "odm_cls"))
    assert same == dropped[0]
    assert torch.equal(base["arm_cls"], other["arm_cls"]) and torch.equal(base["arm_loc"], other["arm_loc"])


def test_loss_is_zero_without_positives_and_finite_with_them(mbv2):
    anchors = mbv2.anchors(64)
    x = torch.randn(2, 3, 64, 64)
    loc, conf = mbv2(x)
    coder, loss = mbv2.box_coder, RefineDetLoss()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    terms = loss(loc, conf, empty, anchors, coder, Matcher(0.5))
    assert set(terms) == {"arm_loc", "arm_cls", "odm_loc", "odm_cls"}
    assert all(v.item() == 0.0 for v in terms.values())
    boxes = [{"boxes": torch.tensor([[0.1, 0.2, 0.6, 0.7]]), "labels": torch.tensor([2])}] * 2
    terms = loss(loc, conf, boxes, anchors, coder, Matcher(0.5))
    assert all(math.isfinite(v.item()) for v in terms.values()) and terms["arm_cls"] > 0 and terms["odm_cls"] > 0
    sum(terms.values()).backward()
    assert mbv2.arm_conf.layers[0][1].weight.grad is not None and mbv2.odm_conf.layers[0][1].weight.grad is not None
    mbv2.zero_grad(set_to_none=True)


def test_ablation_variants_build_and_run():
    m = create_model("refinedet_mobilenetv2", 2, width_mult=0.25, tcb_channels=16, tcb=False, two_step=False,
                     theta=1.0)
    assert isinstance(m, RefineDet) and m.tcbs is None and m.feature_channels == m.backbone.out_channels + [512]
    loc, conf = m(torch.zeros(2, 3, 64, 64))
    assert loc.shape == (2, m.anchors(64).shape[0], 8) and conf.shape[-1] == 2 + 1 + 2
    with pytest.raises(ValueError, match="theta"):
        create_model("refinedet_mobilenetv2", 2, width_mult=0.25, theta=0.0)


def test_vgg_imagenet_weights_load_from_a_local_file(tmp_path):
    from distill.models import load_pretrained_backbone
    src = create_model("refinedet_vgg16", 2, width_mult=0.25).backbone
    # SSD's reduced-fc layout: features 0..29, fc6 at 31, fc7 at 33
    reduced = {k.replace("features.", "").replace("fc6", "31").replace("fc7", "33"): v
               for k, v in src.state_dict().items() if not k.startswith("norm")}
    torch.save(reduced, tmp_path / "vgg16_reducedfc.pth")
    model = create_model("refinedet_vgg16", 2, width_mult=0.25)
    info = load_pretrained_backbone(model, tmp_path / "vgg16_reducedfc.pth")
    assert info["loaded"] == 26 + 4                                  # 13 convs + fc6 / fc7 (weight, bias)
    for key in ("features.28.weight", "fc6.weight", "fc7.bias"):
        torch.testing.assert_close(model.backbone.state_dict()[key], src.state_dict()[key])
    assert torch.all(model.backbone.norm4.weight == 10)              # not in the file: untouched


def test_vgg_fc_layers_are_subsampled_from_torchvision_classifier():
    from distill.models.refinedet import VGG16Backbone
    # column-indexed stand-ins of torchvision's classifier.0 / .3 (expanded: no 400 MB allocation)
    state = {"classifier.0.weight": torch.arange(512 * 49.0).expand(4096, -1),
             "classifier.0.bias": torch.arange(4096.0),
             "classifier.3.weight": torch.arange(4096.0).expand(4096, -1),
             "classifier.3.bias": torch.arange(4096.0)}
    out = VGG16Backbone.adapt_pretrained(state)
    assert out["fc6.weight"].shape == (1024, 512, 3, 3) and out["fc7.weight"].shape == (1024, 1024, 1, 1)
    assert out["fc6.weight"][5, 2, 1, 2].item() == 2 * 49 + 3 * 7 + 6          # channel 2, tap (3, 6) of 7x7
    assert out["fc6.bias"][5].item() == 20 and out["fc7.weight"][7, 9, 0, 0].item() == 36


def test_cli_trains_evaluates_and_serves_a_refinedet(tmp_path, capsys):
    import distill.train as train_mod
    from distill.checkpoint import Checkpoint
    from runtime.load import load_detector
    out = tmp_path / "rd"
    rc = train_mod.main(["--preset", "smoke", "--model", "refinedet_mobilenetv2", "--model-kwargs",
                         '{"width_mult": 0.25, "tcb_channels": 32}', "--img-size", "96", "--data-root",
                         str(tmp_path / "data"), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    ck = Checkpoint.load(out / "best.pt")
    assert ck.model_name == "refinedet_mobilenetv2" and math.isfinite(ck.best_map)
    nms = ck.config["nms"]
    assert (nms["pre_nms_top_k"], nms["iou_threshold"], nms["max_detections"]) == (400, 0.45, 200)
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["mAP"]) and summary["params(M)"] > 0
    # what negative anchor filtering removed, in the summary and through distill.arm_filter on the same checkpoint
    from distill.arm_filter import main as arm_filter_main
    filt = summary["arm_filtering"]
    assert filt["counts"]["anchors"] > 0 and set(filt) == {"0.99", "counts"}
    assert arm_filter_main(["--checkpoint", str(out / "best.pt"), "--thetas", "0.99,1"]) == 0
    cli = json.loads((out / "arm_filter.json").read_text())["shares"]
    assert cli["0.99"] == filt["0.99"] and cli["counts"] == filt["counts"]
    assert cli["1"]["anchors"] == 0.0
    # the runtime's PyTorch backend gives what training-time evaluation sees (one postprocess)
    import numpy as np

    from distill.engine import predict
    from runtime.metadata import NMSConfig
    img = (np.random.default_rng(0).random((80, 120, 3)) * 255).astype(np.uint8)
    ref = predict(ck.build_model(), [img], torch.device("cpu"), img_size=96, mean=ck.config["data"]["mean"],
                  std=ck.config["data"]["std"], nms_cfg=NMSConfig(**nms))[0]
    got = load_detector(out / "best.pt")(img)
    assert 0 < len(ref["scores"]) <= 200 and len(got["scores"]) == len(ref["scores"])
    np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1e-3)
    # the checkpoint training wrote exports like an SSD one (graphs checked in tests/export/test_refinedet_export.py)
    from export.onnx import export_graphs
    art = export_graphs(out / "best.pt", tmp_path / "exp", simplify_graphs=False, log=lambda *_: None)
    assert set(art.graphs) == {"raw", "trt", "nms"} and art.graphs["raw"].meta.extra["family"] == "refinedet"


def _teacher_checkpoint(path, model_name: str, kwargs: dict, img_size: int):
    from distill.checkpoint import Checkpoint
    from distill.config import TrainConfig
    from distill.data.shapes import CLASS_NAMES
    torch.manual_seed(0)
    m = create_model(model_name, len(CLASS_NAMES), **kwargs).eval()
    cfg = TrainConfig.from_dict({"model": model_name, "model_kwargs": kwargs, "img_size": img_size})
    Checkpoint.create(cfg, m, list(CLASS_NAMES), list(range(1, len(CLASS_NAMES) + 1)), best_map=0.0).save(path)
    return str(path)


def test_kd_between_refinedets_on_the_tcb_maps_and_a_refused_ssd_teacher(tmp_path, capsys):
    import distill.train as train_mod
    from distill.checkpoint import Checkpoint
    from distill.config import resolve
    from distill.presets import PRESETS
    teacher = _teacher_checkpoint(tmp_path / "t.pt", "refinedet_vgg16", {"width_mult": 0.125}, 64)
    student_kw = {"width_mult": 0.25, "tcb_channels": 16}
    cli = {"preset": "smoke", "model": "refinedet_mobilenetv2", "model_kwargs": student_kw, "teacher": teacher,
           "kd": "gan+soft+fitnet", "data_root": str(tmp_path / "data"), "out": str(tmp_path / "kd"),
           "device": "cpu", "epochs": 2, "gan_post_epochs": 1}
    summary = train_mod.fit(resolve(cli, PRESETS))
    rows = [json.loads(line) for line in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    terms = rows[0]["train"]
    assert all(math.isfinite(terms[k]) and terms[k] > 0 for k in ("gan", "soft", "fitnet", "loc", "cls"))
    assert "d_gan" in terms and math.isfinite(summary["mAP"])
    ck = Checkpoint.load(tmp_path / "kd" / "best.pt")
    assert ck.model_name == "refinedet_mobilenetv2"
    assert not any(k.startswith(("adapters", "teacher")) for k in ck.model)     # KD parts stay out of the weights
    # the adapters map the student's four 16-wide TCB maps to the teacher's four 32-wide ones
    from distill.train import build_datasets, build_kd_session
    cfg = resolve({**cli, "out": str(tmp_path / "kd2")}, PRESETS)
    train_set, _ = build_datasets(cfg)
    student = create_model("refinedet_mobilenetv2", len(train_set.class_names), **student_kw)
    session = build_kd_session(cfg, student, student.anchors(64), train_set, torch.device("cpu"))
    assert [(m.in_channels, m.out_channels) for m in session.adapters.maps] == [(16, 32)] * 4
    # an SSD teacher's six maps do not pair with RefineDet's four: one line, exit 2
    ssd = _teacher_checkpoint(tmp_path / "ssd.pt", "ssd_darknet53", {"width_mult": 0.25, "min_ratio": 0.1,
                                                                     "max_ratio": 0.9}, 64)
    capsys.readouterr()
    rc = train_mod.main(["--preset", "smoke", "--model", "refinedet_mobilenetv2", "--model-kwargs",
                         json.dumps(student_kw), "--teacher", ssd, "--kd", "gan", "--data-root", str(tmp_path / "data"),
                         "--out", str(tmp_path / "mixed"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "feature-map sizes" in err[0] and "Traceback" not in err[0]


def test_resume_continues_a_refinedet_run_exactly(tmp_path, monkeypatch):
    import distill.train as train_mod
    from distill.config import resolve
    from distill.presets import PRESETS

    def cfg(out):
        return resolve({"preset": "smoke", "model": "refinedet_mobilenetv2", "model_kwargs": {
            "width_mult": 0.25, "tcb_channels": 16}, "data_root": str(tmp_path / "data"), "out": str(tmp_path / out),
            "epochs": 2, "device": "cpu", "eval_every": 100}, PRESETS)
    train_mod.fit(cfg("straight"))
    real, calls = train_mod.train_one_epoch, {"n": 0}

    def stop_in_second_epoch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated stop")
        return real(*a, **kw)
    monkeypatch.setattr(train_mod, "train_one_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_mod.fit(cfg("stopped"))
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    assert train_mod.main(["--resume", str(tmp_path / "stopped")]) == 0
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["model"]
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, msg=k)
