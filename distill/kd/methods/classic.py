"""The classic distillation family: soft labels, FitNets hints, eq. (1)'s reconstruction term, activation
boundaries, and the BEGAN auto-encoder discriminator (papers/text-nontext-kd.txt and its references)."""
from __future__ import annotations

import torch
from torch import nn

from ... import distributed
from ...losses import IGNORE
from .. import losses as L
from ..features import BeganAutoencoder
from .base import DiscriminatorStep, KDMethod, StudentStep, calibrated_scale, set_requires_grad


class SoftLabels(KDMethod):
    """Hinton et al. 2015 / text-nontext eq. (3): T^2 KL(teacher || student) on the class logits of every
    non-ignored anchor, normalised by the number of positive anchors (the multibox loss's normaliser)."""

    name = "soft"

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def student_terms(self, step: StudentStep):
        at = step.anchor_targets
        loss = L.soft_label_loss(step.conf, step.teacher_logits, self.temperature, at.labels != IGNORE,
                                 (at.labels > 0).sum().clamp_min(1).float())
        return {"soft": loss}, {}


class FitNets(KDMethod):
    """Romero et al. 2014: L2 hints between adapted student maps and teacher maps, all six maps."""

    name = "fitnet"
    uses_features = True

    def student_terms(self, step: StudentStep):
        return {"fitnet": L.fitnet_loss(step.student_maps, step.teacher_maps)}, {}


class Reconstruction(KDMethod):
    """GAN-KD eq. (1): L = L_GAN + L_REC. The paper replaces L_REC by the task loss; ``--kd gan+rec`` adds the
    feature term back: Pearson (or standardised MSE) between adapted student and teacher maps on the
    high-resolution maps (``maps``, default the first two), optionally only near ground-truth boxes
    (``masked``: Wang et al. 2019, fine-grained feature imitation).

    ``init_ratio`` calibrates the term once: at its first step it is scaled to ``init_ratio`` x the detection
    loss of that step (the scale is then frozen and saved), so the term starts at a known share of the
    objective whatever the maps' statistics; the method's ``--kd-weights`` entry multiplies on top.
    """

    name = "rec"
    uses_features = True

    def __init__(self, maps: list[int], kind: str = "pearson", masked: bool = False, init_ratio: float = 0.75):
        super().__init__()
        if kind not in L.REC_KINDS:
            raise ValueError(f"--rec-loss must be one of {', '.join(L.REC_KINDS)}, got {kind!r}")
        self.maps, self.kind, self.masked, self.init_ratio = list(maps), kind, masked, float(init_ratio)
        self.scale: float | None = None

    def student_terms(self, step: StudentStep):
        s = [step.student_maps[k] for k in self.maps]
        t = [step.teacher_maps[k] for k in self.maps]
        masks = L.box_masks(step.targets, [tuple(x.shape[-2:]) for x in t], t[0].device) if self.masked else None
        raw = L.reconstruction_loss(s, t, self.kind, masks)
        if self.scale is None:
            self.scale = calibrated_scale(step, raw.item(), self.init_ratio)
        return {"rec": raw * self.scale}, {"rec_raw": raw.item()}

    def extra_state(self) -> dict:
        return {"rec_scale": self.scale}

    def load_extra_state(self, state: dict) -> None:
        self.scale = state.get("rec_scale")


class ActivationBoundary(KDMethod):
    """Text-nontext eq. (1) (Heo et al. 2018): activation-boundary transfer, run as a pre-training stage
    (``ab_init``) of the student and adapters on raw (not standardised) maps, since it transfers the SIGN of
    the teacher's activations."""

    name = "ab"
    uses_features = True

    def __init__(self, margin: float):
        super().__init__()
        self.margin = margin

    def student_terms(self, step: StudentStep):
        return {}, {}                       # only in its own stage: see pretrain_terms

    def pretrain_terms(self, adapted_raw: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> dict:
        return {"ab": L.activation_boundary_loss(adapted_raw, teacher_feats, self.margin)}


class Began(KDMethod):
    """Text-nontext eqs. (4)-(6): one BEGAN auto-encoder discriminator per map; the student minimises the
    reconstruction error of its maps (eq. 5), D is trained after every student step (sec. IV-B) and in the
    discriminator stages, with the k_t equilibrium control of eq. (6)."""

    name = "began"
    default_weight = 0.2                     # b of the text-nontext paper, eq. (2)
    uses_features = True
    has_discriminator = True

    def __init__(self, teacher_channels: list[int], gamma: float, fk: float):
        super().__init__()
        self.autoencoders = nn.ModuleList(BeganAutoencoder(c) for c in teacher_channels)
        self.gamma, self.fk = gamma, fk
        self.k = [0.0] * len(teacher_channels)         # k_0 = 0 (text-nontext paper, after eq. (5))
        self._last: tuple[list[float], list[float]] | None = None

    def student_terms(self, step: StudentStep):
        set_requires_grad(self.autoencoders, False)
        try:
            recon = [L.began_recon(ae(f), f) for ae, f in zip(self.autoencoders, step.student_maps)]
        finally:
            set_requires_grad(self.autoencoders, True)
        return {"began": sum(L.began_g_loss(r) for r in recon)}, {}

    def discriminator_terms(self, step: DiscriminatorStep):
        rr = [L.began_recon(ae(t), t) for ae, t in zip(self.autoencoders, step.teacher_maps)]
        rf = [L.began_recon(ae(s), s) for ae, s in zip(self.autoencoders, step.student_maps)]
        values = distributed.all_reduce_mean([r.item() for r in rr] + [f.item() for f in rf])   # k_t: one for all
        self._last = (values[:len(rr)], values[len(rr):])
        return {"d_began": sum(L.began_d_loss(r, f, k) for r, f, k in zip(rr, rf, self.k))}, {}

    def after_discriminator_step(self, info: dict[str, float]) -> None:
        if self._last is not None:
            self.k = [L.began_k_update(k, r, f, self.gamma, self.fk) for k, r, f in zip(self.k, *self._last)]
            info["began_k"] = sum(self.k) / len(self.k)

    def extra_state(self) -> dict:
        return {"began_k": list(self.k)}

    def load_extra_state(self, state: dict) -> None:
        if state.get("began_k") is not None:
            self.k = list(state["began_k"])
