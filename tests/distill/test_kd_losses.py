import math

import pytest
import torch

from distill.kd import losses as L


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_gan_losses_eq2_by_hand():
    assert L.gan_d_loss(t(0.0), t(0.0)).item() == pytest.approx(2 * math.log(2), abs=1e-6)
    # -log sigmoid(2) - log(1 - sigmoid(-1))
    assert L.gan_d_loss(t(2.0), t(-1.0)).item() == pytest.approx(math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)), abs=1e-6)
    # student labelled "real": -log sigmoid(-1)
    assert L.gan_g_loss(t(-1.0)).item() == pytest.approx(math.log(1 + math.e), abs=1e-6)
    assert L.d_accuracy(t(1, -1, 2, 3), t(-1, -2, 1, -3)) == (0.75, 0.75)


def test_soft_label_kd_by_hand():
    # teacher p = [0.75, 0.25], student p = [0.5, 0.5]; KL = 0.75 ln 1.5 + 0.25 ln 0.5
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    student = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])
    teacher = torch.tensor([[[math.log(3), 0.0], [-5.0, 5.0]]])
    mask = torch.tensor([[True, False]])                     # second anchor (IGNORE) excluded
    assert L.soft_label_loss(student, teacher, 1.0, mask).item() == pytest.approx(kl, abs=1e-6)
    # T = 2: logits scaled so the softened distributions are the same -> T^2 * KL
    assert L.soft_label_loss(student, teacher * 2, 2.0, mask).item() == pytest.approx(4 * kl, abs=1e-6)
    assert L.soft_label_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_fitnet_l2_by_hand():
    s = [t(1.0, 2.0).view(1, 2, 1, 1), t(3.0).view(1, 1, 1, 1)]
    z = [torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, 1)]
    assert L.fitnet_loss(s, z).item() == pytest.approx(2.5 + 9.0)


def test_activation_boundary_eq1_by_hand():
    # position 1: teacher on/off, student 0.5/0.5 -> [r(1-0.5), r(1+0.5)] -> 0.25 + 2.25
    # position 2: teacher on/on, student 2/2 (beyond the margin) -> 0
    T = torch.tensor([[1.0, 1.0], [-1.0, 1.0]]).view(1, 2, 1, 2)
    S = torch.tensor([[0.5, 2.0], [0.5, 2.0]]).view(1, 2, 1, 2)
    assert L.activation_boundary_loss([S], [T], margin=1.0).item() == pytest.approx((2.5 + 0.0) / 2)
    # a student outside the margin on the right side of every boundary costs nothing
    assert L.activation_boundary_loss([torch.sign(T) * 3], [T], margin=1.0).item() == 0.0


def test_began_losses_and_k_update_eqs_4_to_6():
    x = torch.zeros(1, 2, 1, 1)
    recon_real = L.began_recon(torch.full_like(x, 0.4), x)
    recon_fake = L.began_recon(torch.full_like(x, -0.6), x)
    assert recon_real.item() == pytest.approx(0.4) and recon_fake.item() == pytest.approx(0.6)
    assert L.began_d_loss(recon_real, recon_fake, k=0.5).item() == pytest.approx(0.4 - 0.5 * 0.6)
    assert L.began_g_loss(recon_fake).item() == pytest.approx(0.6)
    # k_{t+1} = k_t + f_k (n * 0.4 - 0.6) with n = 0.75, f_k = 1e-3
    assert L.began_k_update(0.5, 0.4, 0.6, 0.75, 1e-3) == pytest.approx(0.5 + 1e-3 * (0.3 - 0.6))
    assert L.began_k_update(0.5, 1.0, 0.5, 0.75, 1e-3) == pytest.approx(0.50025)
    assert L.began_k_update(0.0, 0.4, 0.6, 0.75, 1e-3) == 0.0          # clipped to [0, 1], k_0 = 0
    assert L.began_k_update(0.9999, 1.0, 0.0, 0.75, 1e-3) == 1.0


def test_soft_label_normaliser():
    s, te = torch.zeros(1, 3, 2), torch.tensor([[[math.log(3), 0.0]] * 3])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert L.soft_label_loss(s, te, 1.0, normalizer=1.0).item() == pytest.approx(3 * kl, abs=1e-6)
