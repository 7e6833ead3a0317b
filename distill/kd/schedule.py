"""The GAN-KD training schedule (paper, sec. 5 "Training") as a small explicit state machine.

Stages, in order::

    ab_init     (optional) activation-boundary pre-training of the student, ``ab_iters`` iterations
                (text-nontext paper, "pre-training stage"; only with --kd ...+ab)
    d_pretrain  1) discriminator pre-learning: ``d_pretrain_iters`` (75) iterations, adversarial loss (2)
                   only, student frozen
    student     2) student learning with frozen discriminators, loss (3); left at an epoch end when the
                   epoch's mean adversarial loss < ``threshold`` (5e-4) or after ``student_max_epochs``,
                   -- or, when ``student_max_iters`` > 0, after that many iterations instead of the epoch cap
    d_finetune  3) discriminator fine-tuning: ``d_finetune_iters`` (75) iterations, student frozen
                4) 2 -> 3 -> 2 ... until ``adversarial_epochs`` epochs are done, then
    post        student post-learning: plain SSD loss, SGD (lr 5e-4, / 10 every 20 epochs)

The schedule only counts: the session (distill/kd/session.py) runs the iteration stages (ab_init,
d_pretrain, d_finetune) on batches of their own, so an epoch is always one full pass of student (or
post-learning) steps and a distillation run takes exactly as many student steps as its baseline. The
whole state is a plain dict saved in checkpoints (``gan_state``): a resumed run continues in the same
stage.

``student_max_iters`` is not in the paper. There a frozen discriminator faces one stage-2 round of up to
an epoch of ~500 iterations (VOC, batch 32) x many rounds; on a run of a few hundred iterations an
epoch-long round lets the student learn to fool a stale discriminator (measured on the quick preset: a
freshly trained D separates teacher and student maps on held-out images 100 % of the time after 15
iterations, yet by the end of an epoch-long round it calls 75-85 % of student maps "real"), so short
presets refresh D every ``student_max_iters`` student iterations.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

STAGES = ("ab_init", "d_pretrain", "student", "d_finetune", "post")
ITERATION_STAGES = ("ab_init", "d_pretrain", "d_finetune")


@dataclass
class GanSchedule:
    adversarial_epochs: int
    d_pretrain_iters: int = 75
    d_finetune_iters: int = 75
    threshold: float = 5e-4
    student_max_epochs: int = 10
    ab_iters: int = 0
    student_max_iters: int = 0  # 0: rounds end only at epoch ends
    # state
    stage: str = ""
    stage_iters: int = 0        # iterations done in the current iteration stage
    stage_epochs: int = 0       # epochs (ends) seen in the current student stage
    rounds: int = 0             # completed student stages
    history: list = field(default_factory=list)   # [{"epoch", "from", "to", "why"}]

    def __post_init__(self):
        if not self.stage:
            self.stage = "ab_init" if self.ab_iters > 0 else "d_pretrain"
            self._skip_empty(epoch=0)
            if self.adversarial_epochs <= 0:
                self.stage = "post"

    def length(self, stage: str) -> int:
        """Iterations of an iteration stage (-1 for the others)."""
        return {"ab_init": self.ab_iters, "d_pretrain": self.d_pretrain_iters,
                "d_finetune": self.d_finetune_iters}.get(stage, -1)

    def _go(self, to: str, epoch: int, why: str) -> None:
        self.history.append({"epoch": epoch, "from": self.stage, "to": to, "why": why})
        self.stage, self.stage_iters, self.stage_epochs = to, 0, 0
        self._skip_empty(epoch)

    def _skip_empty(self, epoch: int) -> None:
        """Zero-length iteration stages are passed straight through."""
        while self.stage in ITERATION_STAGES and self.length(self.stage) <= 0:
            nxt = "d_pretrain" if self.stage == "ab_init" else "student"
            self.history.append({"epoch": epoch, "from": self.stage, "to": nxt, "why": "0 iterations configured"})
            self.stage = nxt

    def after_iteration(self, epoch: int) -> None:
        """Call once per training iteration (epoch = 0-based epoch index it belonged to)."""
        if self.stage == "student" and self.student_max_iters > 0:
            self.stage_iters += 1
            if self.stage_iters >= self.student_max_iters:
                self._go("d_finetune", epoch, f"cap of {self.student_max_iters} student iterations")
                self.rounds += 1
            return
        if self.stage not in ITERATION_STAGES:
            return
        self.stage_iters += 1
        if self.stage_iters >= self.length(self.stage):
            nxt = "d_pretrain" if self.stage == "ab_init" else "student"
            self._go(nxt, epoch, f"{self.stage_iters} iterations done")

    def after_epoch(self, epoch: int, mean_adversarial: float | None) -> None:
        """Call at the end of 0-based epoch ``epoch`` with the mean adversarial loss of the student steps
        of that epoch (None when the epoch had no student step or no adversarial term)."""
        if self.stage == "student":
            self.stage_epochs += 1
            if mean_adversarial is not None and mean_adversarial < self.threshold:
                self._go("d_finetune", epoch, f"mean adversarial loss {mean_adversarial:.2e} < {self.threshold:g}")
            elif self.student_max_iters <= 0 and self.stage_epochs >= self.student_max_epochs:
                self._go("d_finetune", epoch, f"cap of {self.student_max_epochs} student epochs")
            if self.stage != "student":
                self.rounds += 1
        if epoch + 1 >= self.adversarial_epochs and self.stage != "post":
            self._go("post", epoch, f"{self.adversarial_epochs} adversarial epochs done")

    def restart(self, epoch: int, why: str) -> None:
        """Back to discriminator pre-learning (used by collapse recovery)."""
        if self.stage != "post":
            self._go("d_pretrain", epoch, why)

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "GanSchedule":
        return cls(**state)
