"""What every distillation method sees and returns.

A method is a small ``nn.Module`` (it may own trainable parts: discriminators, auto-encoders). In a student
step it reads a :class:`StudentStep` -- the batch, the student's outputs, and the teacher's outputs and the
feature maps in the shared, standardised space, each computed once and only when a method asks for it --
and returns a dict of named, UNWEIGHTED loss terms plus a dict of numbers to log. The session weights the
terms (``--kd-weights``), logs every one by name, and steps them with the distillation optimizer, apart
from the detection terms (see distill/kd/session.py).

Methods with a discriminator also implement :meth:`KDMethod.discriminator_terms`, run in the schedule's
discriminator stages (and, for BEGAN, after every student step) on a :class:`DiscriminatorStep`.
"""
from __future__ import annotations

import abc
from typing import Any, Callable

import torch
from torch import nn

from ... import distributed


class LazyOutputs:
    """Values computed on first access and cached: ``get(name)`` calls the producer registered for it with
    ``get`` itself, so a producer reads the values it depends on (``lambda get: f(get("teacher"))``) without
    closing over this object: no reference cycle forms, and a step's autograd graph is freed as soon as the
    step is dropped (reference counting), not when Python's cyclic collector next runs."""

    def __init__(self, producers: dict[str, Callable[[Callable[[str], Any]], Any]]):
        self._producers, self._cache = producers, {}

    def get(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = self._producers[name](self.get)
        return self._cache[name]


def calibrated_scale(step: "StudentStep", raw: float, ratio: float) -> float:
    """The factor that makes a term whose unscaled value at this step is ``raw`` start at ``ratio`` x this step's
    detection loss (means over ranks: the same factor on every rank). Distillation terms whose scale depends on
    the maps' statistics are calibrated once with it, then frozen and saved (``extra_state``)."""
    det, raw_mean = distributed.all_reduce_mean([sum(v.item() for v in step.det.values()), raw])
    return ratio * det / max(raw_mean, 1e-8)


class StudentStep:
    """One student iteration.

    Attributes: ``images`` float32 [B, 3, S, S], ``targets`` (list of dicts, boxes normalised xyxy),
    ``loc`` [B, N, 4], ``conf`` [B, N, C + 1], ``feats`` (six student maps), ``anchor_targets``
    (matched anchors, distill.losses.AnchorTargets), ``det`` (the multibox terms {"loc", "cls"}).
    Lazily: ``teacher_logits`` [B, N, C + 1], ``teacher_feats`` (raw teacher maps), ``student_maps`` /
    ``teacher_maps`` (adapted student / teacher maps in the teacher's channel space, standardised with
    the teacher's frozen statistics), ``adapted_raw`` (adapted student maps before standardisation).
    """

    def __init__(self, images, targets, loc, conf, feats, anchor_targets, det, lazy: LazyOutputs):
        self.images, self.targets, self.loc, self.conf, self.feats = images, targets, loc, conf, feats
        self.anchor_targets, self.det, self._lazy = anchor_targets, det, lazy

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._lazy.get(name)
        except KeyError:
            raise AttributeError(name) from None


class DiscriminatorStep:
    """One discriminator iteration: ``images``, ``teacher_maps`` (real) and ``student_maps`` (fake, detached),
    both standardised in the teacher's space, as in :class:`StudentStep`."""

    def __init__(self, images, teacher_maps: list[torch.Tensor], student_maps: list[torch.Tensor], targets=None):
        self.images, self.teacher_maps, self.student_maps = images, teacher_maps, student_maps
        self.targets = targets          # the batch's targets where the stage has them (else None)


class KDMethod(nn.Module, abc.ABC):
    """Base class. Class attributes: ``name`` (the ``--kd`` token), ``default_weight``, ``uses_features``
    (needs adapters + standardised maps), ``has_discriminator``."""

    name: str = ""
    default_weight: float = 1.0
    uses_features: bool = False
    has_discriminator: bool = False

    @abc.abstractmethod
    def student_terms(self, step: StudentStep) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Unweighted named loss terms of one student step, and numbers to log."""

    def discriminator_terms(self, step: DiscriminatorStep) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return {}, {}

    def after_discriminator_step(self, info: dict[str, float]) -> None:
        """Called after a successful discriminator update (BEGAN's k_t control)."""

    def extra_state(self) -> dict:
        """Plain values saved in the checkpoint's ``gan_state`` (not tensors of modules)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def attach(self, session, frozen_bn) -> None:
        """Called once by the session after its adapters and standardisation exist (``frozen_bn``: the
        context manager that keeps a model's BatchNorm running statistics untouched)."""

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """What the discriminator optimizer steps: all parameters of a method with a discriminator."""
        return list(self.parameters()) if self.has_discriminator else []

    def student_side_parameters(self) -> list[nn.Parameter]:
        """Training-only parameters stepped with the method's distillation optimizer (e.g. a generator)."""
        return []

    def describe(self) -> str:
        """One line for the run's start message ('' for none)."""
        return ""


def set_requires_grad(module: nn.Module | None, flag: bool) -> None:
    if module is not None:
        for p in module.parameters():
            p.requires_grad_(flag)
