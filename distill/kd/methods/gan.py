"""GAN-KD (papers/gan-knowledge-distillation-ssd.txt): one PatchGAN discriminator D_i per SSD feature map.

Student step, loss (3): L = sum_i L_GAN_i(G, D_i) + lambda * L_MBOX, with the student ("generator") maps
labelled "real" and every D_i frozen (sec. 5, "Student-Net learning"). Discriminator stages, loss (2):
D_i learns teacher maps = real, student maps = fake, the student frozen (stages 1 and 3).

The schedule compares the epoch's MEAN adversarial loss per map, (1/6) sum_i L_GAN_i, with the threshold
("until the mean adversarial loss per epoch became less than a given threshold"), so the threshold means
the same whatever the number of maps; the loss term itself is the SUM of eq. (3).
"""
from __future__ import annotations

import torch

from .. import losses as L
from ..discriminators import build_discriminators
from .base import DiscriminatorStep, KDMethod, StudentStep, set_requires_grad


class GanKD(KDMethod):
    name = "gan"
    uses_features = True
    has_discriminator = True

    def __init__(self, teacher_channels: list[int], sizes: list[int], *, max_width: int | None = None,
                 conditional: bool = False, output: str = "patch", loss: str = "bce", real_label: float = 1.0):
        super().__init__()
        if loss not in L.GAN_LOSSES:
            raise ValueError(f"--gan-loss must be one of {', '.join(L.GAN_LOSSES)}, got {loss!r}")
        if not 0.5 < real_label <= 1.0:
            raise ValueError(f"--gan-real-label must be in (0.5, 1], got {real_label}")
        self.discs = build_discriminators(teacher_channels, sizes, max_width, cond_channels=3 if conditional else 0,
                                          output=output)
        self.loss, self.real_label = loss, real_label

    def student_terms(self, step: StudentStep):
        set_requires_grad(self.discs, False)
        try:
            logits = [d(f, step.images) for d, f in zip(self.discs, step.student_maps)]
        finally:
            set_requires_grad(self.discs, True)
        per_map = [L.gan_g_loss(lg, self.loss) for lg in logits]
        adv = sum(per_map)
        info = {"adv": adv.item() / len(per_map),
                # D's accuracy on the student's maps while D is frozen (collapse detection)
                "d_acc_student": sum(L.d_accuracy(None, lg)[1] for lg in logits) / len(logits)}
        return {"gan": adv}, info

    def discriminator_terms(self, step: DiscriminatorStep):
        real = [d(t, step.images) for d, t in zip(self.discs, step.teacher_maps)]
        fake = [d(s, step.images) for d, s in zip(self.discs, step.student_maps)]
        d_loss = sum(L.gan_d_loss(r, f, self.loss, self.real_label) for r, f in zip(real, fake))
        accs = [L.d_accuracy(r, f) for r, f in zip(real, fake)]
        info = {"d_acc_real": sum(a[0] for a in accs) / len(accs), "d_acc_fake": sum(a[1] for a in accs) / len(accs)}
        return {"d_gan": d_loss}, info

    def reset_discriminators(self) -> None:
        for m in self.discs.modules():
            if hasattr(m, "reset_parameters") and m is not self.discs:
                m.reset_parameters()
