"""The text / non-text classifier's training objectives (papers/text-nontext-kd.txt, section III.D).

* hard labels: region-level BCE against the region labels of distill/text/regions.py (both grids, M = 34
  regions); a text image whose boxes are unknown (a ``text:DIR`` image without a box file) contributes the
  image-level BCE of its OR-prediction instead, since its regions are unknown;
* stage 1, ``ab``: activation-boundary transfer on the mapped region features (eq. 1, margin u);
* stage 2, ``soft``: eq. 3, region BCE against the teacher's region probabilities; the paper's student loss
  (eq. 2) has no hard-label term, so there is none here (without ``soft`` the hard labels take its place);
* stage 2, ``began``: b x L_G (eqs. 2, 5) with a BEGAN auto-encoder discriminator on the mapped region
  features, trained in alternation with its own optimizer on L_D (eq. 4), k_t updated by eq. 6.

The losses are the ones in distill/kd/losses.py; this module puts them on region features [B, M, D].
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from distill.kd import losses as L
from distill.text.models import region_bce

TEXT_KD_METHODS: tuple[str, ...] = ("ab", "soft", "began")
BEGAN_B = 0.2            # eq. 2: L_Stu = L_K + b L_G, b = 0.2
BEGAN_GAMMA = 0.75       # eq. 6: n, the equilibrium (relaxation) variable
BEGAN_FK = 1e-3          # eq. 6: f_k, the rate of k_t
AB_MARGIN = 1.0          # eq. 1: u (the paper gives no value; Heo et al. 2018 use 1)


def parse_text_kd(spec: str | None) -> list[str]:
    """``'ab+soft+began'`` -> ``['ab', 'soft', 'began']``; ``'none'`` / None -> ``[]``. ValueError on a method the
    text task does not have (the table rows: soft, soft+began, ab+soft+began)."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return []
    names = [s.strip().lower() for s in spec.split("+")]
    bad = [n for n in names if n not in TEXT_KD_METHODS]
    if bad or len(set(names)) != len(names):
        why = f"unknown method '{bad[0]}'" if bad else "a method is named twice"
        raise ValueError(f"--kd {spec!r}: {why}; --task text distils with {', '.join(TEXT_KD_METHODS)} joined by "
                         "'+' (e.g. soft, soft+began, ab+soft+began)")
    return [n for n in TEXT_KD_METHODS if n in names]


def region_stack(out: dict[str, object]) -> torch.Tensor:
    """The mapped region features of all grids, grids in increasing order: float32 [B, M, D] (M = 9 + 25)."""
    feats = out["region_features"]
    return torch.cat([feats[g] for g in sorted(feats)], dim=1)


def hard_loss(out: dict[str, object], regions: dict[int, torch.Tensor], labels: torch.Tensor,
              has_boxes: torch.Tensor) -> torch.Tensor:
    """Region BCE on the images whose region labels are known (``has_boxes`` bool [B]), image-level BCE of the
    OR-logit ``image_logit`` [B] against ``labels`` float [B] on the others; weighted by their shares of B."""
    known = has_boxes.bool()
    total = out["image_logit"].new_zeros(())
    if known.any():
        sub = {"region_logits": {g: v[known] for g, v in out["region_logits"].items()}}
        total = total + region_bce(sub, {g: r[known] for g, r in regions.items()}) * known.float().mean()
    if (~known).any():
        image = F.binary_cross_entropy_with_logits(out["image_logit"][~known], labels[~known].float())
        total = total + image * (~known).float().mean()
    return total


def soft_loss(student_out: dict[str, object], teacher_out: dict[str, object]) -> torch.Tensor:
    """Eq. 3: L_K = -1/M sum_i (l_i log p_i + (1 - l_i) log(1 - p_i)), l_i the teacher's region probability."""
    targets = {g: torch.sigmoid(v.detach()) for g, v in teacher_out["region_logits"].items()}
    return region_bce(student_out, targets)


def ab_loss(student_out: dict[str, object], teacher_out: dict[str, object], margin: float) -> torch.Tensor:
    """Eq. 1 on the mapped region features: the M regions of all images are the positions, D the channels."""
    s = region_stack(student_out).transpose(1, 2).unsqueeze(-1)          # [B, D, M, 1]
    t = region_stack(teacher_out).detach().transpose(1, 2).unsqueeze(-1)
    return L.activation_boundary_loss([s], [t], margin)


class RegionAutoencoder(nn.Module):
    """BEGAN discriminator on region features (sec. III.C: "we use the auto-encoder as the discriminant
    network"; the paper gives no layers): per region D -> D/2 -> D/4 -> D/2 -> D, ELU between (BEGAN's
    activation). ``forward``: [..., D] -> [..., D], the reconstruction."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        h1, h2 = max(8, dim // 2), max(4, dim // 4)
        self.net = nn.Sequential(nn.Linear(dim, h1), nn.ELU(), nn.Linear(h1, h2), nn.ELU(),
                                 nn.Linear(h2, h1), nn.ELU(), nn.Linear(h1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BeganControl:
    """The discriminator side of eqs. 4-6 on region features: ``student_term`` (eq. 5, D frozen),
    ``discriminator_loss`` (eq. 4) and ``update_k`` (eq. 6, k_t clipped to [0, 1], k_0 = 0)."""

    def __init__(self, dim: int, gamma: float = BEGAN_GAMMA, fk: float = BEGAN_FK) -> None:
        self.disc = RegionAutoencoder(dim)
        self.gamma, self.fk, self.k = float(gamma), float(fk), 0.0

    def student_term(self, student_feats: torch.Tensor) -> torch.Tensor:
        """Eq. 5: L_G = 1/M sum_i |D(S_i) - S_i| (mean absolute error over regions and channels); gradients
        reach the student only."""
        for p in self.disc.parameters():
            p.requires_grad_(False)
        try:
            return L.began_g_loss(L.began_recon(self.disc(student_feats), student_feats))
        finally:
            for p in self.disc.parameters():
                p.requires_grad_(True)

    def discriminator_loss(self, teacher_feats: torch.Tensor,
                           student_feats: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """Eq. 4: L_D = |D(T) - T| - k_t |D(S) - S| on detached features; (L_D, |D(T) - T|, |D(S) - S|)."""
        t, s = teacher_feats.detach(), student_feats.detach()
        real, fake = L.began_recon(self.disc(t), t), L.began_recon(self.disc(s), s)
        return L.began_d_loss(real, fake, self.k), float(real.detach()), float(fake.detach())

    def update_k(self, recon_real: float, recon_fake: float) -> float:
        """Eq. 6: k_{t+1} = k_t + f_k (n |D(T) - T| - |D(S) - S|), clipped to [0, 1]."""
        self.k = L.began_k_update(self.k, recon_real, recon_fake, self.gamma, self.fk)
        return self.k
