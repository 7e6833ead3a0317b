"""Distillation losses as pure tensor functions. Each returns a scalar; the session names and weights them.

Feature maps: lists of six float32 [B, C_k, H_k, W_k] tensors in the TEACHER's channel space
(student maps go through the 1x1 adapters first). Class logits: float32 [B, N, C + 1] over the
anchors, which teacher and student share (same generator, same map sizes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


# --- GAN-KD paper, eq. (2): binary cross-entropy adversarial loss -------------------------------------------

GAN_LOSSES = ("bce", "lsgan")


def gan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "bce",
               real_label: float = 1.0) -> torch.Tensor:
    """Discriminator side of eq. (2): -[log D(y) + log(1 - D(G(x)))], averaged over patches.
    ``real_logits`` = D(teacher map), ``fake_logits`` = D(adapted student map), both pre-sigmoid.

    Options (not in the paper): ``real_label`` < 1 is one-sided label smoothing of the real target
    (Salimans et al. 2016); ``kind="lsgan"`` replaces the cross-entropy by least squares on the raw
    outputs, (D(y) - 1)^2 + D(G(x))^2 (Mao et al. 2017), whose gradient does not vanish when D wins."""
    if kind == "lsgan":
        return (real_logits - real_label).pow(2).mean() + fake_logits.pow(2).mean()
    return (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_label))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def gan_g_loss(fake_logits: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Generator (student) side: the student map is labelled "real" (paper, sec. 5 "Student-Net learning"),
    i.e. -log D(G(x)) -- the non-saturating form of eq. (2); (D(G(x)) - 1)^2 with ``kind="lsgan"``."""
    if kind == "lsgan":
        return (fake_logits - 1.0).pow(2).mean()
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


# --- GAN-KD paper eq. (1): the reconstruction term L_REC -----------------------------------------------------

REC_KINDS = ("pearson", "mse")


def reconstruction_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor], kind: str = "pearson",
                        masks: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Eq. (1)'s L_REC between (standardised) adapted student and teacher maps, summed over the maps given.

    ``kind="pearson"``: 1 - Pearson correlation of each image's map (all channels and positions), averaged
    over the batch: insensitive to a per-image scale / offset, in [0, 2]. ``kind="mse"``: mean squared error
    (the maps are standardised with the teacher's statistics, so this is a standardised MSE).
    ``masks``: per map, an optional [B, 1, H, W] float weight in [0, 1] -- e.g. the locations near
    ground-truth boxes (Wang et al. 2019, "fine-grained feature imitation"); the loss is then the
    masked mean over the weighted locations.
    """
    if kind not in REC_KINDS:
        raise ValueError(f"reconstruction loss must be one of {REC_KINDS}, got {kind!r}")
    total = student_maps[0].new_zeros(())
    for k, (s, t) in enumerate(zip(student_maps, teacher_maps)):
        s, t = s.float(), t.float()
        w = masks[k] if masks is not None else None
        w = torch.ones_like(s[:, :1]) if w is None else w.float()
        w = w.expand_as(s)
        denom = w.flatten(1).sum(1).clamp_min(1e-6)                    # [B]
        if kind == "mse":
            total = total + ((s - t).pow(2) * w).flatten(1).sum(1).div(denom).mean()
            continue
        ms = (s * w).flatten(1).sum(1).div(denom).view(-1, 1, 1, 1)
        mt = (t * w).flatten(1).sum(1).div(denom).view(-1, 1, 1, 1)
        cov = ((s - ms) * (t - mt) * w).flatten(1).sum(1)
        var_s = ((s - ms).pow(2) * w).flatten(1).sum(1)
        var_t = ((t - mt).pow(2) * w).flatten(1).sum(1)
        total = total + (1 - cov / (var_s * var_t).clamp_min(1e-12).sqrt()).mean()
    return total


def box_masks(targets: list[dict], sizes: list[tuple[int, int]], device) -> list[torch.Tensor]:
    """[B, 1, H, W] masks per map size: 1 on the cells whose centre lies inside a ground-truth box (the training
    targets' ``boxes`` [K, 4], normalised xyxy in [0, 1]), 0 elsewhere."""
    out = []
    for h, w in sizes:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        m = torch.zeros(len(targets), 1, h, w, device=device)
        for b, t in enumerate(targets):
            boxes = t["boxes"].to(device).float().view(-1, 4)
            if not len(boxes):
                continue
            inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] <= boxes[:, 3:4])      # [K, H]
            inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] <= boxes[:, 2:3])      # [K, W]
            m[b, 0] = (inside_y[:, :, None] & inside_x[:, None, :]).any(0).float()
        out.append(m)
    return out


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
