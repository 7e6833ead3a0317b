"""Training of the text / non-text classifier: ``python -m distill.train --task text --model textnet_teacher``.

The run folder, its files and its protection are the detectors' (distill/train.py, distill/safety.py):
``last.pt`` chain and ``best.pt`` (atomic), ``config.yaml``, ``metrics.jsonl`` / ``metrics.csv`` /
``curves.png``, ``summary.json``; an existing run is refused without ``--resume`` / ``--overwrite``;
SIGINT / SIGTERM save a checkpoint at the next batch and ``--resume`` continues exactly.

What is trained (papers/text-nontext-kd.txt, section III.D; the objectives are in distill/text/kd.py):

* teacher, and student without ``--kd``: region-level BCE on the region labels (the "hard label" row);
* student with ``--kd``: methods of ``ab``, ``soft``, ``began`` joined by '+'. With ``ab``, ``--ab-epochs``
  epochs of activation-boundary pre-training (eq. 1) come first, then ``--epochs`` of the student loss
  (eq. 2): soft labels (eq. 3, else the hard labels) + ``--began-b`` x L_G with the BEGAN discriminator
  (eqs. 4-6), discriminator and student alternating on every batch with separate optimizers.

Optimisation. The paper: SGD, batch 1, lr 1e-4 (teacher and student), 1e-5 for the pre-training, the
discriminator at twice the student's rate, the student's rate / 10 "when the train loss stops improving".
Kept here: the pre-training at 1/10 and the discriminator at 2x the run's ``--lr``. The optimizer, ``--lr``,
batch and schedule come from the config: the paper's SGD at 1e-4 with batch 1 assumes long schedules of ~11k
images (TextDis), far beyond a CPU's minutes; the presets use AdamW at 1e-3 and batches of 16 instead, and
``--schedule cosine`` (default) decays the main stage's lr per epoch to near 0 by its last epoch (the epoch
the studies report: at a constant 1e-3 the validation F of consecutive epochs swings by several points, and
the paper's plateau rule rarely fires within a few epochs). ``--schedule plateau`` is the paper's decay (factor
0.1 on the epoch's training loss; the paper gives no patience: 2 epochs); ``multistep`` uses ``--milestones``.
Augmentation: horizontal flips (the region labels flipped with them); the paper's rotations are not applied.

Evaluation after every ``--eval-every`` epochs on the validation split: image-level precision / recall /
F-measure (runtime.textdata.text_prf, threshold 0.5) and region accuracy; ``best.pt`` is the epoch with the
best F among those after pre-training.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from runtime.atomic import write_json_atomic
from runtime.sizes import as_hw
from runtime.textdata import TextFolder, parse_text_spec, text_prf

from ..checkpoint import Checkpoint, rng_state, save_last, set_aside_unreadable, set_rng_state
from ..config import TrainConfig, load_yaml, resolve, save_yaml
from ..engine import lr_lambda, param_groups
from ..presets import PRESETS
from ..run_log import RunLog
from ..runs import pick_device, resume_config, seed_everything
from ..safety import RunInterrupted, SkipBatches, StopSignals, exit_code, prepare_run_folder, trim_metrics, writing
from .data import generate
from .kd import BeganControl, ab_loss, hard_loss, parse_text_kd, region_stack, soft_loss
from .models import TEXT_MODELS, count_parameters, create_text_model
from .regions import GRIDS, region_label_grids

VAL_SEED_OFFSET = 1000          # the embedded validation set: generator seed --shapes-seed + this
HOLDOUT_EVERY = 10              # text:DIR without --val-data: every 10th image is held out for validation
PLATEAU_PATIENCE = 2            # epochs without a lower training loss before lr / 10 (the paper gives none)
AB_LR_FACTOR = 0.1              # paper: pre-training at 1e-5 against 1e-4
D_LR_FACTOR = 2.0               # paper: "the learning rate of the discriminator network is always twice"
THRESHOLD = 0.5                 # image-level decision threshold on the text probability
VAL_KEYS = ("f1", "precision", "recall", "accuracy", "region_acc")

# Presets for --task text: the detectors' (distill/presets.py) without their anchor kwargs, on the embedded
# text data, with these changes. quick: 128 px, 1000 + 200 images, a few epochs (minutes for the student on
# a CPU; the VGG-16 teacher is ~100x slower per image).
TEXT_PRESET_CHANGES: dict[str, dict[str, Any]] = {
    "smoke": dict(ab_epochs=1, img_size=64),
    "quick": dict(img_size=128, shapes_train=1000, shapes_val=200, epochs=6, batch_size=16, optimizer="adamw",
                  lr=1e-3, weight_decay=1e-4, ab_epochs=1, eval_images=None),
}


def text_presets() -> dict[str, dict[str, Any]]:
    """Every preset for the text task: data 'text', no detector model kwargs, :data:`TEXT_PRESET_CHANGES`."""
    return {name: {**{k: v for k, v in p.items() if k not in ("model_kwargs", "data")}, "data": "text",
                   **TEXT_PRESET_CHANGES.get(name, {})} for name, p in PRESETS.items()}


def is_text_run(args: dict[str, Any]) -> bool:
    """Whether the command line (flag names -> values given) trains the text classifier: ``--task text``, or
    ``--resume`` of a text run. ValueError, one line, for a model of the other task."""
    task = args.get("task")
    if task is None and args.get("resume"):
        folder = Path(args["resume"])
        folder = folder.parent if folder.suffix == ".pt" else folder
        if (folder / "config.yaml").is_file():
            task = load_yaml(folder / "config.yaml").run.task
    model = args.get("model")
    if task == "text" and model is not None and model not in TEXT_MODELS:
        raise ValueError(f"--task text trains {' or '.join(TEXT_MODELS)}, not --model {model} (a detector: "
                         "drop --task text)")
    if task != "text" and model in TEXT_MODELS:
        raise ValueError(f"--model {model} is a text / non-text classifier: add --task text")
    return task == "text"


def input_size(cfg: TrainConfig) -> tuple[int, int]:
    """(H, W): ``--text-size HxW``, else ``--img-size`` (S or HxW). ValueError below 32 px."""
    spec = cfg.data.text_size
    try:
        hw = as_hw(spec if spec else cfg.data.img_size)
    except ValueError:
        hw = ()
    if len(hw) != 2 or min(hw) < 32:
        raise ValueError(f"--text-size {spec!r} / --img-size {cfg.data.img_size}: expected HxW of at least 32 px, "
                         "e.g. 128x192")
    return hw


# ----------------------------------------------------------------------------------------------- data
class TextTrainSet(Dataset):
    """Items for training and evaluation: (image float32 [3, H, W] normalised with mean / std, label float32
    scalar, regions {g: float32 [g, g]} of 0 / 1, has_boxes bool scalar: whether the regions are known).

    ``source``: ("embedded", (count, seed)) -- generated images, kept in memory once made -- or ("folder",
    (TextFolder, indices))."""

    def __init__(self, source: tuple[str, Any], size: tuple[int, int], mean, std, grids=GRIDS) -> None:
        self.kind, self.arg = source
        self.size, self.grids = tuple(size), tuple(grids)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.indices = list(range(self.arg[0])) if self.kind == "embedded" else list(self.arg[1])
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, int, bool]] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray, int, bool]:
        """(uint8 [H, W, 3] RGB, boxes float32 [N, 4] xyxy pixels, label, has_boxes) of item ``i``."""
        if self.kind == "folder":
            image, info = self.arg[0][self.indices[i]]
            return image, info["boxes"], info["label"], bool(self.arg[0].has_boxes[self.indices[i]])
        if i not in self._cache:
            s = generate(self.arg[1], self.indices[i], self.size)
            self._cache[i] = (s.image, s.boxes, int(s.is_text), True)
        return self._cache[i]

    def labels(self) -> np.ndarray:
        """int64 [N]: 1 text, 0 non-text."""
        if self.kind == "folder":
            return self.arg[0].labels[self.indices]
        return np.asarray([1 - i % 2 for i in self.indices], dtype=np.int64)     # even indices are text

    def __getitem__(self, i: int):
        image, boxes, label, has_boxes = self.raw(i)
        regions = region_label_grids(boxes, self.size, self.grids)
        x = (torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0 - self.mean) / self.std
        return x, torch.tensor(float(label)), {g: torch.from_numpy(r) for g, r in regions.items()}, \
            torch.tensor(has_boxes)


def build_text_datasets(cfg: TrainConfig, size: tuple[int, int]) -> tuple[TextTrainSet, TextTrainSet]:
    """(train, validation) from ``--data`` / ``--val-data`` (``text`` or ``text:DIR``)."""
    d = cfg.data
    kind, root = parse_text_spec(d.data)
    common = dict(size=size, mean=d.mean, std=d.std)
    if kind == "embedded":
        train = TextTrainSet(("embedded", (d.shapes_train, d.shapes_seed)), **common)
    else:
        folder = TextFolder(root, size)
        held = set(range(HOLDOUT_EVERY - 1, len(folder), HOLDOUT_EVERY)) if d.val_data is None else set()
        train = TextTrainSet(("folder", (folder, [i for i in range(len(folder)) if i not in held])), **common)
        if held:
            print(f"{d.data}: no --val-data; every {HOLDOUT_EVERY}th image ({len(held)}) is held out for validation")
            return train, TextTrainSet(("folder", (folder, sorted(held))), **common)
    if d.val_data is None:
        return train, TextTrainSet(("embedded", (d.shapes_val, d.shapes_seed + VAL_SEED_OFFSET)), **common)
    vkind, vroot = parse_text_spec(d.val_data)
    if vkind == "embedded":
        return train, TextTrainSet(("embedded", (d.shapes_val, d.shapes_seed + VAL_SEED_OFFSET)), **common)
    vfolder = TextFolder(vroot, size)
    return train, TextTrainSet(("folder", (vfolder, range(len(vfolder)))), **common)


def epoch_loader(cfg: TrainConfig, train_set: TextTrainSet, epoch: int, skip: int = 0) -> DataLoader:
    """The epoch's batches: their order depends only on (seed, epoch); ``skip`` leaves out the first ones (those
    an interrupted epoch had done). Seeds torch's global generator for the epoch (the flips draw from it)."""
    from torch.utils.data import BatchSampler, RandomSampler
    torch.manual_seed(cfg.run.seed * 100_003 + epoch)
    gen = torch.Generator().manual_seed(cfg.run.seed * 100_003 + epoch)
    batches = BatchSampler(RandomSampler(train_set, generator=gen), cfg.optim.batch_size, drop_last=False)
    return DataLoader(train_set, batch_sampler=SkipBatches(batches, skip) if skip else batches,
                      num_workers=cfg.data.workers, generator=gen)    # gen: no draw from the global RNG


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_text(model: torch.nn.Module, dataset: TextTrainSet, device: torch.device, batch_size: int = 32,
                  max_images: int | None = None, threshold: float = THRESHOLD) -> dict[str, float]:
    """Image-level P / R / F / accuracy in points (text_prf) and ``region_acc``: the share of regions (both
    grids, images with known regions) whose probability >= 0.5 agrees with the region label, in points."""
    was_training = model.training
    model.eval()
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    probs, labels, hits, regions_seen = [], [], 0.0, 0
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        x, y, regions, known = torch.utils.data.default_collate(items)
        out = model(x.to(device))
        probs.append(torch.sigmoid(out["image_logit"]).cpu())
        labels.append(y)
        for g, r in regions.items():
            agree = (torch.sigmoid(out["region_logits"][g]).cpu() >= 0.5) == r.bool()
            hits += float(agree[known].sum())
            regions_seen += int(known.sum()) * g * g
    model.train(was_training)
    result = text_prf(torch.cat(probs).numpy(), torch.cat(labels).numpy().astype(np.int64), threshold)
    result["region_acc"] = 100.0 * hits / max(1, regions_seen)
    result["images"] = n
    return result


# ----------------------------------------------------------------------------------------------- the plan
def _optimizer(cfg: TrainConfig, params, lr: float) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=o.momentum)


def main_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer):
    """The main stage's lr schedule, stepped once per main epoch: ``--schedule plateau`` (the paper's: lr / 10
    after PLATEAU_PATIENCE epochs without a lower training loss), else ``cosine`` (x 0.5 (1 + cos(pi e / E))
    at main epoch e of E) or ``multistep`` (x --gamma at each of --milestones, in main epochs)."""
    o = cfg.optim
    if o.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=PLATEAU_PATIENCE)
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.epochs, 0, o.schedule, [int(m) for m in o.milestones],
                                                            o.gamma))


class TextPlan:
    """The optimisation of one run: the model's optimizer and lr schedule (:func:`main_schedule`), and for
    ``--kd`` the teacher, the pre-training optimizer (``ab``) and the BEGAN discriminator with its optimizer and
    k_t (``began``)."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, teacher: torch.nn.Module | None,
                 methods: list[str], device: torch.device) -> None:
        self.cfg, self.model, self.teacher, self.methods, self.device = cfg, model, teacher, methods, device
        lr, wd = cfg.optim.lr, cfg.optim.weight_decay
        self.opt = _optimizer(cfg, param_groups(model, wd), lr)
        self.sched = main_schedule(cfg, self.opt)
        self.ab_epochs = cfg.kd.ab_epochs if "ab" in methods else 0
        self.ab_opt = _optimizer(cfg, param_groups(model, wd), lr * AB_LR_FACTOR) if self.ab_epochs else None
        self.began = None
        if "began" in methods:
            self.began = BeganControl(_feature_dim(model), cfg.kd.began_gamma, cfg.kd.began_fk)
            self.began.disc.to(device)
            self.d_opt = _optimizer(cfg, self.began.disc.parameters(), lr * D_LR_FACTOR)

    @property
    def epochs(self) -> int:
        return self.ab_epochs + self.cfg.optim.epochs

    def stage(self, epoch: int) -> str:
        """'ab' (activation-boundary pre-training) for the first ``--ab-epochs`` epochs with ``--kd ab+...``,
        else 'main'."""
        return "ab" if epoch < self.ab_epochs else "main"

    def step(self, batch, stage: str) -> dict[str, float]:
        """One batch: flips, the stage's losses, the optimizer steps; the logged terms by name."""
        x, y, regions, known = batch
        x, y, known = x.to(self.device), y.to(self.device), known.to(self.device)
        regions = {g: r.to(self.device) for g, r in regions.items()}
        if self.cfg.data.augment != "none":
            flip = torch.rand(x.shape[0]) < 0.5                       # torch's global generator: resumable
            x = torch.where(flip.to(self.device).view(-1, 1, 1, 1), x.flip(-1), x)
            regions = {g: torch.where(flip.to(self.device).view(-1, 1, 1), r.flip(-1), r) for g, r in regions.items()}
        out = self.model(x)
        t_out = None
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(x)
        if stage == "ab":
            terms = {"ab": ab_loss(out, t_out, self.cfg.kd.ab_margin)}
            return self._update(self.ab_opt, terms)
        terms = {"soft": soft_loss(out, t_out)} if "soft" in self.methods else {"hard": hard_loss(out, regions, y, known)}
        if self.began is not None:
            s_feats = region_stack(out)
            terms["began_g"] = self.cfg.kd.began_b * self.began.student_term(s_feats)     # b L_G, eq. 2
        info = self._update(self.opt, terms)
        if self.began is not None:
            info.update(self._discriminator_step(region_stack(t_out), s_feats))
        return info

    def _update(self, opt: torch.optim.Optimizer, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        total = sum(terms.values())
        if not torch.isfinite(total):
            raise ValueError(f"non-finite training loss ({', '.join(f'{k} {float(v):.4g}' for k, v in terms.items())})"
                             "; lower --lr")
        opt.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad)
        opt.step()
        return {"total": float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    def _discriminator_step(self, t_feats: torch.Tensor, s_feats: torch.Tensor) -> dict[str, float]:
        """Eq. 4 on the batch's teacher and (detached) student features, then eq. 6."""
        d_loss, real, fake = self.began.discriminator_loss(t_feats, s_feats)
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        k = self.began.update_k(real, fake)
        return {"d_began": float(d_loss.detach()), "recon_real": real, "recon_fake": fake, "began_k": k}

    def end_epoch(self, means: dict[str, float], stage: str) -> None:
        if stage != "main":
            return
        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if "total" in means:
                self.sched.step(means["total"])
        else:
            self.sched.step()

    def lr(self, stage: str) -> float:
        return (self.ab_opt if stage == "ab" else self.opt).param_groups[0]["lr"]

    def state(self) -> dict[str, Any]:
        """The plan's training state for the checkpoint: optimizer, scheduler and the ``extra`` part."""
        extra: dict[str, Any] = {"ab_optimizer": self.ab_opt.state_dict() if self.ab_opt else None}
        if self.began is not None:
            extra.update(discriminator=self.began.disc.state_dict(), d_optimizer=self.d_opt.state_dict(),
                         began_k=self.began.k)
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "training": extra}

    def load_state(self, ck: Checkpoint) -> None:
        plateau = isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if ck.scheduler and ("patience" in ck.scheduler) != plateau:
            raise ValueError(f"{ck.path}: trained with {'the plateau' if not plateau else 'an epoch'} schedule; "
                             f"resume it with --schedule {'plateau' if not plateau else 'cosine'}")
        self.opt.load_state_dict(ck.optimizer)
        self.sched.load_state_dict(ck.scheduler)
        extra = ck.extra.get("text_training") or {}
        if self.ab_opt is not None and extra.get("ab_optimizer"):
            self.ab_opt.load_state_dict(extra["ab_optimizer"])
        if self.began is not None:
            self.began.disc.load_state_dict(extra["discriminator"])
            self.d_opt.load_state_dict(extra["d_optimizer"])
            self.began.k = float(extra["began_k"])


def _feature_dim(model: torch.nn.Module) -> int:
    heads = model.heads.values() if hasattr(model, "heads") else [model.head]
    return next(iter(heads)).map.out_features


def load_text_teacher(path: str, student_kwargs: dict[str, Any], cfg: TrainConfig,
                      device: torch.device) -> torch.nn.Module:
    """The frozen teacher of ``--teacher``; ValueError, one line, when it is not a text classifier whose grids,
    feature size and normalisation match the student's."""
    ck = Checkpoint.load(path)
    if ck.model_name not in TEXT_MODELS or ck.extra.get("task") != "text":
        raise ValueError(f"--teacher {path}: a {ck.model_name} checkpoint, expected a text classifier "
                         f"({' / '.join(TEXT_MODELS)}) trained with --task text")
    for key in ("grids", "feature_dim"):
        if list(np.atleast_1d(ck.model_kwargs.get(key))) != list(np.atleast_1d(student_kwargs[key])):
            raise ValueError(f"--teacher {path}: {key} {ck.model_kwargs.get(key)}, the student has "
                             f"{student_kwargs[key]}; distillation needs the same")
    if [round(v, 6) for v in ck.extra.get("mean", [])] != [round(v, 6) for v in cfg.data.mean] or \
            [round(v, 6) for v in ck.extra.get("std", [])] != [round(v, 6) for v in cfg.data.std]:
        raise ValueError(f"--teacher {path}: trained with mean {ck.extra.get('mean')} / std {ck.extra.get('std')}, "
                         f"this run normalises with {cfg.data.mean} / {cfg.data.std}")
    teacher = ck.build_model().to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    print(f"teacher {ck.model_name} from {ck.path} (validation F {ck.best_map:.2f})")
    return teacher


# ----------------------------------------------------------------------------------------------- the loop
@dataclass
class TextRun:
    """The parts of one run its epochs share."""
    cfg: TrainConfig
    out: Path
    model: torch.nn.Module
    model_kwargs: dict[str, Any]
    plan: TextPlan
    size: tuple[int, int]
    train_set: TextTrainSet
    val_set: TextTrainSet
    device: torch.device
    t_start: float
    epoch: int = 0
    step: int = 0
    best_f: float = -1.0
    partial: dict[str, Any] | None = None
    log: RunLog | None = field(default=None, repr=False)

    def checkpoint(self, epoch: int, partial: dict[str, Any] | None = None) -> Checkpoint:
        """The checkpoint after 0-based ``epoch`` (``partial``: inside epoch + 1), the contract's ``extra``."""
        state = self.plan.state()
        extra = {"task": "text", "img_size": list(self.size), "mean": list(self.cfg.data.mean),
                 "std": list(self.cfg.data.std), "threshold": THRESHOLD, "grids": list(self.model_kwargs["grids"]),
                 "text_training": state["training"]}
        return Checkpoint(model_name=self.cfg.model.name, model_kwargs=dict(self.model_kwargs), num_classes=1,
                          model=self.model.state_dict(), optimizer=state["optimizer"], scheduler=state["scheduler"],
                          epoch=epoch, step=self.step, rng=rng_state(), class_names=["text"], category_ids=[1],
                          config=self.cfg.to_dict(), nms=self.cfg.nms.to_dict(), best_map=self.best_f,
                          elapsed_s=time.time() - self.t_start, extra=extra, partial=partial)

    def save_last(self, ck: Checkpoint) -> None:
        with writing(self.out / "last.pt"):
            save_last(ck, self.out, self.cfg.run.keep_last)


def run_epoch(run: TextRun, epoch: int, signals: StopSignals) -> tuple[dict[str, float], int]:
    """One epoch (or the rest of the interrupted one): (the logged terms' means, the epoch's batches)."""
    from tqdm import tqdm
    partial = run.partial if run.partial and run.partial["epoch"] == epoch else None
    done = int(partial["batches"]) if partial else 0
    # main-stage epochs count from 0 after the pre-training: a seed's rows with and without --kd ab+... then
    # see the same batches and flips in their main epochs (paired comparisons)
    order = epoch - run.plan.ab_epochs if run.plan.stage(epoch) == "main" else epoch
    loader = epoch_loader(run.cfg, run.train_set, order, skip=done)
    if partial:
        set_rng_state(partial["rng"])          # where the epoch stopped (epoch_loader seeded its start)
    run.partial = None
    sums: dict[str, float] = dict(partial["sums"]) if partial else {}
    stage = run.plan.stage(epoch)
    run.model.train()
    bar = tqdm(loader, desc=f"{run.cfg.model.name} epoch {epoch + 1}/{run.plan.epochs} ({stage})", leave=False,
               dynamic_ncols=True)
    for batch in bar:
        for k, v in run.plan.step(batch, stage).items():
            sums[k] = sums.get(k, 0.0) + v
        done += 1
        bar.set_postfix(loss=f"{sums['total'] / done:.3f}")
        signum = signals.check(epoch, done)
        if signum:
            bar.close()
            partial = {"epoch": epoch, "batches": done, "step": run.step, "sums": sums, "rng": rng_state()}
            run.save_last(run.checkpoint(epoch - 1, partial))
            print(f"interrupted at epoch {epoch + 1} batch {done}: saved {run.out / 'last.pt'}; continue with "
                  f"--resume {run.out}", file=sys.stderr, flush=True)
            raise RunInterrupted(exit_code(signum))
    means = {k: v / max(1, done) for k, v in sums.items()}
    lr = run.plan.lr(stage)                       # the lr this epoch trained at (end_epoch steps the schedule)
    run.plan.end_epoch(means, stage)
    means["lr"] = lr
    return means, done


def finish_epoch(run: TextRun, epoch: int, means: dict[str, float], batches: int) -> str:
    """Evaluate when due, then write best.pt, the metrics row and last.pt (distill/train.py's order);
    returns the epoch's line."""
    cfg, stage = run.cfg, run.plan.stage(epoch)
    run.step += batches
    val = None
    if (epoch + 1) % cfg.run.eval_every == 0 or epoch + 1 == run.plan.epochs:
        val = evaluate_text(run.model, run.val_set, run.device, cfg.optim.batch_size, cfg.run.eval_images)
    ck = run.checkpoint(epoch)
    if val is not None and stage == "main" and (val["f1"] > run.best_f or not cfg.run.select_best):
        run.best_f = ck.best_map = max(run.best_f, val["f1"])
        with writing(run.out / "best.pt"):
            ck.save(run.out / "best.pt")
    row = {"epoch": epoch + 1, "step": run.step, "stage": stage, "train": means, "val": val,
           "time": time.time() - run.t_start}
    with writing(run.out / "metrics.jsonl"):
        run.log.add(row)
    run.save_last(ck)
    terms = "  ".join(f"{k} {v:.4g}" for k, v in means.items())
    scores = f"  P {val['precision']:.1f} R {val['recall']:.1f} F {val['f1']:.2f} region acc " \
             f"{val['region_acc']:.1f}" if val else ""
    return f"epoch {epoch + 1}/{run.plan.epochs} [{stage}]  {terms}{scores}"


def setup_run(cfg: TrainConfig, resume_ckpt: Checkpoint | None, overwrite: bool) -> TextRun:
    """Folder, data, model (and teacher), plan; a resumed run continues where its checkpoint stopped."""
    t_start = time.time()
    device = pick_device(cfg.run.device)
    size = input_size(cfg)
    methods = parse_text_kd(cfg.kd.methods)
    if cfg.model.pretrained_backbone or cfg.model.init_weights:
        raise ValueError("--pretrained-backbone / --init-weights load detector weights; --task text trains its "
                         "models from scratch (or continues one with --resume)")
    if bool(methods) != bool(cfg.kd.teacher):
        raise ValueError(f"--kd {cfg.kd.methods} needs --teacher CHECKPOINT (a text teacher's best.pt)" if methods
                         else "--teacher is only used with --kd (e.g. --kd ab+soft+began)")
    out = Path(cfg.run.out or f"runs/{cfg.model.name}")
    train_set, val_set = build_text_datasets(cfg, size)          # bad data: one line, before the folder is made
    kwargs = {"grids": list(GRIDS), "feature_dim": 128, **cfg.model.kwargs}
    teacher = load_text_teacher(cfg.kd.teacher, kwargs, cfg, device) if methods else None
    prepare_run_folder(out, resume=resume_ckpt is not None, overwrite=overwrite)
    seed_everything(cfg.run.seed)
    model = create_text_model(cfg.model.name, **kwargs).to(device)
    plan = TextPlan(cfg, model, teacher, methods, device)
    run = TextRun(cfg, out, model, kwargs, plan, size, train_set, val_set, device, t_start)
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt.model)
        plan.load_state(resume_ckpt)
        set_rng_state(resume_ckpt.rng)
        run.epoch, run.step, run.best_f = resume_ckpt.epoch + 1, resume_ckpt.step, resume_ckpt.best_map
        run.partial = resume_ckpt.partial
        run.t_start -= resume_ckpt.elapsed_s
        with writing(out):
            if resume_ckpt.path:
                set_aside_unreadable(out, resume_ckpt.path)
            trim_metrics(out, resume_ckpt.epoch + 1)
        where = f"epoch {run.epoch + 1}" + (f", batch {run.partial['batches'] + 1}" if run.partial else "")
        print(f"resumed {out} at {where}")
    else:
        with writing(out / "config.yaml"):
            save_yaml(cfg, out / "config.yaml")
    run.log = RunLog(out, tensorboard=cfg.run.tensorboard, fresh=resume_ckpt is None, val_keys=VAL_KEYS,
                     val_curves=("f1", "precision", "recall"))
    return run


def text_fit(cfg: TrainConfig, resume_ckpt: Checkpoint | None = None, *, overwrite: bool = False) -> dict:
    """Train the text classifier as configured; returns the summary (also written to summary.json)."""
    run = setup_run(cfg, resume_ckpt, overwrite)
    from tqdm import tqdm
    with StopSignals() as signals:
        for epoch in range(run.epoch, run.plan.epochs):
            means, batches = run_epoch(run, epoch, signals)
            tqdm.write(finish_epoch(run, epoch, means, batches))
            if signals.signum:
                print(f"interrupted after epoch {epoch + 1}: saved {run.out / 'last.pt'}; continue with "
                      f"--resume {run.out}", file=sys.stderr, flush=True)
                raise RunInterrupted(exit_code(signals.signum))
    return finish(run)


def finish(run: TextRun) -> dict:
    """The kept checkpoint (best.pt, else last.pt) scored on the whole validation set; summary.json."""
    best = Checkpoint.load(run.out / "best.pt" if (run.out / "best.pt").is_file() else run.out / "last.pt")
    run.model.load_state_dict(best.model)
    final = evaluate_text(run.model, run.val_set, run.device, run.cfg.optim.batch_size)
    summary = {"run": str(run.out), "task": "text", "model": run.cfg.model.name, "kd": run.cfg.kd.methods,
               "teacher": run.cfg.kd.teacher, "best_epoch": best.epoch + 1,
               **{k: final[k] for k in ("precision", "recall", "f1", "accuracy", "region_acc", "tp", "fp", "fn",
                                        "tn", "threshold")},
               "params": count_parameters(run.model), "params(M)": count_parameters(run.model) / 1e6,
               "img_size": list(run.size), "train_images": len(run.train_set), "val_images": len(run.val_set),
               "minutes": (time.time() - run.t_start) / 60, "device": str(run.device)}
    with writing(run.out / "summary.json"):
        write_json_atomic(run.out / "summary.json", summary)
    return summary


def print_text_table(summaries: list[dict]) -> None:
    cols = ("run", "model", "kd", "params(M)", "recall", "precision", "f1", "region_acc", "minutes")
    lines = [[f"{s[c]:.3f}" if c == "params(M)" else f"{s[c]:.2f}" if isinstance(s[c], float) else str(s[c])
              for c in cols] for s in summaries]
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    print("\nResults (image-level recall / precision / F-measure and region accuracy, points, validation set)")
    for l in [list(cols), ["-" * w for w in widths], *lines]:
        print("  ".join(v.ljust(w) for v, w in zip(l, widths)))


def main_text(args: dict[str, Any], overwrite: bool) -> int:
    """``python -m distill.train --task text ...`` (``args``: the flags given, flag names -> values)."""
    if args.get("resume"):
        if overwrite:
            raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
        cfg, ck = resume_config(args["resume"], {k: v for k, v in args.items() if k != "task"})
        summary = text_fit(cfg, ck)
    else:
        if "model" not in args and "config" not in args:
            raise ValueError(f"--task text needs --model ({' or '.join(TEXT_MODELS)})")
        args.setdefault("preset", "quick")
        cfg = resolve(args, text_presets())
        parse_text_spec(cfg.data.data)
        summary = text_fit(cfg, overwrite=overwrite)
    print_text_table([summary])
    return 0
