"""The super-resolution generator G kept in the student (--sr-keep-g, model kwarg sr_generator): state dict and
checkpoint round trip, identity start, the SR method training the student's own G, the exported graphs, the
one-line refusals."""
from __future__ import annotations

import json

import onnx
import pytest
import torch

from distill import train
from distill.checkpoint import Checkpoint
from distill.config import TrainConfig
from distill.models import create_model
from tests.distill.test_kd_train import KW, build_session, data_root, smoke_cfg, teacher_ckpt  # noqa: F401
from tests.helpers import make_tiny_checkpoint

SPEC = {"maps": [0, 1], "width": 8, "blocks": 1}


def _opt_params(opt) -> list[int]:
    return [id(p) for g in opt.param_groups for p in g["params"]]


def test_kept_g_is_in_the_state_dict_and_comes_back_through_the_checkpoint(tmp_path):
    cfg = TrainConfig.from_dict({"model_kwargs": KW, "img_size": 64, "kd": "sr", "teacher": "t.pt",
                                 "sr_keep_g": True, "sr_width": 8, "sr_blocks": 1}, "test")
    assert cfg.model.kwargs == {**KW, "sr_generator": SPEC}          # --sr-keep-g fills the model kwarg
    torch.manual_seed(0)
    model = create_model(cfg.model.name, 3, **cfg.model.kwargs)
    plain_keys = set(create_model(cfg.model.name, 3, **KW).state_dict())
    assert not any("sr_generator" in k for k in plain_keys)          # no G: today's keys, old checkpoints load
    g_keys = set(model.state_dict()) - plain_keys
    assert g_keys and all(k.startswith(("sr_generator.0.", "sr_generator.1.")) for k in g_keys)
    with torch.no_grad():
        model.sr_generator["1"].subpixel[-1].weight.normal_()
    Checkpoint.create(cfg, model, ["a", "b", "c"], [1, 2, 3]).save(tmp_path / "best.pt")
    ck = Checkpoint.load(tmp_path / "best.pt")
    assert ck.model_kwargs["sr_generator"] == SPEC
    back = ck.build_model()
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_kept_g_starts_as_the_plain_student_and_changes_it_once_trained():
    torch.manual_seed(0)
    plain = create_model("ssdlite_mobilenetv2", 3, **KW).eval()
    kept = create_model("ssdlite_mobilenetv2", 3, **KW, sr_generator=SPEC).eval()
    kept.load_state_dict({**kept.state_dict(), **plain.state_dict()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(plain(x), kept(x)))
        kept.sr_generator["0"].subpixel[-1].weight.normal_(0, 0.1)
        loc, conf = kept(x)
        feats, base = kept.forward_features(x)[2], kept.base_features(x)
    assert not torch.allclose(loc, plain(x)[0]) and not torch.allclose(conf, plain(x)[1])
    assert not torch.allclose(feats[0], base[0])                     # the heads read G(z) on map 0 ...
    assert all(torch.equal(a, b) for a, b in zip(feats[1:], base[1:]))   # ... G on map 1 still the identity


def test_a_plain_warm_start_initialises_a_kept_g_student(tmp_path):
    plain = make_tiny_checkpoint(tmp_path / "plain.pt", model_kwargs=dict(KW))
    cfg = TrainConfig.from_dict({"model_kwargs": KW, "img_size": 64, "kd": "sr", "teacher": "t.pt", "sr_keep_g": True,
                                 "sr_width": 8, "sr_blocks": 1, "init_weights": str(plain)}, "test")
    model = train.build_model(cfg, 3, resume=False)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in Checkpoint.load(plain).model.items())
    assert not model.sr_generator["0"].subpixel[-1].weight.any()      # G at its identity start


def test_sr_method_trains_the_students_own_g(teacher_ckpt, data_root, tmp_path):
    cfg = smoke_cfg(teacher_ckpt, data_root, tmp_path, kd="sr", sr_keep_g=True, sr_width=8, sr_blocks=1,
                    sr_mse_weight=0.0)
    session, train_set = build_session(cfg)
    sr, student = session.methods["sr"], session.student
    assert sr.generators is None and sr.student_side_parameters() == []
    assert not any("generator" in k for k in sr.state_dict())         # the method owns only D (and statistics)
    g = [id(p) for p in student.sr_generator.parameters()]
    for opt in (session.det_opt, session.kd_opts["sr"], session.post_opt):
        ids = _opt_params(opt)
        assert len(ids) == len(set(ids)) and set(g) <= set(ids)      # in every student optimizer, once
    assert not set(g) & set(_opt_params(session.d_opt))
    assert "kept in the exported student" in session.describe()
    from distill.data import collate_train
    images, targets = next(iter(torch.utils.data.DataLoader(train_set, batch_size=4, collate_fn=collate_train)))
    assert all(torch.isfinite(torch.tensor(v)) for v in session.discriminator_step(images, targets).values())
    before = {k: v.clone() for k, v in student.sr_generator.state_dict().items()}
    session.schedule.stage = "student"
    out = session.train_step(images, targets)
    assert out is not None and all(k in out for k in ("sr_adv", "sr_cls", "sr_reg", "sr_tv", "sr_mse"))
    assert out["sr_mse"] == 0.0 and out["sr_tv"] > 0                  # --sr-mse-weight 0 removes L_MSE alone
    assert any(not torch.equal(before[k], v) for k, v in student.sr_generator.state_dict().items())


def _export(ckpt, out) -> tuple[dict, int]:
    """export.onnx's CLI on ``ckpt``: (its report, the parameters of model_raw.onnx)."""
    from export import onnx as export_onnx
    argv = ["--checkpoint", str(ckpt), "--out", str(out), "--verify-images", "synthetic", "--eval", "no",
            "--latency-iters", "1", "--threads", "1", "--quiet"]
    assert export_onnx.main(argv) == 0                                # every graph verified against PyTorch
    graph = onnx.load(out / "model_raw.onnx").graph
    return json.loads((out / "export_report.json").read_text()), sum(
        int(torch.tensor(t.dims).prod()) for t in graph.initializer)


def test_exported_kept_g_student_matches_pytorch_and_carries_g(tmp_path):
    kept = make_tiny_checkpoint(tmp_path / "kept" / "best.pt", model_kwargs={**KW, "sr_generator": SPEC})
    ck = Checkpoint.load(kept)
    model = ck.build_model()
    with torch.no_grad():                                             # a G that changes the outputs
        for k in ("0", "1"):
            model.sr_generator[k].subpixel[-1].weight.normal_(0, 0.05)
    ck.model = model.state_dict()
    ck.save(kept)
    report, n_kept = _export(kept, tmp_path / "export-kept")
    for name in ("raw", "trt", "nms"):
        assert report["graphs"][name]["ok"] and report["graphs"][name]["max_abs_diff"] < 1e-4, name
    ck.model_kwargs, ck.model = dict(KW), {k: v for k, v in ck.model.items() if not k.startswith("sr_generator.")}
    ck.save(tmp_path / "plain" / "best.pt")                           # the same student without G
    _, n_plain = _export(tmp_path / "plain" / "best.pt", tmp_path / "export-plain")
    n_g = sum(p.numel() for p in model.sr_generator.parameters())
    assert 0.95 * n_g <= n_kept - n_plain <= n_g                      # G's weights (the simplifier drops zero biases)


@pytest.mark.parametrize("extra, expect", [
    (["--model", "refinedet_mobilenetv2", "--kd", "sr", "--sr-keep-g"], "cannot keep the super-resolution"),
    (["--kd", "gan", "--sr-keep-g"], "--sr-keep-g keeps the generator of --kd ...+sr"),
])
def test_sr_keep_g_refusals_are_one_line(teacher_ckpt, data_root, tmp_path, capsys, extra, expect):
    argv = ["--preset", "smoke", "--model", "ssdlite_mobilenetv2", "--teacher", teacher_ckpt, "--data-root",
            data_root, "--out", str(tmp_path / "run"), "--device", "cpu", *extra]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()                            # refused before the run folder is made


@pytest.mark.parametrize("grad", ["student", "g"])
def test_sr_grad_decides_whether_the_sr_terms_reach_the_backbone(teacher_ckpt, data_root, tmp_path, grad):
    cfg = smoke_cfg(teacher_ckpt, data_root, tmp_path, kd="sr", sr_keep_g=True, sr_width=8, sr_blocks=1,
                    sr_grad=grad)
    session, train_set = build_session(cfg)
    student = session.student
    from distill.data import collate_train
    images, targets = next(iter(torch.utils.data.DataLoader(train_set, batch_size=4, collate_fn=collate_train)))
    session.schedule.stage = "student"
    det, kd, _, _ = session.student_terms(images, targets)
    student.zero_grad(set_to_none=True)
    sum(v for k, v in kd.items() if k.startswith("sr_")).backward(retain_graph=True)     # SR terms alone
    g_ids = {id(p) for p in student.sr_generator.parameters()}
    backbone = [p for p in student.parameters() if id(p) not in g_ids]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.sr_generator.parameters())
    reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone)
    assert reached == (grad == "student")                             # 'g': the slides' min over theta_G alone
    student.zero_grad(set_to_none=True)
    sum(det.values()).backward()                                      # the detection loss still trains both
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone)


def test_sr_grad_g_without_a_kept_g_is_refused_in_one_line(teacher_ckpt, data_root, tmp_path, capsys):
    argv = ["--preset", "smoke", "--model", "ssdlite_mobilenetv2", "--teacher", teacher_ckpt, "--data-root",
            data_root, "--out", str(tmp_path / "run"), "--device", "cpu", "--kd", "sr", "--sr-grad", "g"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--sr-grad g trains G alone" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
