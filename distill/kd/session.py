"""A distillation run: teacher, student, adapters, methods, optimizers and the stage schedule.

``fit`` (distill/train.py) owns the run folder, evaluation and checkpoints; it trains through the same
loop as a plain run (``distill.engine.train_one_epoch``), with this session's ``step`` and its
``before_batch`` hook, where the GAN-KD schedule runs its discriminator stages.

Objective in the student stage (GAN-KD paper, eq. (3), extended by the other methods)::

    L = lambda * L_MBOX                           SSD multibox loss (loc + cls)         -> detection optimizer
      + sum_m w_m * L_m                           every --kd method's named terms        -> distillation optimizer
        (gan: sum_i L_GAN_i(G, D_i), eq. (2) with the student maps labelled "real", D_i frozen;
         rec: eq. (1)'s L_REC; soft, fitnet, began: the classic family)

Optimizers (the paper: "for all stages, except post-training, we used Adam optimizer with fixed 5e-4
learning rate"; "SGD with initial learning rate 5e-4 with 10 times decrease every 20 epochs" after):

* detection: Adam(lr --gan-lr, betas --gan-betas) over the student, fed the detection gradient only;
* distillation: one Adam per method (lr --kd-lr x the method's weight, default --gan-lr x 1) over the
  student and the adapters, fed that method's terms. Separate states, because Adam normalises each
  parameter's step by its running gradient magnitude: in one shared state a large, roughly orthogonal
  adversarial gradient inflates the second moment and silently shrinks the detection step (measured:
  ~0.5x in the backbone) -- and, among distillation terms, the soft-label step. Split, the detection step
  is exactly the baseline's and each method's step is exactly what it would be alone, so a combination
  (gan+soft) differs from its parts (soft) by exactly the added step. A method's weight is therefore its
  step size relative to the detection step (Adam's step does not depend on the scale of a loss);
* discriminators: Adam(lr --gan-d-lr), never shared.

The paper does not give Adam's betas; --gan-betas defaults to (0.5, 0.999), the GAN convention (Radford et
al. 2016) for every stage 1-3 optimizer;
* post-learning: SGD(lr --gan-post-lr, momentum, weight decay --gan-post-weight-decay = SSD's 5e-4),
  divided by 1/--gan-post-gamma every --gan-post-step epochs.

Every term is logged under its own name; stages are in distill/kd/schedule.py.
"""
from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from .. import distributed
from ..engine import param_groups, train_one_epoch
from ..losses import DetectionLoss, loc_cls
from ..stability import StabilityMonitor, TrainingGuard
from .features import Adapters, FeatureStandardizer
from .methods import (METHODS, DiscriminatorStep, LazyOutputs, StudentStep, build_method, parse_kd,
                      resolve_weights)
from .schedule import ITERATION_STAGES, GanSchedule

# Terms that make up the logged "total" of an epoch.
TOTAL_TERMS = ("loc", "cls", "gan", "rec", "soft", "fitnet", "began", "sr_adv", "sr_cls", "sr_reg", "sr_tv", "sr_mse")
STANDARDIZE_BATCHES = 4        # batches of teacher maps the frozen standardisation statistics are measured on
SESSION_FORMAT = 2             # gan_state["format"]: optimizer layout of this session


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """Train-mode BatchNorm (batch statistics) that leaves running statistics untouched: the student is
    truly frozen during discriminator stages while its features look as they do in student steps."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, nbt) in zip(bns, saved):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


def class_logits(model: nn.Module, conf: torch.Tensor) -> torch.Tensor:
    """A detector's class logits [B,N,C+1]: SSD's conf as it is, RefineDet's ODM columns of its packed conf."""
    return model.box_coder.class_logits(conf)


class EpochLog:
    """Per-key sums and counts of everything logged in an epoch, and how many iterations each stage ran."""

    def __init__(self):
        self.sums, self.counts, self.stages = defaultdict(float), defaultdict(int), defaultdict(int)

    def add(self, stage: str, out: dict) -> None:
        self.stages[stage] += 1
        for k, v in out.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.sums[k] += float(v)
                self.counts[k] += 1

    def mean(self, key: str) -> float | None:
        return self.sums[key] / self.counts[key] if self.counts.get(key) else None

    def means(self) -> dict[str, float]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}


class KDSession:
    """Args: ``cfg`` (the run config; its ``kd`` section), the ``student`` being trained, the frozen ``teacher``,
    the student's ``anchors`` [N, 4], ``device``, and ``train_set`` (standardisation statistics are measured
    on a few of its batches, drawn without touching the global RNG)."""

    def __init__(self, cfg, student: nn.Module, teacher: nn.Module, anchors: torch.Tensor, device: torch.device,
                 train_set=None):
        self.cfg, self.kd = cfg, cfg.kd
        self.student, self.teacher, self.anchors, self.device = student, teacher, anchors, device
        self.methods_named = parse_kd(self.kd.methods)
        if not self.methods_named:
            raise ValueError("KDSession needs at least one --kd method")
        weights = resolve_weights(self.methods_named, self.kd.weights or {})
        # A zero weight removes the term (and its discriminator) but keeps the pipeline: that is the
        # ablation's baseline ("KD weight 0, same pipeline").
        self.weights = {m: w for m, w in weights.items() if w != 0.0}
        epochs = cfg.optim.epochs
        if epochs <= self.kd.gan_post_epochs:
            raise ValueError(f"--epochs {epochs} must exceed --gan-post-epochs {self.kd.gan_post_epochs} "
                             "(adversarial stages = epochs - post epochs; paper: 180 + 80)")
        sizes = [min(hw) for hw in student.feature_sizes(cfg.data.img_size)]
        t_ch, s_ch = list(teacher.feature_channels), list(student.feature_channels)
        self.methods = nn.ModuleDict({m: build_method(m, self.kd, t_ch, sizes, s_ch) for m in self.weights}).to(device)
        need_feats = any(m.uses_features for m in self.methods.values())
        self.adapters = Adapters(s_ch, t_ch, self.kd.adapters).to(device) if need_feats else None
        self.standardizer = FeatureStandardizer(t_ch).to(device) if need_feats else None
        for method in self.methods.values():
            method.attach(self, frozen_bn_stats)
        distributed.broadcast_modules(self.methods, self.adapters)      # rank 0's initial weights, as DDP does
        self.iters_per_epoch = max(1, len(train_set) // cfg.optim.batch_size) if train_set is not None else 1
        self._build_optimizers()
        self.schedule = GanSchedule(adversarial_epochs=epochs - self.kd.gan_post_epochs,
                                    d_pretrain_iters=self.kd.gan_d_pretrain_iters,
                                    d_finetune_iters=self.kd.gan_d_finetune_iters,
                                    threshold=self.kd.gan_threshold, student_max_epochs=self.kd.gan_student_max_epochs,
                                    ab_iters=self.kd.ab_iters if "ab" in self.weights else 0,
                                    student_max_iters=self.kd.gan_student_max_iters)
        self.monitor = StabilityMonitor(max_skips=self.kd.max_skips, patience=self.kd.collapse_patience)
        self.guard = TrainingGuard(self.monitor, self._stateful)
        self.detection = DetectionLoss(cfg.model.neg_pos_ratio, cfg.model.match_iou)
        self.step, self.student_iters, self.epoch = 0, 0, 0
        self.progress, self.extra_drawn, self._resumed = None, 0, None     # an epoch's progress: epoch_state()
        self.log = EpochLog()
        self.last_info: dict = {}
        if self.standardizer is not None and self.kd.standardize and train_set is not None:
            self._fit_standardizer(train_set)
        self.guard.commit()

    # ----------------------------------------------------------------------------------------------- set-up
    def _build_optimizers(self) -> None:
        kd = self.kd
        student_params = [p for p in self.student.parameters() if p.requires_grad]
        betas = tuple(kd.gan_betas)
        self.det_opt = torch.optim.Adam(student_params, lr=kd.gan_lr, betas=betas)
        kd_params = student_params + (list(self.adapters.parameters()) if self.adapters is not None else [])
        self.kd_lr = kd.lr if kd.lr is not None else kd.gan_lr
        # One Adam state per distillation method; its step size is --kd-lr x the method's weight.
        self.kd_opts = {m: torch.optim.Adam(kd_params + self.methods[m].student_side_parameters(),
                                            lr=self.kd_lr * self.weights[m], betas=betas) for m in self.methods}
        d_params = [p for m in self.methods.values() for p in m.discriminator_parameters()]
        self.d_lr = kd.gan_d_lr if kd.gan_d_lr is not None else kd.gan_lr
        self.d_opt = torch.optim.Adam(d_params, lr=self.d_lr, betas=betas) if d_params else None
        self.post_opt = torch.optim.SGD(param_groups(self.student, kd.gan_post_weight_decay), lr=kd.gan_post_lr,
                                        momentum=self.cfg.optim.momentum)
        self.post_sched = torch.optim.lr_scheduler.StepLR(self.post_opt, kd.gan_post_step, kd.gan_post_gamma)

    @torch.no_grad()
    def _fit_standardizer(self, train_set) -> None:
        from ..data import collate_train
        gen = torch.Generator().manual_seed(self.cfg.run.seed * 100_003 + 104_729)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.run.seed + 104_729)
            loader = DataLoader(train_set, batch_size=self.cfg.optim.batch_size, shuffle=True, generator=gen,
                                collate_fn=collate_train)
            maps = []
            for i, (images, _) in enumerate(loader):
                if i >= STANDARDIZE_BATCHES:
                    break
                maps.append([f.cpu() for f in self.teacher.forward_features(images.to(self.device))[2]])
        self.standardizer.fit([[f.to(self.device) for f in b] for b in maps])

    @property
    def discs(self) -> nn.ModuleList | None:
        return self.methods["gan"].discs if "gan" in self.methods else None

    @property
    def began(self) -> nn.ModuleList | None:
        return self.methods["began"].autoencoders if "began" in self.methods else None

    def _stateful(self) -> dict:
        return {"student": self.student, "adapters": self.adapters, "methods": self.methods, "det_opt": self.det_opt,
                **{f"kd_opt_{m}": o for m, o in self.kd_opts.items()}, "d_opt": self.d_opt, "post_opt": self.post_opt}

    # ----------------------------------------------------------------------------------------------- maps
    def _standardize(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.standardizer(maps) if self.standardizer is not None and self.kd.standardize else maps

    def teacher_outputs(self, images: torch.Tensor):
        """(loc, conf, six maps) of the frozen teacher, no grad."""
        with torch.no_grad():
            return self.teacher.forward_features(images)

    def maps(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher maps, adapted student maps), both standardised, student frozen (no grad, BN stats kept)."""
        t_feats = self.teacher_outputs(images)[2]
        with torch.no_grad(), frozen_bn_stats(self.student):
            s_maps = self._standardize(self.adapters(self.student.forward_features(images)[2]))
        return self._standardize(t_feats), s_maps

    def _detection(self, loc, conf, targets):
        """(anchor targets, {"loc", "cls"}): the plain run's objective (RefineDet: the ODM's targets, ARM + ODM
        terms summed)."""
        at, terms = self.detection.with_targets(loc, conf, targets, self.anchors, self.student.box_coder)
        return at, loc_cls(terms)

    # ----------------------------------------------------------------------------------------------- terms
    def student_terms(self, images, targets) -> tuple[dict, dict, dict, StudentStep]:
        """One student forward: (detection terms, weighted distillation terms, logged numbers, the step)."""
        loc, conf, feats = self.student.forward_features(images)
        at, mb = self._detection(loc, conf, targets)
        lam = self.kd.mbox_weight
        det_terms = {"loc": lam * mb["loc"], "cls": lam * mb["cls"]}
        lazy = LazyOutputs({                                      # producers get `get`: no cycle (see LazyOutputs)
            "teacher": lambda get: self.teacher_outputs(images),
            "teacher_logits": lambda get: class_logits(self.teacher, get("teacher")[1]),
            "teacher_feats": lambda get: get("teacher")[2],
            "adapted_raw": lambda get: self.adapters(feats),
            "student_maps": lambda get: self._standardize(get("adapted_raw")),
            "teacher_maps": lambda get: self._standardize(get("teacher_feats")),
        })
        step = StudentStep(images, targets, loc, class_logits(self.student, conf), feats, at, mb, lazy)
        kd_terms, info, step.method_losses = {}, {}, {}
        for name, method in self.methods.items():
            terms, extra = method.student_terms(step)
            kd_terms.update({k: self.weights[name] * v for k, v in terms.items()})
            if terms:
                step.method_losses[name] = sum(terms.values())
            info.update(extra)
        return det_terms, kd_terms, info, step

    def _kd_lr_now(self, method: str) -> float:
        """The step size of a method's optimizer: --kd-lr x its weight (Adam's step does not depend on the scale
        of a loss, so the weight acts on the step), ramped linearly from 0 over the first --gan-warmup fraction
        of the adversarial stages' student iterations."""
        total = self.kd.gan_warmup * self.schedule.adversarial_epochs * self.iters_per_epoch
        ramp = min(1.0, (self.student_iters + 1) / total) if total > 0 else 1.0
        return self.kd_lr * self.weights[method] * ramp

    def _clip(self, params) -> None:
        if self.kd.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, self.kd.clip_grad)

    def _split_step(self, det_terms: dict, method_losses: dict) -> None:
        """Every gradient first (detection, then each method's), then every optimizer steps with its own."""
        losses = {"detection": sum(det_terms.values()), **method_losses}
        opts = {"detection": self.det_opt, **{m: self.kd_opts[m] for m in method_losses}}
        grads = {}
        for i, (name, loss) in enumerate(losses.items()):
            params = [p for g in opts[name].param_groups for p in g["params"]]
            grads[name] = (params, distributed.average_gradients(torch.autograd.grad(
                loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)))
        for name, (params, gs) in grads.items():
            for p, g in zip(params, gs):
                p.grad = g
            self._clip(params)
            if name != "detection":
                for group in opts[name].param_groups:
                    group["lr"] = self._kd_lr_now(name)
            opts[name].step()

    # ----------------------------------------------------------------------------------------------- steps
    def _student_step(self, images, targets) -> dict | None:
        det_terms, kd_terms, info, step = self.student_terms(images, targets)
        if not self.guard.finite({**det_terms, **kd_terms}, self.epoch, self.step, "student"):
            return None
        self._split_step(det_terms, step.method_losses)
        self.student_iters += 1
        out = {k: v.item() for k, v in {**det_terms, **kd_terms}.items()}
        out["det"] = (step.det["loc"] + step.det["cls"]).item()
        out.update(info)
        if "began" in self.methods:
            # BEGAN trains D and G alternately every iteration (text-nontext paper, sec. IV-B).
            dstep = DiscriminatorStep(images, [t.detach() for t in step.teacher_maps],
                                      [s.detach() for s in step.student_maps])
            out.update(self._d_update([self.methods["began"]], dstep, "BEGAN discriminator"))
        return out

    def _d_update(self, methods, dstep: DiscriminatorStep, what: str) -> dict:
        terms, info = {}, {}
        for m in methods:
            t, i = m.discriminator_terms(dstep)
            terms.update(t)
            info.update(i)
        if terms and self.guard.finite(terms, self.epoch, self.step, what):
            self.d_opt.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            distributed.average_optimizer_gradients(self.d_opt)
            self.d_opt.step()
            info.update({k: v.item() for k, v in terms.items()})
            for m in methods:
                m.after_discriminator_step(info)
        return info

    def discriminator_step(self, images, targets=None) -> dict:
        """Stages 1 and 3: discriminators only, adversarial loss (2), student frozen."""
        if self.d_opt is None:
            return {}                  # nothing to train: the student just waits (same schedule as GAN-KD)
        t_maps, s_maps = self.maps(images)
        return self._d_update([m for m in self.methods.values() if m.has_discriminator],
                              DiscriminatorStep(images, t_maps, s_maps, targets), "discriminator")

    def _ab_step(self, images) -> dict:
        """Activation-boundary pre-training (text-nontext eq. (1)) of student + adapters."""
        t_feats = self.teacher_outputs(images)[2]
        adapted = self.adapters(self.student.forward_features(images)[2])
        terms = {k: self.weights["ab"] * v for k, v in self.methods["ab"].pretrain_terms(adapted, t_feats).items()}
        if self.guard.finite(terms, self.epoch, self.step, "activation-boundary"):
            opt = self.kd_opts["ab"]
            opt.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            distributed.average_optimizer_gradients(opt)
            self._clip([p for g in opt.param_groups for p in g["params"]])
            opt.step()
        return {k: v.item() for k, v in terms.items()}

    def _post_step(self, images, targets) -> dict | None:
        """Stage 4: the classic SSD objective with SGD."""
        loc, conf = self.student(images)
        _, mb = self._detection(loc, conf, targets)
        if not self.guard.finite(dict(mb), self.epoch, self.step, "post-training"):
            return None
        self.post_opt.zero_grad(set_to_none=True)
        (mb["loc"] + mb["cls"]).backward()
        distributed.average_optimizer_gradients(self.post_opt)
        self._clip(list(self.student.parameters()))
        self.post_opt.step()
        return {"loc": mb["loc"].item(), "cls": mb["cls"].item(), "det": (mb["loc"] + mb["cls"]).item()}

    def train_step(self, images, targets) -> dict | None:
        """The ``step`` of the training loop: a student or post-learning step, as the schedule says."""
        stage = self.schedule.stage
        out = self._post_step(images, targets) if stage == "post" else self._student_step(images, targets)
        self.log.add(stage, out or {})
        self.step += 1
        self.schedule.after_iteration(self.epoch)
        return out

    # ----------------------------------------------------------------------------------------------- epoch
    def _extra_batches(self, loader, epoch: int, skip: int = 0):
        """Endless batches for the iteration stages (D pre-learning / fine-tuning, AB init): a shuffled stream
        of their own over the training set. Drawing them leaves the global RNG untouched, so the student's
        batches and augmentations are exactly those of the baseline run with the same seed. ``skip``: drawn
        again but not yielded (the part a resumed epoch had used; ``extra_drawn`` counts them all)."""
        gen = torch.Generator().manual_seed(self.cfg.run.seed * 100_003 + epoch + 7_919)
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(distributed.rank_seed(int(torch.randint(2**62, (1,), generator=gen))))
                ranked = distributed.RankBatchSampler(RandomSampler(loader.dataset, generator=gen),
                                                      self.cfg.optim.batch_size)
                batches = DataLoader(loader.dataset, batch_sampler=ranked, generator=gen,
                                     num_workers=loader.num_workers, collate_fn=loader.collate_fn)
                it = iter(batches)
            while True:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(distributed.rank_seed(int(torch.randint(2**62, (1,), generator=gen))))
                    batch = next(it, None)
                if batch is None:
                    break
                self.extra_drawn += 1
                if self.extra_drawn > skip:
                    yield batch

    def run_iteration_stages(self, batches, epoch: int, log=None) -> None:
        """Run the schedule's iteration stages (ab_init, d_pretrain, d_finetune) to their end on ``batches``.
        With nothing to train (the baseline: every KD weight 0) the stage is only counted, no batch is drawn."""
        self.epoch = epoch
        bar = None
        while self.schedule.stage in ITERATION_STAGES:
            stage = self.schedule.stage
            idle = stage != "ab_init" and self.d_opt is None
            if idle:
                out = {}
            else:
                if bar is None or bar.desc != stage:
                    bar = self._stage_bar(bar, stage)
                images, targets = next(batches)[:2]
                images = images.to(self.device, non_blocking=True)
                out = self._ab_step(images) if stage == "ab_init" else self.discriminator_step(images, targets)
                bar.update()
                bar.set_postfix({k: f"{v:.3f}" for k, v in out.items()       # every method's D loss and accuracy
                                 if isinstance(v, (int, float)) and (k.startswith("d_") or "_acc_" in k or k == "ab")})
            if log is not None:
                log(stage, out)
            self.log.add(stage, out)
            self.step += 0 if idle else 1
            self.schedule.after_iteration(epoch)
        if bar is not None:
            bar.close()

    def _stage_bar(self, previous, stage: str):
        if previous is not None:
            previous.close()
        total = self.schedule.length(stage)
        return tqdm(total=total, initial=self.schedule.stage_iters, desc=stage, leave=False, dynamic_ncols=True)

    def train_epoch(self, loader, epoch: int, desc: str = "kd") -> dict:
        """One pass of student (or post-learning) steps over ``loader`` through the training loop, the
        iteration stages running on batches of their own in between. Returns the mean of every logged number."""
        self.epoch, self.log, self.extra_drawn = epoch, EpochLog(), 0
        skip = self._continue_epoch()
        extra = None

        def before_batch():
            nonlocal extra
            if self.schedule.stage in ITERATION_STAGES:
                extra = extra if extra is not None else self._extra_batches(loader, epoch, skip)
                self.run_iteration_stages(extra, epoch)

        train_one_epoch(loader, self.train_step, self.device, epoch, model=self.student, before_batch=before_batch,
                        desc=f"{desc} [{self._student_stage()}]", progress=self.progress)
        return self._end_epoch(epoch)

    def _student_stage(self) -> str:
        """The stage this epoch's student steps train in (the iteration stages run first, on their own batches)."""
        return "student" if self.schedule.stage in ITERATION_STAGES else self.schedule.stage

    def _end_epoch(self, epoch: int) -> dict:
        # Every rank's numbers: the schedule's and the collapse monitor's decisions are the same on every rank.
        sums, counts = distributed.reduce_sums(self.log.sums, self.log.counts)
        self.log.sums, self.log.counts = defaultdict(float, sums), defaultdict(int, counts)
        means = self.log.means()
        mean_adv = self.log.mean("adv")
        fooled = self.log.mean("d_acc_student")
        if fooled is not None and self.schedule.stage == "student" and self.monitor.end_of_student_epoch(epoch, fooled):
            self._reset_discriminators(epoch)
        if self.log.stages.get("post"):
            self.post_sched.step()
        prev = len(self.schedule.history)
        self.schedule.after_epoch(epoch, mean_adv)
        for h in self.schedule.history[prev:]:
            tqdm.write(f"[kd:stage] epoch {h['epoch'] + 1}: {h['from']} -> {h['to']} ({h['why']})")
        self.guard.commit()
        means["total"] = 0.0 + sum(v for k, v in means.items() if k in TOTAL_TERMS)
        means["lr"] = (self.post_opt if self.schedule.stage == "post" else self.det_opt).param_groups[0]["lr"]
        self.last_info = {"stages": dict(self.log.stages), "stage_now": self.schedule.stage,
                          "round": self.schedule.rounds, "mean_adversarial": mean_adv}
        return means

    def _reset_discriminators(self, epoch: int) -> None:
        self.methods["gan"].reset_discriminators()
        self.d_lr *= 0.5
        d_params = [p for m in self.methods.values() for p in m.discriminator_parameters()]
        self.d_opt = torch.optim.Adam(d_params, lr=self.d_lr, betas=tuple(self.kd.gan_betas))
        self.schedule.restart(epoch, "collapse recovery")

    def summary(self, tr: dict) -> str:
        info = self.last_info
        parts = [f"stages {'/'.join(f'{k}:{v}' for k, v in info['stages'].items())} -> {info['stage_now']}"]
        for k in ("det", "adv", *TOTAL_TERMS[2:], "ab", "d_gan", "d_acc_real", "d_acc_fake", "d_acc_student",
                  "d_sr_adv", "d_sr_cls"):
            if k in tr:
                parts.append(f"{k} {tr[k]:.3f}")
        return "  ".join(parts)

    # ----------------------------------------------------------------------------------------------- checkpoint
    @property
    def eval_model(self) -> nn.Module:
        return self.student

    def epoch_state(self) -> dict:
        """The part of an interrupted epoch that is this session's own (a mid-epoch checkpoint's ``partial``):
        the epoch's log and how many batches its iteration stages drew. Everything else is in ``extra``."""
        return {"sums": dict(self.log.sums), "counts": dict(self.log.counts), "stages": dict(self.log.stages),
                "extra_drawn": self.extra_drawn}

    def resume_epoch(self, state: dict) -> None:
        """Continue the interrupted epoch of :meth:`epoch_state` at the next ``train_epoch``."""
        self._resumed = state

    def _continue_epoch(self) -> int:
        """Restore a resumed epoch's log; the iteration-stage batches it drew (0 for a fresh epoch)."""
        state, self._resumed = self._resumed, None
        if state is None:
            return 0
        self.log.sums.update(state["sums"])
        self.log.counts.update(state["counts"])
        self.log.stages.update(state["stages"])
        return int(state["extra_drawn"])

    def checkpoint_state(self) -> dict:
        """Checkpoint fields of this plan: the post-learning SGD is the run's "optimizer" / "scheduler"; the
        rest (adapters, discriminators, schedule, stage 1-3 optimizers) goes to ``extra``."""
        return {"optimizer": self.post_opt.state_dict(), "scheduler": self.post_sched.state_dict(), "scaler": None,
                "ema": None, "extra": self.checkpoint_extra()}

    def load_checkpoint_state(self, ck) -> None:
        self.load_checkpoint_extra({**ck.extra, "path": ck.path})
        self.post_opt.load_state_dict(ck.optimizer)
        self.post_sched.load_state_dict(ck.scheduler)

    def checkpoint_extra(self) -> dict:
        """Keys added to the run checkpoint. The student's inference weights stay alone under "model"."""
        gan, began = self.discs, self.began
        extra_state = {}
        for m in self.methods.values():
            extra_state.update(m.extra_state())
        return {
            "kd_modules": {"adapters": self.adapters.state_dict() if self.adapters is not None else {},
                           "standardizer": self.standardizer.state_dict() if self.standardizer is not None else {}},
            "discriminators": {"patch": gan.state_dict() if gan is not None else {},
                               "began": began.state_dict() if began is not None else {},
                               "sr": self.methods["sr"].state_dict() if "sr" in self.methods else {}},
            "gan_state": {"format": SESSION_FORMAT, "schedule": self.schedule.state_dict(),
                          "monitor": self.monitor.state_dict(), **extra_state, "step": self.step,
                          "student_iters": self.student_iters, "methods": list(self.methods_named),
                          "weights": dict(self.weights), "teacher": str(self.kd.teacher)},
            "kd_optimizers": {"detection": self.det_opt.state_dict(),
                              "distillation": {m: o.state_dict() for m, o in self.kd_opts.items()},
                              "discriminator": self.d_opt.state_dict() if self.d_opt is not None else {}},
        }

    def load_checkpoint_extra(self, ck: dict) -> None:
        gs = ck.get("gan_state")
        if gs is None:
            raise ValueError("--resume: the checkpoint has no gan_state (not a --kd run)")
        if gs.get("format", 1) != SESSION_FORMAT:
            raise ValueError(f"--resume {ck.get('path', '')}: a distillation run written by an older version "
                             "(its optimizer layout differs); start a new run, e.g. with --init-weights on its best.pt")
        if self.adapters is not None:
            self.adapters.load_state_dict(ck["kd_modules"]["adapters"])
        if self.standardizer is not None and ck["kd_modules"].get("standardizer"):
            self.standardizer.load_state_dict(ck["kd_modules"]["standardizer"])
        if self.discs is not None:
            self.discs.load_state_dict(ck["discriminators"]["patch"])
        if self.began is not None:
            self.began.load_state_dict(ck["discriminators"]["began"])
        if "sr" in self.methods:
            self.methods["sr"].load_state_dict(ck["discriminators"]["sr"])
        opts = ck["kd_optimizers"]
        self.det_opt.load_state_dict(opts["detection"])
        for m, o in self.kd_opts.items():
            o.load_state_dict(opts["distillation"][m])
        if self.d_opt is not None:
            self.d_opt.load_state_dict(opts["discriminator"])
        self.schedule = GanSchedule.from_state(gs["schedule"])
        self.monitor.load_state_dict(gs["monitor"])
        for m in self.methods.values():
            m.load_extra_state(gs)
        self.step, self.student_iters = int(gs["step"]), int(gs.get("student_iters", 0))
        self.guard.commit()

    def describe(self) -> str:
        parts = [f"{m}={w:g}" for m, w in self.weights.items()]
        dropped = [m for m in self.methods_named if m not in self.weights]
        s = f"kd {' + '.join(parts) or 'none (baseline)'}, lambda(mbox)={self.kd.mbox_weight:g}"
        if dropped:
            s += f" [weight 0: {', '.join(dropped)}]"
        notes = "".join(f"; {m.describe()}" for m in self.methods.values() if m.describe())
        return s + f"; schedule starts at '{self.schedule.stage}'" + notes


__all__ = ["KDSession", "METHODS", "parse_kd", "resolve_weights", "frozen_bn_stats"]
