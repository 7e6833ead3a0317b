"""Distillation methods, one small object each; ``--kd a+b`` builds them from the config's ``kd`` section.

| name   | what                                                     | paper                              |
|--------|----------------------------------------------------------|------------------------------------|
| gan    | PatchGAN discriminator per feature map, loss (2)/(3)     | GAN-KD (Tables 2-3, eqs. 2-3)      |
| rec    | eq. (1)'s L_REC on the high-resolution maps              | GAN-KD eq. (1); Wang et al. 2019   |
| soft   | soft labels, T^2 KL on class logits                      | Hinton 2015; text-nontext eq. (3)  |
| fitnet | L2 hints on all maps                                     | Romero et al. 2014                 |
| began  | BEGAN auto-encoder discriminators with k_t control       | text-nontext eqs. (4)-(6)          |
| ab     | activation-boundary pre-training stage                   | text-nontext eq. (1)               |
| sr     | feature super-resolution: generator G, two-head D        | small-object gen./discr. slides    |
"""
from __future__ import annotations

from runtime.errors import unknown_name_error

from .base import DiscriminatorStep, KDMethod, LazyOutputs, StudentStep, set_requires_grad
from .classic import ActivationBoundary, Began, FitNets, Reconstruction, SoftLabels
from .gan import GanKD
from .sr import SuperResolutionKD

METHOD_CLASSES: dict[str, type[KDMethod]] = {c.name: c for c in (GanKD, Reconstruction, SoftLabels, FitNets, Began,
                                                                   ActivationBoundary, SuperResolutionKD)}
# Method -> default weight (began's 0.2 is b of the text-nontext paper, eq. (2)).
METHODS: dict[str, float] = {name: cls.default_weight for name, cls in METHOD_CLASSES.items()}


def parse_kd(spec: str | None) -> list[str]:
    """'gan+soft' -> ['gan', 'soft']; 'none' -> []. Unknown names get a did-you-mean."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return []
    names = [s.strip().lower() for s in spec.split("+")]
    for n in names:
        if n not in METHODS:
            err = unknown_name_error("method", n, METHODS)
            raise ValueError(f"--kd {spec!r}: {err} (joined by '+')")
    if len(set(names)) != len(names):
        raise ValueError(f"--kd {spec!r}: a method is named twice")
    return names


def resolve_weights(methods: list[str], given: dict) -> dict[str, float]:
    for k in given:
        if k not in METHODS:
            raise ValueError(f"--kd-weights: {unknown_name_error('method', k, METHODS)}")
    return {m: float(given.get(m, METHODS[m])) for m in methods}


def build_method(name: str, kd, teacher_channels: list[int], sizes: list[int],
                 student_channels: list[int] | None = None) -> KDMethod:
    """One method from the config's ``kd`` section (field names: distill/config.py)."""
    if name == "gan":
        return GanKD(teacher_channels, sizes, max_width=kd.disc_max_width, conditional=kd.gan_conditional,
                     output=kd.gan_disc_output, loss=kd.gan_loss, real_label=kd.gan_real_label)
    if name == "rec":
        bad = [k for k in kd.rec_maps if not 0 <= int(k) < len(teacher_channels)]
        if bad or not kd.rec_maps:
            raise ValueError(f"--rec-maps {kd.rec_maps}: map indices must be in 0..{len(teacher_channels) - 1}")
        return Reconstruction([int(k) for k in kd.rec_maps], kd.rec_loss, kd.rec_masked, kd.rec_init_ratio)
    if name == "soft":
        return SoftLabels(kd.temperature)
    if name == "fitnet":
        return FitNets()
    if name == "began":
        return Began(teacher_channels, kd.began_gamma, kd.began_fk)
    if name == "ab":
        return ActivationBoundary(kd.ab_margin)
    if name == "sr":
        bad = [k for k in kd.sr_maps if not 0 <= int(k) < len(teacher_channels)]
        if bad or not kd.sr_maps:
            raise ValueError(f"--sr-maps {kd.sr_maps}: map indices must be in 0..{len(teacher_channels) - 1}")
        return SuperResolutionKD(student_channels or teacher_channels, teacher_channels,
                                 maps=[int(k) for k in kd.sr_maps], source=kd.sr_source, target=kd.sr_target,
                                 alpha=kd.sr_alpha, beta=kd.sr_beta, gamma=kd.sr_gamma, width=kd.sr_width,
                                 blocks=kd.sr_blocks, small=kd.sr_small, mse_weight=kd.sr_mse_weight,
                                 tv_weight=kd.sr_tv_weight, keep_g=kd.sr_keep_g, init_ratio=kd.sr_init_ratio,
                                 region=kd.sr_region, grad=kd.sr_grad)
    raise unknown_name_error("method", name, METHODS)


__all__ = ["METHOD_CLASSES", "METHODS", "parse_kd", "resolve_weights", "build_method", "KDMethod", "StudentStep",
           "DiscriminatorStep", "LazyOutputs", "set_requires_grad", "GanKD", "Reconstruction", "SoftLabels", "FitNets",
           "Began", "ActivationBoundary", "SuperResolutionKD"]
