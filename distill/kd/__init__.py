"""Knowledge distillation for SSD detectors.

* GAN-KD (Chumachenko et al., ISPRS 2020 -- ``papers/gan-knowledge-distillation-ssd.txt``): one PatchGAN
  discriminator per SSD feature map (Tables 2-3), loss (3), the 4-stage schedule.
* The classic family (``papers/text-nontext-kd.txt`` and its references): Hinton soft labels (eq. 3),
  FitNets L2 hints, activation-boundary pre-training (eq. 1), BEGAN discriminator with k_t (eqs. 4-6).

Methods combine with '+' (``--kd gan+soft``) and are weighted by ``--kd-weights``.
"""
from .discriminators import PatchDiscriminator, build_discriminators, layer_specs, output_side
from .schedule import GanSchedule
from .session import KD_FIELDS, METHODS, KDSession, parse_kd, resolve_weights
from .teacher import check_compatible, freeze, load_teacher

__all__ = ["PatchDiscriminator", "build_discriminators", "layer_specs", "output_side", "GanSchedule", "KDSession",
           "KD_FIELDS", "METHODS", "parse_kd", "resolve_weights", "check_compatible", "freeze", "load_teacher"]
