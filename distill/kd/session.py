"""A distillation run: teacher, student, adapters, discriminators, optimizers and the stage schedule.

``fit`` (distill/train.py) owns the run folder, evaluation and checkpoints; for ``--kd`` runs it
asks a :class:`KDSession` to train one epoch at a time instead of calling ``train_one_epoch``.

Objective in the student stage (GAN-KD paper, eq. (3), extended with the classic KD family)::

    L = w_gan * sum_i L_GAN_i(G, D_i)           eq. (2), student maps labelled "real", D_i frozen
      + lambda * L_MBOX                          SSD multibox loss (loc + cls)
      + w_soft * KD_soft  + w_fitnet * L2_hint  + w_began * L_G (text-nontext eqs. (3), (5))

Every term is logged under its own name; stages and their optimizers are in distill/kd/schedule.py.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import math
from collections import defaultdict

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..engine import param_groups
from ..losses import IGNORE, MultiBoxLoss, encode_targets
from ..models import Matcher
from . import losses as L
from .discriminators import build_discriminators
from .modules import Adapters, BeganAutoencoder
from .schedule import ITERATION_STAGES, GanSchedule
from .stability import StabilityMonitor, format_terms

# Method -> default weight. began's 0.2 is b of the text-nontext paper, eq. (2).
METHODS: dict[str, float] = {"gan": 1.0, "soft": 1.0, "fitnet": 1.0, "began": 0.2, "ab": 1.0}
# Config keys that only matter to distillation (ignored when comparing plain runs, e.g. the cached teacher).
KD_FIELDS = ("kd", "teacher", "kd_weights", "kd_mbox_weight", "kd_temperature", "ab_margin", "ab_iters", "gan_lr",
             "gan_threshold", "gan_d_pretrain_iters", "gan_d_finetune_iters", "gan_student_max_epochs",
             "gan_student_max_iters", "gan_conditional",
             "gan_post_epochs", "gan_post_lr", "gan_post_step", "gan_post_gamma", "disc_max_width", "began_gamma",
             "began_fk", "kd_collapse_patience", "kd_max_skips")


def parse_kd(spec: str | None) -> list[str]:
    """'gan+soft' -> ['gan', 'soft']; 'none' -> []. Unknown names get a did-you-mean."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return []
    names = [s.strip().lower() for s in spec.split("+")]
    for n in names:
        if n not in METHODS:
            close = difflib.get_close_matches(n, METHODS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"--kd {spec!r}: unknown method '{n}'.{hint} Available: {', '.join(METHODS)} (joined by '+')")
    if len(set(names)) != len(names):
        raise ValueError(f"--kd {spec!r}: a method is named twice")
    return names


def resolve_weights(methods: list[str], given: dict) -> dict[str, float]:
    for k in given:
        if k not in METHODS:
            close = difflib.get_close_matches(k, METHODS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"--kd-weights: unknown method '{k}'.{hint}")
    return {m: float(given.get(m, METHODS[m])) for m in methods}


def set_requires_grad(module: nn.Module | None, flag: bool) -> None:
    if module is not None:
        for p in module.parameters():
            p.requires_grad_(flag)


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


class KDSession:
    def __init__(self, cfg, student: nn.Module, teacher: nn.Module, anchors: torch.Tensor, device: torch.device):
        self.cfg, self.student, self.teacher, self.anchors, self.device = cfg, student, teacher, anchors, device
        methods = parse_kd(cfg.kd)
        if not methods:
            raise ValueError("KDSession needs at least one --kd method")
        weights = resolve_weights(methods, cfg.kd_weights or {})
        # A zero weight removes the term (and its discriminator) but keeps the pipeline: that is the
        # ablation's baseline ("KD weight 0, same pipeline").
        self.weights = {m: w for m, w in weights.items() if w != 0.0}
        self.methods = methods
        if cfg.epochs <= cfg.gan_post_epochs:
            raise ValueError(f"--epochs {cfg.epochs} must exceed --gan-post-epochs {cfg.gan_post_epochs} "
                             "(adversarial stages = epochs - post epochs; paper: 180 + 80)")
        sizes = [min(hw) for hw in student.feature_sizes(cfg.img_size)]
        t_ch, s_ch = list(teacher.feature_channels), list(student.feature_channels)
        need_feats = any(m in self.weights for m in ("gan", "fitnet", "began", "ab"))
        self.adapters = Adapters(s_ch, t_ch).to(device) if need_feats else None
        self.discs = (build_discriminators(t_ch, sizes, cfg.disc_max_width, cond_channels=3 if cfg.gan_conditional else 0)
                      .to(device) if "gan" in self.weights else None)
        self.began = nn.ModuleList(BeganAutoencoder(c) for c in t_ch).to(device) if "began" in self.weights else None
        self.began_k = [0.0] * len(t_ch)             # k_0 = 0 (text-nontext paper, after eq. (5))
        g_params = list(student.parameters()) + (list(self.adapters.parameters()) if self.adapters else [])
        # Stages 1-3: Adam with a fixed learning rate (paper, "Implementation details": 5e-4).
        self.g_opt = torch.optim.Adam(g_params, lr=cfg.gan_lr, betas=(0.5, 0.999))
        d_params = [p for m in (self.discs, self.began) if m is not None for p in m.parameters()]
        self.d_opt = torch.optim.Adam(d_params, lr=cfg.gan_lr, betas=(0.5, 0.999)) if d_params else None
        # Stage 4: SGD, lr 5e-4, / 10 every 20 epochs (paper).
        self.post_opt = torch.optim.SGD(param_groups(student, cfg.weight_decay), lr=cfg.gan_post_lr, momentum=cfg.momentum)
        self.post_sched = torch.optim.lr_scheduler.StepLR(self.post_opt, cfg.gan_post_step, cfg.gan_post_gamma)
        self.schedule = GanSchedule(adversarial_epochs=cfg.epochs - cfg.gan_post_epochs,
                                    d_pretrain_iters=cfg.gan_d_pretrain_iters, d_finetune_iters=cfg.gan_d_finetune_iters,
                                    threshold=cfg.gan_threshold, student_max_epochs=cfg.gan_student_max_epochs,
                                    ab_iters=cfg.ab_iters if "ab" in self.weights else 0,
                                    student_max_iters=cfg.gan_student_max_iters)
        self.monitor = StabilityMonitor(max_skips=cfg.kd_max_skips, patience=cfg.kd_collapse_patience)
        self.matcher, self.mbox = Matcher(cfg.match_iou), MultiBoxLoss(cfg.neg_pos_ratio)
        self.step = 0
        self._good = self._snapshot()

    # ----------------------------------------------------------------------------------------------- steps
    def _teacher(self, images):
        with torch.no_grad():
            return self.teacher.forward_features(images)

    def _apply(self, terms: dict, opt, params, epoch: int, what: str) -> bool:
        total = sum(terms.values())
        if not torch.isfinite(total):
            if self.monitor.non_finite(epoch, self.step, what, terms) == "rollback":
                self._rollback()
            return False
        opt.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
        opt.step()
        self.monitor.step_ok()
        return True

    def _g_params(self):
        return [p for g in self.g_opt.param_groups for p in g["params"]]

    def _d_params(self):
        return [p for g in self.d_opt.param_groups for p in g["params"]]

    def _detection(self, loc, conf, targets):
        at = encode_targets(targets, self.anchors, self.student.box_coder, self.matcher)
        return at, self.mbox(loc, conf, at)

    def _student_step(self, images, targets, epoch) -> dict:
        # GAN-KD's student step needs only D(adapter(S)); the teacher runs for the terms that read it.
        t_conf = t_feats = None
        if any(m in self.weights for m in ("soft", "fitnet", "began")):
            _, t_conf, t_feats = self._teacher(images)
        loc, conf, feats = self.student.forward_features(images)
        at, mb = self._detection(loc, conf, targets)
        lam = self.cfg.kd_mbox_weight
        terms = {"loc": lam * mb["loc"], "cls": lam * mb["cls"]}
        info: dict[str, float] = {}
        a_feats = self.adapters(feats) if self.adapters is not None else None
        if self.discs is not None:                                     # eq. (3): sum_i L_GAN_i, D_i frozen
            set_requires_grad(self.discs, False)
            logits = [d(f, images) for d, f in zip(self.discs, a_feats)]
            adv = sum(L.gan_g_loss(lg) for lg in logits)
            terms["gan"] = self.weights["gan"] * adv
            info["adv"] = adv.item()
            # D accuracy on the student's maps while D is frozen (collapse detection)
            info["d_acc_student"] = sum(L.d_accuracy(None, lg)[1] for lg in logits) / len(logits)
        if "soft" in self.weights:
            terms["soft"] = self.weights["soft"] * L.soft_label_loss(
                conf, t_conf, self.cfg.kd_temperature, at.labels != IGNORE, (at.labels > 0).sum().clamp_min(1).float())
        if "fitnet" in self.weights:
            terms["fitnet"] = self.weights["fitnet"] * L.fitnet_loss(a_feats, t_feats)
        if self.began is not None:                                     # text-nontext eq. (5), b = weight
            set_requires_grad(self.began, False)
            recon_fake = [L.began_recon(ae(f), f) for ae, f in zip(self.began, a_feats)]
            terms["began"] = self.weights["began"] * sum(L.began_g_loss(r) for r in recon_fake)
        ok = self._apply(terms, self.g_opt, self._g_params(), epoch, "student")
        set_requires_grad(self.discs, True)
        set_requires_grad(self.began, True)
        if ok and self.began is not None:
            # BEGAN trains D and G alternately every iteration (text-nontext paper, sec. IV-B).
            info.update(self._began_d_step([f.detach() for f in t_feats], [f.detach() for f in a_feats], epoch))
        out = {k: v.item() for k, v in terms.items()}
        out["det"] = (mb["loc"] + mb["cls"]).item()
        return {**out, **info}

    def _began_d_step(self, t_feats, a_feats, epoch) -> dict:
        rr = [L.began_recon(ae(t), t) for ae, t in zip(self.began, t_feats)]
        rf = [L.began_recon(ae(s), s) for ae, s in zip(self.began, a_feats)]
        terms = {"d_began": sum(L.began_d_loss(r, f, k) for r, f, k in zip(rr, rf, self.began_k))}
        if self._apply(terms, self.d_opt, self._d_params(), epoch, "BEGAN discriminator"):
            c = self.cfg
            self.began_k = [L.began_k_update(k, r.item(), f.item(), c.began_gamma, c.began_fk)
                            for k, r, f in zip(self.began_k, rr, rf)]
        return {"d_began": terms["d_began"].item(), "began_k": sum(self.began_k) / len(self.began_k)}

    def _d_step(self, images, epoch) -> dict:
        """Stages 1 and 3: discriminators only, adversarial loss (2), student frozen."""
        if self.d_opt is None:
            return {}                  # nothing to train: the student just waits (same schedule as GAN-KD)
        _, _, t_feats = self._teacher(images)
        with torch.no_grad(), frozen_bn_stats(self.student):
            a_feats = self.adapters(self.student.forward_features(images)[2])
        info: dict[str, float] = {}
        if self.discs is not None:
            real = [d(t, images) for d, t in zip(self.discs, t_feats)]
            fake = [d(s, images) for d, s in zip(self.discs, a_feats)]
            terms = {"d_gan": sum(L.gan_d_loss(r, f) for r, f in zip(real, fake))}
            accs = [L.d_accuracy(r, f) for r, f in zip(real, fake)]
            info["d_acc_real"] = sum(a[0] for a in accs) / len(accs)
            info["d_acc_fake"] = sum(a[1] for a in accs) / len(accs)
            if self._apply(terms, self.d_opt, self._d_params(), epoch, "discriminator"):
                info["d_gan"] = terms["d_gan"].item()
        if self.began is not None:
            info.update(self._began_d_step(t_feats, a_feats, epoch))
        return info

    def _ab_step(self, images, epoch) -> dict:
        """Activation-boundary pre-training (text-nontext eq. (1)) of student + adapters."""
        _, _, t_feats = self._teacher(images)
        feats = self.student.forward_features(images)[2]
        terms = {"ab": self.weights["ab"] * L.activation_boundary_loss(self.adapters(feats), t_feats, self.cfg.ab_margin)}
        self._apply(terms, self.g_opt, self._g_params(), epoch, "activation-boundary")
        return {"ab": terms["ab"].item()}

    def _post_step(self, images, targets, epoch) -> dict:
        """Stage 4: the classic SSD objective with SGD."""
        loc, conf = self.student(images)
        _, mb = self._detection(loc, conf, targets)
        self._apply(dict(mb), self.post_opt, list(self.student.parameters()), epoch, "post-training")
        return {"loc": mb["loc"].item(), "cls": mb["cls"].item(), "det": (mb["loc"] + mb["cls"]).item()}

    # ----------------------------------------------------------------------------------------------- epoch
    def _extra_batches(self, loader, epoch: int):
        """Endless batches for the iteration stages (D pre-learning / fine-tuning, AB init): a shuffled stream
        of their own over the training set. Drawing them leaves the global RNG untouched, so the student's
        batches and augmentations are exactly those of the baseline run with the same seed."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch + 7_919)
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
                batches = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True, drop_last=True,
                                     generator=gen, num_workers=loader.num_workers, collate_fn=loader.collate_fn)
                it = iter(batches)
            while True:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
                    batch = next(it, None)
                if batch is None:
                    break
                yield batch

    def run_iteration_stages(self, batches, epoch: int, log=None) -> None:
        """Run the schedule's iteration stages (ab_init, d_pretrain, d_finetune) to their end on ``batches``.
        With nothing to train (the baseline: every KD weight 0) the stage is only counted, no batch is drawn."""
        while self.schedule.stage in ITERATION_STAGES:
            stage = self.schedule.stage
            idle = stage != "ab_init" and self.d_opt is None
            if idle:
                out = {}
            else:
                images = next(batches)[0].to(self.device, non_blocking=True)
                out = self._ab_step(images, epoch) if stage == "ab_init" else self._d_step(images, epoch)
            if log is not None:
                log(stage, out)
            self.step += 0 if idle else 1
            self.schedule.after_iteration(epoch)

    def train_epoch(self, loader, epoch: int, desc: str = "kd") -> dict:
        """One pass of student (or post-learning) steps over ``loader`` following the schedule; the iteration
        stages run on batches of their own in between. Returns the mean of every logged number."""
        self.student.train()
        sums, counts = defaultdict(float), defaultdict(int)
        adv_sum, adv_n, fool_sum, fool_n, stages_seen = 0.0, 0, 0.0, 0, defaultdict(int)

        def log(stage, out):
            stages_seen[stage] += 1
            for k, v in out.items():
                if v is not None and math.isfinite(v):
                    sums[k] += v
                    counts[k] += 1
            if stage in ITERATION_STAGES:     # D / AB iterations: show their count and the D accuracies
                post = {"stage": f"{stage} {self.schedule.stage_iters + 1}/{self.schedule.length(stage)}"}
                post.update({k: f"{v:.3f}" for k, v in out.items() if k in ("d_gan", "d_acc_real", "d_acc_fake", "ab")})
                bar.set_postfix(post)

        extra = None
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}", leave=False, dynamic_ncols=True)
        for images, targets in bar:
            if self.schedule.stage in ITERATION_STAGES:
                extra = extra if extra is not None else self._extra_batches(loader, epoch)
                self.run_iteration_stages(extra, epoch, log)
            images = images.to(self.device, non_blocking=True)
            stage = self.schedule.stage
            if stage == "post":
                out = self._post_step(images, targets, epoch)
            else:
                out = self._student_step(images, targets, epoch)
                if "adv" in out:
                    adv_sum, adv_n = adv_sum + out["adv"], adv_n + 1
                if "d_acc_student" in out:
                    fool_sum, fool_n = fool_sum + out["d_acc_student"], fool_n + 1
            log(stage, out)
            self.step += 1
            self.schedule.after_iteration(epoch)
            post = {"stage": stage}
            for k in ("det", "adv", "d_acc_real", "d_acc_fake", "d_acc_student", "soft", "fitnet", "began", "ab"):
                if counts.get(k):
                    post[k] = f"{sums[k] / counts[k]:.3f}"
            bar.set_postfix(post)
        means = {k: v / max(counts.get(k, 1), 1) for k, v in sums.items()}
        mean_adv = adv_sum / adv_n if adv_n else None
        if fool_n and self.schedule.stage == "student":
            # D accuracy on the student's maps while D is frozen (student stage only).
            if self.monitor.end_of_student_epoch(epoch, fool_sum / fool_n):
                self._reset_discriminators(epoch)
        if stages_seen.get("post"):
            self.post_sched.step()
        prev = len(self.schedule.history)
        self.schedule.after_epoch(epoch, mean_adv)
        for h in self.schedule.history[prev:]:
            tqdm.write(f"[kd:stage] epoch {h['epoch'] + 1}: {h['from']} -> {h['to']} ({h['why']})")
        self._good = self._snapshot()
        means["total"] = 0.0 + sum(v for k, v in means.items() if k in ("loc", "cls", "gan", "soft", "fitnet", "began"))
        means["lr"] = (self.post_opt if self.schedule.stage == "post" else self.g_opt).param_groups[0]["lr"]
        self.last_info = {"stages": dict(stages_seen), "stage_now": self.schedule.stage, "round": self.schedule.rounds,
                          "mean_adversarial": mean_adv}
        return means

    # ----------------------------------------------------------------------------------------------- recovery
    def _modules(self) -> dict:
        return {"student": self.student, "adapters": self.adapters, "discs": self.discs, "began": self.began}

    def _optims(self) -> dict:
        return {"g_opt": self.g_opt, "d_opt": self.d_opt, "post_opt": self.post_opt}

    def _snapshot(self) -> dict:
        snap = {k: copy.deepcopy(m.state_dict()) for k, m in {**self._modules(), **self._optims()}.items() if m is not None}
        snap["began_k"] = list(self.began_k)
        return snap

    def _rollback(self) -> None:
        for k, m in {**self._modules(), **self._optims()}.items():
            if m is not None:
                m.load_state_dict(self._good[k])
        self.began_k = list(self._good["began_k"])
        for opt in self._optims().values():
            if opt is not None:
                for g in opt.param_groups:
                    g["lr"] *= 0.5
        self._good = self._snapshot()     # the halved learning rates are part of the good state now

    def _reset_discriminators(self, epoch: int) -> None:
        lr = self.d_opt.param_groups[0]["lr"] * 0.5
        for m in self.discs.modules():
            if hasattr(m, "reset_parameters") and m is not self.discs:
                m.reset_parameters()
        d_params = [p for m in (self.discs, self.began) if m is not None for p in m.parameters()]
        self.d_opt = torch.optim.Adam(d_params, lr=lr, betas=(0.5, 0.999))
        self.schedule.restart(epoch, "collapse recovery")

    # ----------------------------------------------------------------------------------------------- checkpoint
    def checkpoint_extra(self) -> dict:
        """Keys added to the run checkpoint. The student's inference weights stay alone under "model"."""
        return {
            "kd_modules": {"adapters": self.adapters.state_dict() if self.adapters is not None else {}},
            "discriminators": {"patch": self.discs.state_dict() if self.discs is not None else {},
                               "began": self.began.state_dict() if self.began is not None else {}},
            "gan_state": {"schedule": self.schedule.state_dict(), "monitor": self.monitor.state_dict(),
                          "began_k": list(self.began_k), "step": self.step, "methods": list(self.methods),
                          "weights": dict(self.weights), "teacher": str(self.cfg.teacher)},
            "kd_optimizers": {"generator": self.g_opt.state_dict(),
                              "discriminator": self.d_opt.state_dict() if self.d_opt is not None else {}},
        }

    def load_checkpoint_extra(self, ck: dict) -> None:
        if ck.get("gan_state") is None:
            raise ValueError("--resume: the checkpoint has no gan_state (not a --kd run)")
        if self.adapters is not None:
            self.adapters.load_state_dict(ck["kd_modules"]["adapters"])
        if self.discs is not None:
            self.discs.load_state_dict(ck["discriminators"]["patch"])
        if self.began is not None:
            self.began.load_state_dict(ck["discriminators"]["began"])
        self.g_opt.load_state_dict(ck["kd_optimizers"]["generator"])
        if self.d_opt is not None:
            self.d_opt.load_state_dict(ck["kd_optimizers"]["discriminator"])
        gs = ck["gan_state"]
        self.schedule = GanSchedule.from_state(gs["schedule"])
        self.monitor.load_state_dict(gs["monitor"])
        self.began_k, self.step = list(gs["began_k"]), int(gs["step"])
        self._good = self._snapshot()

    def describe(self) -> str:
        parts = [f"{m}={w:g}" for m, w in self.weights.items()]
        dropped = [m for m in self.methods if m not in self.weights]
        s = f"kd {' + '.join(parts) or 'none (baseline)'}, lambda(mbox)={self.cfg.kd_mbox_weight:g}"
        if dropped:
            s += f" [weight 0: {', '.join(dropped)}]"
        return s + f"; schedule starts at '{self.schedule.stage}'"


__all__ = ["KDSession", "METHODS", "KD_FIELDS", "parse_kd", "resolve_weights", "format_terms"]
