"""Distillation losses as pure tensor functions. Each returns a scalar; the session names and weights them.

Feature maps: lists of six float32 [B, C_k, H_k, W_k] tensors in the TEACHER's channel space
(student maps go through the 1x1 adapters first). Class logits: float32 [B, N, C + 1] over the
anchors, which teacher and student share (same generator, same map sizes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


# --- GAN-KD paper, eq. (2): binary cross-entropy adversarial loss -------------------------------------------

def gan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator side of eq. (2): -[log D(y) + log(1 - D(G(x)))], averaged over patches.
    ``real_logits`` = D(teacher map), ``fake_logits`` = D(adapted student map), both pre-sigmoid."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def gan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator (student) side: the student map is labelled "real" (paper, sec. 5 "Student-Net learning"),
    i.e. -log D(G(x)) -- the non-saturating form of eq. (2)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


@torch.no_grad()
def d_accuracy(real_logits: torch.Tensor | None, fake_logits: torch.Tensor | None) -> tuple[float | None, float | None]:
    """Fraction of patches the discriminator gets right on real (logit > 0) and on fake (logit < 0)."""
    acc_r = (real_logits > 0).float().mean().item() if real_logits is not None else None
    acc_f = (fake_logits < 0).float().mean().item() if fake_logits is not None else None
    return acc_r, acc_f


# --- Hinton et al. 2015 / text-nontext paper eq. (3): soft labels ------------------------------------------

def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                    mask: torch.Tensor | None = None, normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per anchor, summed over the anchors in ``mask`` ([B, N] bool) and
    divided by ``normalizer`` (default: their number, i.e. the mean). The session passes the number of
    positive anchors, the normaliser of the multibox loss, so both terms live on the same scale.

    Eq. (3) of the text-nontext paper is the two-class cross-entropy with the teacher's probability as
    target; for C + 1 classes that is -sum_c p_t log p_s = KL + H(p_t). We report the KL (zero when the
    student matches the teacher); H(p_t) does not depend on the student, so the gradients are identical.
    The T^2 factor keeps gradient magnitudes independent of T (Hinton et al. 2015, sec. 2).
    """
    t = float(temperature)
    log_ps = F.log_softmax(student_logits.float() / t, -1)
    log_pt = F.log_softmax(teacher_logits.float() / t, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)          # [B, N]
    if mask is not None:
        kl = kl[mask]
    if not kl.numel():
        return student_logits.sum() * 0.0
    return kl.sum() / (kl.numel() if normalizer is None else normalizer) * t * t


# --- FitNets (Romero et al. 2014): L2 hints ------------------------------------------------------------------

def fitnet_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum over maps of the mean squared error between adapted student and teacher features."""
    return sum(F.mse_loss(s.float(), t.float()) for s, t in zip(student_maps, teacher_maps))


# --- text-nontext paper eq. (1) (Heo et al. 2018): activation-boundary transfer ---------------------------

def activation_boundary_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor],
                             margin: float) -> torch.Tensor:
    """Eq. (1): L_A = 1/M sum_i || d(T_i) * r(u - S_i) + (1 - d(T_i)) * r(u + S_i) ||_2^2, summed over maps.

    i runs over spatial positions (x batch) -- the paper's "sub-regions" -- and the norm over channels.
    d(T) = 1 where the teacher neuron is ACTIVE (T > 0). The paper's text states the opposite convention,
    but its own next paragraph (student pushed to +u where the teacher fires, to -u where it does not)
    and Heo et al. 2018 need d = 1[T > 0]; we follow those.
    """
    u = float(margin)
    total = 0.0
    for s, t in zip(student_maps, teacher_maps):
        s, t = s.float(), t.float()
        d = (t > 0).float()
        v = d * F.relu(u - s) + (1 - d) * F.relu(u + s)      # [B, C, H, W]
        total = total + v.pow(2).sum(1).mean()                # ||.||^2 over channels, mean over (B, H, W)
    return total


# --- text-nontext paper eqs. (4)-(6): BEGAN auto-encoder discriminator --------------------------------------

def began_recon(d_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1/M sum_i |D(x_i) - x_i|: mean absolute reconstruction error."""
    return (d_out.float() - x.float()).abs().mean()


def began_d_loss(recon_real: torch.Tensor, recon_fake: torch.Tensor, k: float) -> torch.Tensor:
    """Eq. (4): L_D = |D(T) - T| - k_t |D(S) - S|."""
    return recon_real - k * recon_fake


def began_g_loss(recon_fake: torch.Tensor) -> torch.Tensor:
    """Eq. (5): L_G = |D(S) - S|."""
    return recon_fake


def began_k_update(k: float, recon_real: float, recon_fake: float, gamma: float, lambda_k: float) -> float:
    """Eq. (6): k_{t+1} = k_t + f_k (n |D(T) - T| - |D(S) - S|), clipped to [0, 1] as in BEGAN (Berthelot 2017).
    ``gamma`` is the paper's n (0.75), ``lambda_k`` its f_k (1e-3)."""
    return float(min(1.0, max(0.0, k + lambda_k * (gamma * float(recon_real) - float(recon_fake)))))
