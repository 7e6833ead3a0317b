"""Feature super-resolution distillation (--kd sr): G / D shapes, every loss term against a hand-computed value,
the frozen high-resolution pass, smoke runs that log every term, the exported student without G, exact resume."""
from __future__ import annotations

import json
import math
import signal

import pytest
import torch

from distill import train
from distill.checkpoint import Checkpoint
from distill.kd import sr_modules as S
from distill.kd.methods import parse_kd
from distill.models import create_model
from tests.distill.test_kd_train import KW, build_session, data_root, smoke_cfg, teacher_ckpt  # noqa: F401
from tests.distill.test_resume_equivalence import plain_args, rows, stop_with

SR_TERMS = ("sr_adv", "sr_cls", "sr_reg", "sr_tv", "sr_mse", "d_sr_adv", "d_sr_cls")


# ----------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("img_size", [256, 300])
def test_generator_and_discriminator_shapes_on_the_two_high_resolution_maps(img_size):
    student = create_model("ssdlite_mobilenetv2", 8, **KW)
    teacher_channels = [48, 80]
    sizes = student.feature_sizes(img_size)[:2]
    assert sizes == ([(16, 16), (8, 8)] if img_size == 256 else [(19, 19), (10, 10)])
    disc = S.SRDiscriminator(teacher_channels, width=16)
    for k, (h, w) in enumerate(sizes):
        c = student.feature_channels[k]
        g = S.SRGenerator(c, width=16, blocks=2)
        z = torch.randn(3, c, h, w)
        out = g(z)
        assert out.shape == z.shape
        assert torch.equal(out, z)                                  # the last conv starts at zero: identity
        adv, cls = disc(torch.randn(3, teacher_channels[k], h, w), k)
        assert adv.shape == (3,) and cls.shape == (3, h, w)


# ----------------------------------------------------------------------------------------------- loss terms
def test_adversarial_terms_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)])                     # D = 0.5, 0.75
    assert S.sr_adv(logits).item() == pytest.approx((math.log(0.5) + math.log(0.25)) / 2, abs=1e-6)
    d = S.sr_d_adv(torch.tensor([math.log(3.0)]), torch.tensor([0.0]))   # -log 0.75 - log(1 - 0.5)
    assert d.item() == pytest.approx(-math.log(0.75) + math.log(2.0), abs=1e-6)


def test_mse_and_tv_by_hand():
    hr = torch.tensor([[1.0, 2.0], [0.0, 0.0]]).view(2, 2, 1, 1)
    gen = torch.zeros(2, 2, 1, 1)
    assert S.sr_mse(hr, gen).item() == pytest.approx((5 / 2 + 0) / 2)            # ||.||^2 / (C H W), mean over m
    one = torch.tensor([[0.0, 1.0], [0.0, 3.0]]).view(1, 1, 2, 2)
    # forward differences: dx = [[1, 0], [3, 0]], dy = [[0, 2], [0, 0]] -> norms 1, 2, 3, 0 -> mean 1.5
    assert S.sr_tv(one).item() == pytest.approx(1.5, abs=1e-5)
    assert S.sr_tv(one.repeat(1, 2, 1, 1)).item() == pytest.approx(1.5, abs=1e-5)   # / sqrt(C)


def test_cls_term_by_hand():
    logits = torch.tensor([0.0, math.log(3.0), math.log(3.0)]).view(1, 1, 3)     # p = 0.5, 0.75, 0.75
    p_star = torch.tensor([1.0, 1.0, 0.2]).view(1, 1, 3)
    q = [0.5, 0.75, 0.75 * 0.2 + 0.25 * 0.8]
    want = -sum(math.log(v) for v in q) / 3
    assert S.sr_cls_likelihood(logits, p_star).item() == pytest.approx(want, abs=1e-6)
    hr_logits = torch.zeros(1, 1, 3)                                               # p = 0.5: -log 0.5 each
    assert S.sr_cls(logits, hr_logits, p_star).item() == pytest.approx(want + math.log(2.0), abs=1e-6)


def test_reg_term_by_hand():
    t_star = torch.zeros(1, 3, 4)
    t_sr = torch.tensor([[[0.5, 2.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0], [1.0, 0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, False, True]])
    # smooth-L1 (beta 1): 0.5 -> 0.125, 2 -> 1.5, 1 -> 0.5; summed over x, y, w, h, / 2 anchors
    assert S.sr_reg(t_sr, t_star, mask).item() == pytest.approx((0.125 + 1.5 + 0.5) / 2)
    assert S.sr_reg(t_sr, t_star, torch.zeros_like(mask)).item() == 0.0


def test_object_probability_per_location():
    # one map 1x2 with 2 anchors per location: anchors (y0, x0, a0), (y0, x0, a1), (y0, x1, a0), (y0, x1, a1)
    bg = torch.tensor([0.9, 0.3, 0.5, 0.8])
    logits = torch.stack([torch.log(bg), torch.log(1 - bg)], -1).unsqueeze(0)          # softmax = (bg, 1 - bg)
    p = S.object_probability(logits, [(1, 2)], [2], [0])[0]
    assert torch.allclose(p, torch.tensor([[[0.7, 0.5]]]), atol=1e-6)


# ----------------------------------------------------------------------------------------------- frozen z_HR
@pytest.mark.parametrize("source", ["teacher", "student"])
def test_high_resolution_pass_is_frozen(teacher_ckpt, data_root, tmp_path, source):
    session, train_set = build_session(smoke_cfg(teacher_ckpt, data_root, tmp_path, kd="sr", sr_source=source))
    sr = session.methods["sr"]
    images, targets = next(iter(torch.utils.data.DataLoader(train_set, batch_size=4, collate_fn=_collate())))
    sizes = session.student.feature_sizes(64)
    bn = [m.running_mean.clone() for m in session.student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hr = sr.high_res(images, sizes)
    assert [tuple(h.shape[-2:]) for h in hr] == sizes[:2]
    assert all(not h.requires_grad for h in hr)
    after = [m.running_mean for m in session.student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(bn, after))        # the 2x pass leaves BN statistics alone
    session.schedule.stage = "student"
    out = session.train_step(images, targets)
    assert out is not None and all(k in out for k in SR_TERMS[:5])
    assert not session.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in session.teacher.parameters())
    assert any(p.grad is not None for p in sr.generators.parameters())          # G learns in student steps
    assert all(p.grad is None for p in sr.disc.parameters())                     # D is frozen there


def _collate():
    from distill.data import collate_train
    return collate_train


# ----------------------------------------------------------------------------------------------- runs
def test_smoke_runs_log_every_term_and_keep_g_out_of_the_student(teacher_ckpt, data_root, tmp_path):
    assert parse_kd("soft+sr") == ["soft", "sr"] and parse_kd("gan+sr") == ["gan", "sr"]
    for kd in ("sr", "gan+sr"):
        out = tmp_path / kd
        train.fit(smoke_cfg(teacher_ckpt, data_root, out, kd=kd, epochs=1))
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert all(k in row["train"] and math.isfinite(row["train"][k]) for k in SR_TERMS), row["train"]
        assert ("gan" in row["train"]) == (kd == "gan+sr")
        ck = Checkpoint.load(out / "last.pt")
        plain = create_model("ssdlite_mobilenetv2", 8, **KW)
        plain.load_state_dict(ck.model)                                          # strict: the student alone
        assert set(ck.model) == set(plain.state_dict())
        sr_state = ck.extra["discriminators"]["sr"]
        assert any(k.startswith("generators.") for k in sr_state) and any(k.startswith("disc.") for k in sr_state)
        assert "sr" in ck.extra["kd_optimizers"]["distillation"]


def test_soft_plus_sr_steps_with_ground_truth_targets(teacher_ckpt, data_root, tmp_path):
    session, train_set = build_session(smoke_cfg(teacher_ckpt, data_root, tmp_path, kd="soft+sr", sr_target="gt"))
    assert set(session.methods) == {"soft", "sr"}
    assert "sr: G" in session.describe() and "not in the exported student" in session.describe()
    images, targets = next(iter(torch.utils.data.DataLoader(train_set, batch_size=4, collate_fn=_collate())))
    d_out = session.discriminator_step(images, targets)
    assert all(math.isfinite(d_out[k]) for k in ("d_sr_adv", "d_sr_cls"))
    session.schedule.stage = "student"
    out = session.train_step(images, targets)
    assert all(math.isfinite(out[k]) for k in ("soft", *SR_TERMS[:5]))
    g = {id(p) for p in session.methods["sr"].generators.parameters()}
    d = {id(p) for p in session.methods["sr"].disc.parameters()}
    assert g <= {id(p) for grp in session.kd_opts["sr"].param_groups for p in grp["params"]}
    assert not g & {id(p) for grp in session.d_opt.param_groups for p in grp["params"]}
    assert d == {id(p) for grp in session.d_opt.param_groups for p in grp["params"]}


def test_sr_run_stopped_mid_epoch_resumes_exactly(data_root, teacher_ckpt, tmp_path):  # noqa: F811
    kd = ["--kd", "sr", "--teacher", teacher_ckpt, "--gan-post-epochs", "0", "--gan-d-pretrain-iters", "2",
          "--gan-d-finetune-iters", "1", "--gan-student-max-iters", "2", "--sr-width", "16"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    # one epoch of 3 student steps: D pre-learning (2), a round of 2 student steps, stop, then (resumed) D
    # fine-tuning and the 3rd student step
    assert train.main(plain_args(data_root, straight, epochs=1) + kd) == 0
    stop_with(plain_args(data_root, stopped, epochs=1) + kd, stopped, "TERM:1:2", signal.SIGTERM)
    assert train.main(["--resume", str(stopped)]) == 0
    a, b = rows(straight), rows(stopped)
    assert [r["train"] for r in a] == [r["train"] for r in b] and [r["step"] for r in a] == [r["step"] for r in b]
    ca, cb = Checkpoint.load(straight / "last.pt"), Checkpoint.load(stopped / "last.pt")
    for k, v in ca.model.items():
        assert torch.equal(cb.model[k], v), k
    for k, v in ca.extra["discriminators"]["sr"].items():
        assert torch.equal(cb.extra["discriminators"]["sr"][k], v), k


def test_feature_terms_are_calibrated_once_to_a_share_of_the_detection_loss(teacher_ckpt, data_root, tmp_path):
    session, train_set = build_session(smoke_cfg(teacher_ckpt, data_root, tmp_path, kd="sr"))
    sr = session.methods["sr"]
    assert sr.init_ratio == 0.25 and sr.feature_scale is None
    batches = iter(torch.utils.data.DataLoader(train_set, batch_size=4, collate_fn=_collate()))
    session.schedule.stage = "student"
    out = session.train_step(*next(batches))
    scale = sr.feature_scale
    assert scale is not None and scale != 1.0
    assert out["sr_mse"] + out["sr_tv"] == pytest.approx(sr.init_ratio * (out["loc"] + out["cls"]), rel=1e-4)
    assert out["sr_mse"] == pytest.approx(scale * out["sr_mse_raw"], rel=1e-4)
    session.train_step(*next(batches))
    assert sr.feature_scale == scale                                           # frozen after the first step
    assert sr.extra_state() == {"sr_feature_scale": scale}
    sr.load_extra_state({"sr_feature_scale": 2.0})
    assert sr.feature_scale == 2.0


def test_a_zero_weight_removes_its_term_without_rescaling_the_other(teacher_ckpt, data_root, tmp_path):
    """The slides' ablation: "without L_MSE" is the full method minus L_MSE, L_TV at the full method's scale
    (calibrated on the weighted sum, L_TV alone would take the whole share)."""
    outs, scales = {}, {}
    for w in (1.0, 0.0):
        torch.manual_seed(0)
        session, train_set = build_session(smoke_cfg(teacher_ckpt, data_root, tmp_path / str(w), kd="sr",
                                                     sr_mse_weight=w))
        batch = next(iter(torch.utils.data.DataLoader(train_set, batch_size=4, collate_fn=_collate())))
        session.schedule.stage = "student"
        outs[w], scales[w] = session.train_step(*batch), session.methods["sr"].feature_scale
    assert outs[0.0]["sr_mse"] == 0.0 and outs[0.0]["sr_mse_raw"] > 0
    assert scales[0.0] == pytest.approx(scales[1.0], rel=1e-5)
    assert outs[0.0]["sr_tv"] == pytest.approx(outs[1.0]["sr_tv"], rel=1e-4)
    assert outs[0.0]["sr_tv"] < 0.5 * outs[1.0]["sr_mse"]                     # not the whole share


# ----------------------------------------------------------------------------------------------- --sr-region small
def test_masked_reconstruction_terms_average_over_the_small_boxes_cells_only():
    hr = torch.zeros(2, 2, 2, 2)
    gen = torch.zeros(2, 2, 2, 2)
    gen[0, :, 0, 0] = torch.tensor([1.0, 3.0])          # masked cell: (1 + 9) / 2 channels = 5
    gen[1, :, 1, 1] = torch.tensor([2.0, 2.0])          # unmasked cell: ignored
    mask = torch.zeros(2, 1, 2, 2)
    mask[0, 0, 0, 0] = mask[0, 0, 0, 1] = 1.0           # two masked cells: (5 + 0) / 2
    assert S.sr_mse(hr, gen, mask).item() == pytest.approx(2.5)
    assert S.sr_mse(hr, gen, torch.zeros_like(mask)).item() == 0.0
    assert S.sr_mse(hr, gen, torch.ones_like(mask)).item() == pytest.approx(S.sr_mse(hr, gen).item())
    g = torch.zeros(1, 1, 2, 2)
    g[0, 0, 0, 1] = 1.0                # gradient norms: (0,0) 1 (dx), (0,1) 1 (dy), row 1: 0 (forward differences)
    m = torch.zeros(1, 1, 2, 2)
    m[0, 0, 0, 0] = m[0, 0, 0, 1] = 1.0
    assert S.sr_tv(g, m).item() == pytest.approx(1.0, abs=1e-5)
    assert S.sr_tv(g, 1 - m).item() == pytest.approx(0.0, abs=1e-5)
    assert S.sr_tv(g).item() == pytest.approx(0.5, abs=1e-5)
    assert S.sr_tv(g, torch.ones_like(m)).item() == pytest.approx(S.sr_tv(g).item(), abs=1e-6)


def test_small_box_masks_keep_boxes_below_the_side_threshold():
    # at 100 px: a 20 px box (small) on the left half, a 60 px box (not small) on the right half
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.4, 0.4, 1.0, 1.0]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    (m,) = S.small_box_masks(targets, [(10, 10)], (100, 100), 32.0, "cpu")
    assert m.shape == (2, 1, 10, 10)
    assert m[0, 0, :2, :2].sum() == 4 and m[0].sum() == 4 and m[1].sum() == 0
    (m,) = S.small_box_masks(targets, [(10, 10)], (100, 100), 100.0, "cpu")
    assert m[0].sum() == 4 + 36                                        # both boxes below 100 px


def test_region_small_calibrates_on_the_first_batch_with_a_small_box(teacher_ckpt, data_root, tmp_path):
    session, train_set = build_session(smoke_cfg(teacher_ckpt, data_root, tmp_path, kd="sr", sr_region="small",
                                                 sr_small=1.0))
    sr = session.methods["sr"]
    assert sr.region == "small"
    batches = iter(torch.utils.data.DataLoader(train_set, batch_size=4, collate_fn=_collate()))
    session.schedule.stage = "student"
    out = session.train_step(*next(batches))                       # no box below 1 px: no term, no calibration
    assert out["sr_mse"] == 0.0 and out["sr_tv"] == 0.0 and sr.feature_scale is None
    sr.small = 1e4                                                   # every box is small now
    out = session.train_step(*next(batches))
    assert sr.feature_scale is not None
    assert out["sr_mse"] + out["sr_tv"] == pytest.approx(sr.init_ratio * (out["loc"] + out["cls"]), rel=1e-4)
    with pytest.raises(ValueError, match="--sr-region"):
        type(sr)([8], [8], maps=[0], region="big")
