"""Knowledge distillation for SSD detectors.

* GAN-KD (Chumachenko et al., ISPRS 2020 -- ``papers/gan-knowledge-distillation-ssd.txt``): one PatchGAN
  discriminator per SSD feature map (Tables 2-3), losses (1)-(3), the 4-stage schedule.
* The classic family (``papers/text-nontext-kd.txt`` and its references): Hinton soft labels (eq. 3),
  FitNets L2 hints, activation-boundary pre-training (eq. 1), BEGAN discriminator with k_t (eqs. 4-6).

Methods (distill/kd/methods/) combine with '+' (``--kd gan+soft``) and are weighted by ``--kd-weights``;
distill/kd/session.py runs them through the training loop of distill/engine.py.
"""
from .discriminators import PatchDiscriminator, build_discriminators, layer_specs, output_side
from .methods import METHODS, parse_kd, resolve_weights
from .schedule import GanSchedule
from .session import KDSession
from .teacher import check_compatible, freeze, load_teacher

__all__ = ["PatchDiscriminator", "build_discriminators", "layer_specs", "output_side", "GanSchedule", "KDSession",
           "METHODS", "parse_kd", "resolve_weights", "check_compatible", "freeze", "load_teacher"]
