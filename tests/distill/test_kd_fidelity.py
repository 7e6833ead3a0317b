"""GAN-KD as the paper writes it: patch outputs, adapters on every map, frozen standardisation, the threshold on
the per-map mean, a detection step that no distillation term can shrink, separate optimizer states."""
import pytest
import torch
from torch.utils.data import DataLoader

from distill.data import collate_train
from distill.kd import losses as L
from distill.kd.discriminators import build_discriminators, output_side
from distill.kd.features import Adapters, FeatureStandardizer
from distill.models import create_model

from .test_kd_train import (build_session, data_root, fit_stopped_at_second_epoch, smoke_cfg,  # noqa: F401
                             teacher_ckpt)


@pytest.mark.parametrize("sizes,patch", [([19, 10, 5, 3, 2, 1], [3, 3, 3, 3, 2, 1]),     # 300 px: the paper's text
                                         ([16, 8, 4, 2, 1, 1], [2, 2, 2, 2, 1, 1])])     # 256 px: the quick preset
def test_patch_outputs_per_map(sizes, patch):
    assert [output_side(s, "patch") for s in sizes] == patch
    assert [output_side(s, "table") for s in sizes] == [1] * 6                              # Tables 2-3 read literally
    ds = build_discriminators([8] * 6, sizes, output="patch")
    assert [tuple(d(torch.randn(2, 8, s, s)).shape) for d, s in zip(ds, sizes)] == [(2, 1, p, p) for p in patch]


def test_adapters_on_all_maps_identity_where_widths_match():
    a = Adapters([8, 16, 4], [8, 32, 4])
    assert all(isinstance(m, torch.nn.Conv2d) for m in a.maps)
    x = [torch.randn(2, 8, 3, 3), torch.randn(2, 16, 2, 2), torch.randn(2, 4, 1, 1)]
    y = a(x)
    assert torch.allclose(y[0], x[0]) and torch.allclose(y[2], x[2]) and y[1].shape == (2, 32, 2, 2)
    assert sum(p.requires_grad for p in a.parameters()) == 6                                # learnable everywhere
    old = Adapters([8, 16], [8, 32], mode="mismatch")
    assert isinstance(old.maps[0], torch.nn.Identity)


def test_standardizer_fit_and_frozen():
    torch.manual_seed(0)
    st = FeatureStandardizer([3])
    maps = [[torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 10.0, 0.3]).view(1, 3, 1, 1) + 7]]
    st.fit(maps)
    z = st(maps[0])[0]
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    assert not any(True for _ in st.parameters()) and st.is_fitted
    dead = FeatureStandardizer([2])                       # a map the teacher does not use stays unscaled
    dead.fit([[torch.zeros(4, 2, 3, 3)]])
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(dead([x])[0], x)


def test_reconstruction_and_gan_loss_options_by_hand():
    t = torch.randn(2, 4, 3, 3)
    assert L.reconstruction_loss([t], [t]).item() == pytest.approx(0.0, abs=1e-5)
    assert L.reconstruction_loss([-t], [t]).item() == pytest.approx(2.0, abs=1e-5)
    assert L.reconstruction_loss([2 * t + 1], [t]).item() == pytest.approx(0.0, abs=1e-5)  # scale / offset free
    assert L.reconstruction_loss([t + 1], [t], "mse").item() == pytest.approx(1.0, abs=1e-5)
    mask = torch.zeros(2, 1, 3, 3)
    mask[:, :, 0, 0] = 1
    s = t.clone()
    s[:, :, 1:, :] = 0
    assert L.reconstruction_loss([s], [t], "mse", [mask]).item() == pytest.approx(0.0, abs=1e-6)
    boxes = [{"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5]])}]
    assert L.box_masks(boxes, [(2, 2)], "cpu")[0][0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    r, f = torch.tensor([2.0]), torch.tensor([-1.0])
    assert L.gan_d_loss(r, f, "lsgan").item() == pytest.approx(1.0 + 1.0)
    assert L.gan_g_loss(f, "lsgan").item() == pytest.approx(4.0)
    smoothed = L.gan_d_loss(r, f, real_label=0.9).item()
    assert smoothed > L.gan_d_loss(r, f).item()


def _session(teacher, root, tmp_path, **kw):
    cfg = smoke_cfg(teacher, root, tmp_path / "run", epochs=2, **kw)
    torch.manual_seed(0)
    return build_session(cfg)


def test_session_parts_and_checkpoint(teacher_ckpt, data_root, tmp_path):  # noqa: F811
    kd, train_set = _session(teacher_ckpt, data_root, tmp_path, kd="gan+rec")
    assert len(kd.adapters.maps) == 6 and all(isinstance(m, torch.nn.Conv2d) for m in kd.adapters.maps)
    assert kd.standardizer.is_fitted
    before = {k: v.clone() for k, v in kd.standardizer.state_dict().items()}
    kd.train_epoch(DataLoader(train_set, batch_size=8, collate_fn=collate_train), 0)
    assert all(torch.equal(before[k], v) for k, v in kd.standardizer.state_dict().items())   # frozen
    extra = kd.checkpoint_extra()
    assert extra["kd_modules"]["standardizer"]["fitted"].item() == 1
    assert extra["gan_state"]["rec_scale"] > 0
    # D and the student never share an optimizer or a parameter
    d_params = {id(p) for g in kd.d_opt.param_groups for p in g["params"]}
    opts = [kd.det_opt, *kd.kd_opts.values(), kd.post_opt]
    s_params = {id(p) for opt in opts for g in opt.param_groups for p in g["params"]}
    assert d_params and not d_params & s_params
    assert len({id(o) for o in (*opts, kd.d_opt)}) == 5 and set(kd.kd_opts) == {"gan", "rec"}


def test_threshold_is_tested_on_the_per_map_mean(teacher_ckpt, data_root, tmp_path):  # noqa: F811
    kd, train_set = _session(teacher_ckpt, data_root, tmp_path, kd="gan")
    images, targets = next(iter(DataLoader(train_set, batch_size=8, collate_fn=collate_train)))
    _, kd_terms, info, _ = kd.student_terms(images, targets)
    assert info["adv"] == pytest.approx(kd_terms["gan"].item() / 6, rel=1e-5)


def _one_student_step(teacher, root, tmp_path, batch, **kw):
    kd, _ = _session(teacher, root, tmp_path, **kw)
    kd.schedule.stage = "student"
    kd.train_step(*batch)
    return kd


def test_detection_step_is_the_baselines_whatever_the_distillation_terms(teacher_ckpt, data_root, tmp_path):  # noqa: F811
    """Same initialisation, same batch: the detection optimizer's state and step are identical with GAN-KD on
    (weight 1) and off (weight 0); the distillation step comes on top, from its own optimizer state."""
    _, train_set = _session(teacher_ckpt, data_root, tmp_path, kd="gan")
    batch = next(iter(DataLoader(train_set, batch_size=8, collate_fn=collate_train)))
    base = _one_student_step(teacher_ckpt, data_root, tmp_path, batch, kd="gan", kd_weights={"gan": 0})
    gan = _one_student_step(teacher_ckpt, data_root, tmp_path, batch, kd="gan")
    sb, sg = base.det_opt.state_dict()["state"], gan.det_opt.state_dict()["state"]
    assert sb.keys() == sg.keys() and sb
    for k in sb:
        torch.testing.assert_close(sb[k]["exp_avg_sq"], sg[k]["exp_avg_sq"])
        torch.testing.assert_close(sb[k]["exp_avg"], sg[k]["exp_avg"])
    assert not base.kd_opts and gan.kd_opts["gan"].state_dict()["state"]


def test_a_methods_step_is_what_it_is_alone(teacher_ckpt, data_root, tmp_path):  # noqa: F811
    """gan+soft vs soft: the soft-label optimizer's state after one step is the same with or without the
    adversarial term (each method steps with its own state; a weight scales the method's step size)."""
    _, train_set = _session(teacher_ckpt, data_root, tmp_path, kd="soft")
    batch = next(iter(DataLoader(train_set, batch_size=8, collate_fn=collate_train)))
    soft = _one_student_step(teacher_ckpt, data_root, tmp_path, batch, kd="soft")
    both = _one_student_step(teacher_ckpt, data_root, tmp_path, batch, kd="gan+soft", kd_weights={"gan": 0.5})
    a, b = soft.kd_opts["soft"].state_dict()["state"], both.kd_opts["soft"].state_dict()["state"]
    for k in a:
        torch.testing.assert_close(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"])
    assert both.kd_opts["gan"].param_groups[0]["lr"] == pytest.approx(0.5 * both.kd_lr)


def test_distillation_resume_mid_stage_is_exact(teacher_ckpt, data_root, tmp_path, monkeypatch):  # noqa: F811
    """A gan+soft run stopped after epoch 1 (mid-round: the student round straddles epochs) and resumed ends with
    the same student weights as the run that never stopped."""
    from distill import train
    from distill.checkpoint import load_checkpoint
    kw = dict(kd="gan+soft", epochs=3, gan_post_epochs=1, gan_d_pretrain_iters=2, gan_d_finetune_iters=1,
              gan_student_max_iters=3)
    train.fit(smoke_cfg(teacher_ckpt, data_root, tmp_path / "straight", **kw))
    fit_stopped_at_second_epoch(monkeypatch, smoke_cfg(teacher_ckpt, data_root, tmp_path / "stopped", **kw))
    cfg, ck = train.resume_config(str(tmp_path / "stopped"), {})
    train.fit(cfg, resume_ckpt=ck)
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "stopped" / "last.pt")
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, msg=k)
    torch.testing.assert_close(b["discriminators"]["patch"], a["discriminators"]["patch"])


def test_a_student_step_frees_its_graph_without_the_cyclic_collector(teacher_ckpt, data_root, tmp_path):  # noqa: F811
    """A step's lazily computed maps are freed when the step ends, without Python's cyclic collector: a retained
    graph no later backward frees (--sr-grad g) must not outlive its step."""
    import gc
    import weakref
    kd, train_set = _session(teacher_ckpt, data_root, tmp_path, kd="gan+rec")
    kd.schedule.stage = "student"
    seen = []
    inner = kd.student_terms

    def spy(images, targets):
        out = inner(images, targets)
        seen.append(weakref.ref(out[3].student_maps[0]))     # a lazily computed map, part of the step's graph
        return out
    kd.student_terms = spy
    batch = next(iter(DataLoader(train_set, batch_size=8, collate_fn=collate_train)))
    gc.collect()
    gc.disable()
    try:
        kd.train_step(*batch)
        assert seen and seen[0]() is None
    finally:
        gc.enable()


def test_lazy_outputs_form_no_reference_cycle():
    """Producers read their dependencies through the ``get`` they are given, so dropping the LazyOutputs (without
    release()) frees every cached value by reference counting alone, the collector off."""
    import gc
    import weakref
    from distill.kd.methods import LazyOutputs
    x = torch.randn(4, requires_grad=True)
    lazy = LazyOutputs({"a": lambda get: x * 2, "b": lambda get: get("a").sum() + 1})
    gc.collect()
    gc.disable()
    try:
        b = lazy.get("b")
        assert float(b) == float((x * 2).sum() + 1) and lazy.get("b") is b     # computed once, cached
        ref = weakref.ref(lazy.get("a"))
        del lazy, b
        assert ref() is None
    finally:
        gc.enable()
