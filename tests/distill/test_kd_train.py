"""Smoke-size distillation runs (64 px, 16 images): teacher frozen, clean student checkpoints, resume mid-stage."""
import json

import pytest
import torch

from distill.checkpoint import Checkpoint, load_checkpoint
from distill.config import TrainConfig, resolve
from distill.data.shapes import CLASS_NAMES
from distill.models import create_model
from distill.presets import PRESETS

KW = {"width_mult": 0.25, "min_ratio": 0.1, "max_ratio": 0.9}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A (random, seeded) tiny DarkNet-53 teacher checkpoint for the 8 shapes classes."""
    path = tmp_path_factory.mktemp("teacher") / "best.pt"
    torch.manual_seed(0)
    m = create_model("ssd_darknet53", len(CLASS_NAMES), **KW).eval()
    cfg = TrainConfig.from_dict({"model": "ssd_darknet53", "model_kwargs": KW, "img_size": 64})
    Checkpoint.create(cfg, m, list(CLASS_NAMES), list(range(1, 9)), best_map=0.0).save(path)
    return str(path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def smoke_cfg(teacher, data_root, out, **kw):
    cli = {"preset": "smoke", "model": "ssdlite_mobilenetv2", "model_kwargs": KW, "teacher": teacher,
           "data_root": data_root, "out": str(out), "device": "cpu", "eval_every": 100, **kw}
    return resolve(cli, PRESETS)


def fit_stopped_at_second_epoch(monkeypatch, cfg) -> None:
    """Run ``train.fit(cfg)`` until the distillation session starts its second epoch, as a kill would."""
    from distill import train
    from distill.kd.session import KDSession
    real_epoch = KDSession.train_epoch

    def stop_at_second_epoch(self, loader, epoch, desc="kd"):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, loader, epoch, desc)

    monkeypatch.setattr(KDSession, "train_epoch", stop_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg)
    monkeypatch.setattr(KDSession, "train_epoch", real_epoch)


def build_session(cfg):
    from distill.train import build_datasets, build_kd_session
    train_set, _ = build_datasets(cfg)
    student = create_model(cfg.model.name, len(train_set.class_names), **cfg.model.kwargs)
    anchors = student.anchors(cfg.data.img_size)
    return build_kd_session(cfg, student, anchors, train_set, torch.device("cpu")), train_set


def test_teacher_unchanged_and_student_changed_after_kd_steps(teacher_ckpt, data_root, tmp_path):
    from torch.utils.data import DataLoader

    from distill.data import collate_train
    cfg = smoke_cfg(teacher_ckpt, data_root, tmp_path / "run", kd="gan+soft+fitnet+began", epochs=2,
                    gan_d_pretrain_iters=1)
    kd, train_set = build_session(cfg)
    t_before = {k: v.clone() for k, v in kd.teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in kd.student.state_dict().items()}
    loader = DataLoader(train_set, batch_size=8, shuffle=False, collate_fn=collate_train)
    tr = kd.train_epoch(loader, 0)        # 1 D step on a batch of its own, then 2 student steps with every term
    assert kd.last_info["stages"] == {"d_pretrain": 1, "student": 2}
    for key in ("loc", "cls", "gan", "soft", "fitnet", "began", "d_gan", "d_acc_real", "d_acc_fake", "adv"):
        assert key in tr, key
    assert not kd.teacher.training
    assert all(not p.requires_grad for p in kd.teacher.parameters())
    assert all(torch.equal(t_before[k], v) for k, v in kd.teacher.state_dict().items())
    assert any(not torch.equal(s_before[k], v) for k, v in kd.student.state_dict().items())


def test_frozen_student_during_discriminator_stage(teacher_ckpt, data_root, tmp_path):
    from torch.utils.data import DataLoader

    from distill.data import collate_train
    cfg = smoke_cfg(teacher_ckpt, data_root, tmp_path / "run", kd="gan", epochs=2, gan_d_pretrain_iters=5)
    kd, train_set = build_session(cfg)
    s_before = {k: v.clone() for k, v in kd.student.state_dict().items()}
    d_before = {k: v.clone() for k, v in kd.discs.state_dict().items()}
    loader = DataLoader(train_set, batch_size=8, collate_fn=collate_train)
    rng = torch.get_rng_state()
    seen = []
    kd.run_iteration_stages(kd._extra_batches(loader, 0), 0, log=lambda stage, out: seen.append(stage))
    assert seen == ["d_pretrain"] * 5 and kd.schedule.stage == "student"     # 5 iterations > 2 batches per pass
    assert all(torch.equal(s_before[k], v) for k, v in kd.student.state_dict().items())   # incl. BN statistics
    assert any(not torch.equal(d_before[k], v) for k, v in kd.discs.state_dict().items())
    # the D batches come from a stream of their own: the student's batches / augmentations are the baseline's
    assert torch.equal(torch.get_rng_state(), rng)


def test_baseline_pipeline_draws_no_discriminator_batches(teacher_ckpt, data_root, tmp_path):
    cfg = smoke_cfg(teacher_ckpt, data_root, tmp_path / "run", kd="gan", kd_weights={"gan": 0.0}, epochs=2,
                    gan_d_pretrain_iters=4)
    kd, _ = build_session(cfg)
    seen = []
    kd.run_iteration_stages(iter(()), 0, log=lambda stage, out: seen.append((stage, out)))   # an empty stream
    assert seen == [("d_pretrain", {})] * 4 and kd.schedule.stage == "student" and kd.discs is None


def test_kd_run_checkpoint_and_resume_mid_stage(teacher_ckpt, data_root, tmp_path, monkeypatch):
    from distill import train
    out = tmp_path / "kd"
    # 16 images / batch 8 = 2 student iterations per epoch; D stages run on batches of their own; a round of
    # 3 student iterations straddles epochs 1 and 2.
    cfg = smoke_cfg(teacher_ckpt, data_root, out, kd="gan", epochs=3, gan_post_epochs=1, gan_d_pretrain_iters=3,
                    gan_d_finetune_iters=1, gan_student_max_iters=3)
    fit_stopped_at_second_epoch(monkeypatch, cfg)
    ck = load_checkpoint(out / "last.pt")
    sched = ck["gan_state"]["schedule"]
    assert ck["epoch"] == 0 and sched["stage"] == "student" and sched["stage_iters"] == 2
    for key in ("kd_modules", "discriminators", "gan_state", "kd_optimizers"):
        assert key in ck
    assert ck["kd_modules"]["adapters"] and ck["discriminators"]["patch"]

    # the student's inference weights alone: they load strictly into a plain student
    plain = create_model("ssdlite_mobilenetv2", 8, **KW)
    plain.load_state_dict(ck["model"])
    assert not any(k.startswith(("maps.", "adapters", "discs")) for k in ck["model"])
    assert set(ck["model"]) == set(plain.state_dict())

    rcfg, rck = train.resume_config(str(out), {})
    summary = train.fit(rcfg, resume_ckpt=rck)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["kd"]["stages"] == {"d_pretrain": 3, "student": 2}
    # epoch 2 resumed inside the round: its 3rd student iteration, 1 D fine-tuning iteration, the next round
    assert rows[1]["kd"]["stages"] == {"student": 2, "d_finetune": 1}
    assert rows[2]["kd"]["stages"] == {"post": 2}
    final = load_checkpoint(out / "last.pt")["gan_state"]["schedule"]
    assert [(h["from"], h["to"]) for h in final["history"]] == [
        ("d_pretrain", "student"), ("student", "d_finetune"), ("d_finetune", "student"), ("student", "post")]
    assert final["history"][1]["epoch"] == 1 and "3 student iterations" in final["history"][1]["why"]
    assert final["stage"] == "post"
    assert summary["kd"] == "gan" and "mAP" in summary


def test_bad_kd_arguments(teacher_ckpt, data_root, tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'soft'"):
        build_session(smoke_cfg(teacher_ckpt, data_root, tmp_path, kd="sofft"))
    with pytest.raises(ValueError, match="needs --teacher"):
        build_session(smoke_cfg(None, data_root, tmp_path, kd="gan"))
    with pytest.raises(ValueError, match="must exceed --gan-post-epochs"):
        build_session(smoke_cfg(teacher_ckpt, data_root, tmp_path, kd="gan", epochs=2, gan_post_epochs=2))
    with pytest.raises(ValueError, match="unknown method 'gann'"):
        build_session(smoke_cfg(teacher_ckpt, data_root, tmp_path, kd="gan", kd_weights={"gann": 1}))


def test_conditional_gan_kd_epoch(teacher_ckpt, data_root, tmp_path):
    from torch.utils.data import DataLoader

    from distill.data import collate_train
    cfg = smoke_cfg(teacher_ckpt, data_root, tmp_path / "run", kd="gan", epochs=2, gan_conditional=True)
    kd, train_set = build_session(cfg)
    assert all(d.cond_channels == 3 for d in kd.discs)
    tr = kd.train_epoch(DataLoader(train_set, batch_size=8, collate_fn=collate_train), 0)
    assert kd.last_info["stages"] == {"d_pretrain": 1, "student": 2} and tr["adv"] > 0


def test_diagnose_gradients_and_discriminator_learnability(teacher_ckpt, data_root, tmp_path, capsys):
    from distill import train
    from distill.kd import diagnose
    out = tmp_path / "kd"
    train.fit(smoke_cfg(teacher_ckpt, data_root, out, kd="gan", epochs=2, gan_post_epochs=1))
    assert diagnose.main([str(out), "--batches", "1", "--d-iters", "2", "--out", str(tmp_path / "d.json")]) == 0
    res = json.loads((tmp_path / "d.json").read_text())
    assert set(res["gradients"]) == {"det", "gan", "soft", "fitnet"}
    assert abs(res["gradients"]["det"]["cos_with_det"] - 1.0) < 1e-3          # the detection gradient with itself
    assert all(g["grad_norm"] > 0 for g in res["gradients"].values())
    rows = res["discriminator_learnability"]
    assert rows[-1]["iteration"] == 2 and len(rows[-1]["held_out_acc_real"]) == 6
    assert "cos(det)" in capsys.readouterr().out
    # a plain (non-GAN) run folder is refused with a one-line reason
    assert diagnose.main([str(tmp_path / "nowhere")]) == 2
