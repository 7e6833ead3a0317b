"""Guards against silently broken runs: non-finite losses (every run) and discriminator collapse (GAN-KD).

One policy for plain training and distillation alike (each event is logged with every loss term; a
distillation run keeps the events in its checkpoint's ``gan_state``):

* non-finite loss: the step is SKIPPED (no optimizer step); after ``max_skips`` consecutive skips the
  session ROLLS BACK to the last good state (end of the last finite epoch) and halves every
  learning rate; after ``max_rollbacks`` rollbacks it stops with :class:`NonFiniteLossError`
  printing the loss dict.
  The good state is taken at every epoch end (:meth:`TrainingGuard.commit`).
* collapse: the frozen discriminators still call >= 99.9 % of the student's patches "fake" for
  ``patience`` consecutive student epochs (D accuracy pinned at 100 %: the adversarial signal is
  not being followed). The session re-initialises the discriminators with half their learning rate
  and goes back to discriminator pre-learning.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from tqdm import tqdm

from . import distributed


class NonFiniteLossError(RuntimeError):
    pass


def format_terms(terms: dict) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())


@dataclass
class StabilityMonitor:
    max_skips: int = 5
    max_rollbacks: int = 3
    patience: int = 3
    pinned: float = 0.999
    consecutive_skips: int = 0
    rollbacks: int = 0
    skipped_total: int = 0
    pinned_epochs: int = 0
    collapses: int = 0
    events: list = field(default_factory=list)

    def log(self, epoch: int, kind: str, msg: str) -> None:
        self.events.append({"epoch": epoch, "kind": kind, "msg": msg})
        tqdm.write(f"[kd:{kind}] epoch {epoch + 1}: {msg}")

    def step_ok(self) -> None:
        self.consecutive_skips = 0

    def non_finite(self, epoch: int, step: int, what: str, terms: dict) -> str:
        """Record a non-finite loss; returns the action: 'skip' or 'rollback' (or raises)."""
        self.consecutive_skips += 1
        self.skipped_total += 1
        detail = f"non-finite {what} loss at step {step}: {format_terms(terms)}"
        if self.consecutive_skips < self.max_skips:
            self.log(epoch, "skip", detail + " -> step skipped")
            return "skip"
        if self.rollbacks >= self.max_rollbacks:
            raise NonFiniteLossError(f"{detail}; still non-finite after {self.rollbacks} rollbacks")
        self.rollbacks += 1
        self.consecutive_skips = 0
        self.log(epoch, "rollback", detail + f" -> {self.max_skips} in a row: rolling back to the last good "
                 f"state and halving the learning rates (rollback {self.rollbacks}/{self.max_rollbacks})")
        return "rollback"

    def end_of_student_epoch(self, epoch: int, d_acc_fake: float | None) -> bool:
        """True when the discriminators have been pinned at 100 % for ``patience`` student epochs."""
        if d_acc_fake is None:
            return False
        self.pinned_epochs = self.pinned_epochs + 1 if d_acc_fake >= self.pinned else 0
        if self.pinned_epochs >= self.patience:
            self.pinned_epochs = 0
            self.collapses += 1
            self.log(epoch, "collapse", f"discriminators pinned at {100 * d_acc_fake:.1f} % accuracy on the student for "
                     f"{self.patience} epochs -> re-initialising them at half learning rate, back to D pre-learning")
            return True
        return False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


class TrainingGuard:
    """Applies the non-finite policy of :class:`StabilityMonitor` to a set of stateful objects.

    ``stateful()`` returns name -> object with ``state_dict()`` / ``load_state_dict()`` (modules, optimizers,
    LR schedulers); on a rollback they are restored to the last :meth:`commit` and every optimizer's (and
    scheduler's base) learning rate is halved.
    """

    def __init__(self, monitor: StabilityMonitor, stateful: Callable[[], dict[str, Any]]):
        self.monitor, self._stateful = monitor, stateful
        self._good: dict[str, Any] = {}
        self.commit()

    def commit(self) -> None:
        self._good = {k: copy.deepcopy(o.state_dict()) for k, o in self._stateful().items() if o is not None}

    def finite(self, terms: dict[str, torch.Tensor], epoch: int, step: int, what: str) -> bool:
        """True when the sum of ``terms`` is finite (on every rank under torchrun: one decision for all);
        otherwise skips (False) or rolls back (False) or raises."""
        total = sum(terms.values())
        if distributed.all_true(bool(torch.isfinite(total))):
            self.monitor.step_ok()
            return True
        if self.monitor.non_finite(epoch, step, what, terms) == "rollback":
            self.rollback()
        return False

    def rollback(self) -> None:
        objs = {k: o for k, o in self._stateful().items() if o is not None}
        for k, o in objs.items():
            o.load_state_dict(self._good[k])
        for o in objs.values():
            for g in getattr(o, "param_groups", []):
                g["lr"] *= 0.5
            if hasattr(o, "base_lrs"):
                o.base_lrs = [lr * 0.5 for lr in o.base_lrs]
        self.commit()      # the halved learning rates are part of the good state now
