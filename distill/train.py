"""Train a detector: ``python -m distill.train [--preset quick] [--model NAME] [--data SPEC] ...``.

With no ``--model`` and no ``--config`` it runs the demo pipeline on the embedded dataset: a teacher
(cached once trained), then a student, and prints both mAPs side by side.

A run folder holds ``last.pt`` (and the ``--keep-last`` - 1 before it: ``last-prev.pt``, ...) and ``best.pt``
(atomic writes), ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one line per epoch; also flattened
in ``metrics.csv``; TensorBoard events with ``--tensorboard``), ``summary.json`` (COCO metrics of the best
checkpoint, params, GFLOPs, wall time) and ``curves.png``. ``--resume DIR`` continues a stopped run exactly;
a folder that holds a run is refused without ``--resume`` or ``--overwrite``. Ctrl-C / SIGTERM save a
checkpoint at the next batch and exit with 130 / 143 (distill/safety.py says what protects a run).
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch.utils.data import DataLoader

from runtime.atomic import write_json_atomic
from runtime.cli import command, fail

from . import arm_filter, demo, distributed
from .anchors import print_fit_warning
from .checkpoint import Checkpoint, load_weights, rng_state, save_last, set_aside_unreadable, set_rng_state
from .config import TrainConfig, build_parser, resolve, save_yaml
from .engine import (DetectorStep, EpochInterrupted, EpochProgress, evaluate, lr_lambda, param_groups,
                     train_one_epoch)
from .stability import NonFiniteLossError, StabilityMonitor, TrainingGuard
from .losses import DetectionLoss
from .models import check_model_kwargs, count_gflops, count_parameters, create_model, list_models, load_pretrained_backbone
from .presets import PRESETS
from .run_log import RunLog
from .safety import (RunInterrupted, SkipBatches, StopSignals, exit_code, prepare_run_folder, trim_metrics,
                     writing)
from .runs import (build_datasets, build_kd_session, pick_device, resume_config,  # noqa: F401 (re-exported)
                   memory_format, seed_everything)

SUMMARY_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


def detection_loss_fn(model, anchors, cfg: TrainConfig):
    """The plain detector objective (dict of named terms): :class:`~distill.losses.DetectionLoss`, the one the
    distillation plans use too."""
    objective = DetectionLoss(cfg.model.neg_pos_ratio, cfg.model.match_iou)

    def loss_fn(m, images, targets):
        loc, conf = m(images)
        return objective(loc, conf, targets, anchors, m.box_coder if hasattr(m, "box_coder") else model.box_coder)
    return loss_fn


class DetectorTraining:
    """The plain detector recipe: SGD or AdamW with a per-iteration warm-up + cosine / multistep schedule,
    optional AMP (CUDA) and EMA, one :class:`~distill.engine.DetectorStep` per batch.

    It and :class:`~distill.kd.KDSession` are the two training plans ``fit`` drives through the same loop:
    ``train_epoch``, ``eval_model``, ``checkpoint_state`` / ``load_checkpoint_state``, ``summary``, ``last_info``,
    and for a run stopped inside an epoch ``progress`` (the loop's, set by ``fit``), ``epoch_state`` /
    ``resume_epoch`` (the plan's own numbers of that epoch: none here).
    """
    progress: EpochProgress | None = None

    def __init__(self, cfg: TrainConfig, model, anchors, iters_per_epoch: int, device: torch.device):
        o = cfg.optim
        self.model, self.device, self.cfg = model, device, cfg
        groups = param_groups(model, o.weight_decay)
        self.optimizer = (torch.optim.AdamW(groups, lr=o.lr) if o.optimizer == "adamw"
                          else torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(
            o.epochs * iters_per_epoch, int(o.warmup_epochs * iters_per_epoch), o.schedule,
            [int(m * iters_per_epoch) for m in o.milestones], o.gamma))
        self.scaler = None
        if o.amp:
            if device.type == "cuda":
                self.scaler = torch.amp.GradScaler("cuda")
            else:
                warnings.warn("--amp needs CUDA; training in float32 on CPU")
        self.ema = None
        if o.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(o.ema_decay), use_buffers=True)
        self.guard = TrainingGuard(StabilityMonitor(), lambda: {"model": self.model, "optimizer": self.optimizer,
                                                                "scheduler": self.scheduler})
        self.step = DetectorStep(distributed.wrap_ddp(model), detection_loss_fn(model, anchors, cfg), self.optimizer,
                                 self.scheduler,
                                 self.guard, scaler=self.scaler, clip_grad=o.clip_grad, ema=self.ema)
        self.last_info = None

    @property
    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model

    def train_epoch(self, loader, epoch: int, desc: str) -> dict:
        self.step.epoch = epoch
        tr = distributed.mean_over_ranks(train_one_epoch(loader, self.step, self.device, epoch, model=self.model,
                                                         desc=desc, progress=self.progress))
        self.guard.commit()
        tr["lr"] = self.optimizer.param_groups[0]["lr"]
        return tr

    def checkpoint_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.module.state_dict() if self.ema is not None else None, "extra": {}}

    def load_checkpoint_state(self, ck: Checkpoint) -> None:
        self.optimizer.load_state_dict(ck.optimizer)
        self.scheduler.load_state_dict(ck.scheduler)
        if self.scaler is not None and ck.scaler:
            self.scaler.load_state_dict(ck.scaler)
        if self.ema is not None and ck.ema:
            self.ema.module.load_state_dict(ck.ema)
        self.guard.commit()

    def epoch_state(self) -> dict:
        return {}

    def resume_epoch(self, state: dict) -> None:
        pass

    def summary(self, tr: dict) -> str:
        return ""


def build_plan(cfg: TrainConfig, model, anchors, train_set, device):
    """The training plan of a run: a distillation session for ``--kd`` runs, else the plain detector's."""
    kd = build_kd_session(cfg, model, anchors, train_set, device)
    if kd is not None:
        return kd
    return DetectorTraining(cfg, model, anchors, max(1, len(train_set) // cfg.optim.batch_size), device)


def print_table(rows: list[dict], title: str) -> None:
    cols = ["run", "model", "params(M)", "GFLOPs", *SUMMARY_KEYS, "minutes"]
    lines = [[str(r.get(c, "")) if not isinstance(r.get(c), float) else "-" if math.isnan(r[c]) else f"{r[c]:.2f}"
              for c in cols] for r in rows]   # "-": COCO's -1 (NaN here), e.g. APs without small objects
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for l in lines:
        print("  ".join(v.ljust(w) for v, w in zip(l, widths)))


def build_model(cfg: TrainConfig, num_classes: int, resume: bool):
    """The model of a run: built, its ImageNet backbone or --init-weights loaded (not when resuming)."""
    model = create_model(cfg.model.name, num_classes, **cfg.model.kwargs)
    if cfg.model.pretrained_backbone and not resume:
        info = load_pretrained_backbone(model, cfg.model.pretrained_backbone)
        print(f"pretrained backbone: {info['loaded']}/{info['backbone_tensors']} tensors "
              f"from {cfg.model.pretrained_backbone}")
    if cfg.model.init_weights and not resume:
        init = Checkpoint.load(cfg.model.init_weights)
        plain = {k: v for k, v in cfg.model.kwargs.items() if k != "sr_generator"}   # kept G: a plain start fits
        if init.model_name != cfg.model.name or dict(init.model_kwargs) not in (dict(cfg.model.kwargs), plain):
            raise ValueError(f"--init-weights {cfg.model.init_weights}: a {init.model_name} {init.model_kwargs}, "
                             f"this run trains {cfg.model.name} {cfg.model.kwargs}")
        own_g = {k: v for k, v in model.state_dict().items() if k.startswith("sr_generator.")}
        load_weights(model, {**own_g, **init.model}, f"--init-weights {init.path}",   # G stays at its identity start
                     f"this run's {cfg.model.name} with {num_classes} classes")
        print(f"initial weights: {init.path}")
    return model


def epoch_loader(cfg: TrainConfig, train_set, epoch: int, skip: int = 0) -> DataLoader:
    """Data order and augmentation depend only on (seed, epoch): a resumed run sees the same batches. Under
    torchrun, this process's share of every global batch of ``--batch-size`` (distill/distributed.py). ``skip``:
    leave out the first batches (those an interrupted epoch had done)."""
    from torch.utils.data import RandomSampler

    from .data import collate_train
    torch.manual_seed(distributed.rank_seed(cfg.run.seed * 100_003 + epoch))
    gen = torch.Generator().manual_seed(cfg.run.seed * 100_003 + epoch)
    batches = distributed.RankBatchSampler(RandomSampler(train_set, generator=gen), cfg.optim.batch_size)
    if skip:
        batches = SkipBatches(batches, skip)
    return DataLoader(train_set, batch_sampler=batches, generator=gen, num_workers=cfg.data.workers,
                      collate_fn=collate_train, persistent_workers=False)


@dataclass
class RunState:
    """Where a run stands: the next ``epoch`` (0-based), optimizer ``step``s before it, the best validation mAP,
    and, when it stopped inside that epoch, the checkpoint's ``partial`` progress and RNG state."""
    epoch: int = 0
    step: int = 0
    best_map: float = -1.0
    partial: dict | None = None
    rng: dict | None = None


@dataclass
class Run:
    """The parts of one run that its epochs share; ``writer``: this process writes the run folder (rank 0)."""
    cfg: TrainConfig
    out: Path
    model: torch.nn.Module
    plan: Any
    train_set: Any
    t_start: float
    writer: bool

    def checkpoint(self, epoch: int, step: int, best_map: float, **fields: Any) -> Checkpoint:
        return Checkpoint.create(self.cfg, self.model, self.train_set.class_names, self.train_set.category_ids,
                                 epoch=epoch, step=step, rng=rng_state(), best_map=best_map,
                                 elapsed_s=time.time() - self.t_start, **self.plan.checkpoint_state(), **fields)

    def save_last(self, ck: Checkpoint) -> None:
        if self.writer:
            with writing(self.out / "last.pt"):
                save_last(ck, self.out, self.cfg.run.keep_last)

    def stop(self, signum: int, epoch: int, state: RunState, batches: int | None = None) -> NoReturn:
        """Save where the run is (mid-epoch: ``batches`` done of ``epoch``; None: the epoch's checkpoint is
        written) and exit with 128 + ``signum``, one line saying how to continue."""
        where = f"after epoch {epoch + 1}"
        if batches is not None:
            partial = {"epoch": epoch, "batches": batches, "step": state.step,
                       "loop": self.plan.progress.state_dict(), "plan": self.plan.epoch_state()}
            self.save_last(self.checkpoint(epoch - 1, state.step + batches, state.best_map, partial=partial))
            where = f"at epoch {epoch + 1} batch {batches}"
        if self.writer:
            print(f"interrupted {where}: saved {self.out / 'last.pt'}; continue with --resume {self.out}",
                  file=sys.stderr, flush=True)
        raise RunInterrupted(exit_code(signum))


def resume_run(run: Run, ck: Checkpoint) -> RunState:
    """Load ``ck`` into the run's model and plan; the run continues where it stopped, inside an epoch too."""
    run.model.load_state_dict(ck.model)
    run.plan.load_checkpoint_state(ck)
    set_rng_state(ck.rng)
    state = RunState(ck.epoch + 1, ck.step, ck.best_map)
    where = f"epoch {state.epoch + 1}/{run.cfg.optim.epochs}"
    if ck.partial:
        state.partial, state.rng, state.step = ck.partial, ck.rng, int(ck.partial["step"])
        run.plan.resume_epoch(ck.partial["plan"])
        where += f", batch {ck.partial['batches'] + 1}"
    if run.writer:
        with writing(run.out):
            if ck.path:
                set_aside_unreadable(run.out, ck.path)
            trim_metrics(run.out, ck.epoch + 1)
    print(f"resumed {run.out} at {where}")
    return state


def run_epoch(run: Run, epoch: int, state: RunState, signals: StopSignals) -> tuple[dict, int]:
    """One epoch of the plan, or the rest of the interrupted one; (its logged means, its number of batches)."""
    partial = state.partial if state.partial and state.partial["epoch"] == epoch else None
    skip = int(partial["batches"]) if partial else 0
    loader = epoch_loader(run.cfg, run.train_set, epoch, skip=skip)
    run.plan.progress = EpochProgress.from_state(partial["loop"]) if partial else EpochProgress()
    run.plan.progress.stop = signals.check
    if partial:
        set_rng_state(state.rng)             # where the epoch stopped (epoch_loader seeded the epoch's start)
    state.partial = None
    tr = run.plan.train_epoch(loader, epoch, desc=f"{run.cfg.model.name} epoch {epoch + 1}/{run.cfg.optim.epochs}")
    return tr, len(loader) + skip


def save_epoch(run: Run, epoch: int, state: RunState, row: dict, log: RunLog) -> None:
    """The epoch's files in the order that keeps a killed run consistent: best.pt, its metrics row, last.pt (a
    row without its last.pt is dropped on resume and the epoch computed again)."""
    ck = run.checkpoint(epoch, state.step, state.best_map)
    if row["val"] is not None and (row["val"]["mAP"] > state.best_map or not run.cfg.run.select_best):
        state.best_map = ck.best_map = max(state.best_map, row["val"]["mAP"])
        if run.writer:
            with writing(run.out / "best.pt"):
                ck.save(run.out / "best.pt")
    with writing(run.out / "metrics.jsonl"):
        log.add(row)
    run.save_last(ck)


def fit(cfg: TrainConfig, resume_ckpt: Checkpoint | dict | None = None, *, overwrite: bool = False) -> dict:
    """Train one model as configured; returns the run summary (also written to summary.json).

    ``resume_ckpt``: continue its run (inside an epoch too); otherwise ``cfg.run.out`` must not hold a run
    unless ``overwrite`` (its files are removed first). SIGINT / SIGTERM save a checkpoint at the next batch
    and exit (:class:`distill.safety.RunInterrupted`); a file that cannot be written is one ValueError line."""
    if isinstance(resume_ckpt, dict):
        resume_ckpt = Checkpoint.from_dict(resume_ckpt, "--resume checkpoint")
    t_start = time.time()
    device = distributed.setup(cfg.run.device, batch_size=cfg.optim.batch_size, sync_bn=cfg.optim.sync_bn).device
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Data workers need cores too: oversubscribed OpenMP threads make CPU training many times slower.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - cfg.data.workers))
    out = Path(cfg.run.out or f"runs/{cfg.model.name}")
    restarted = distributed.is_restart_of(out)   # torchrun --max-restarts restarted this job: continue its run
    resume_ckpt = resume_ckpt or (distributed.elastic_checkpoint(out) if restarted else None)
    writer = distributed.is_main()            # the one process that writes the run folder
    check_model_kwargs(cfg.model.name, cfg.model.kwargs)     # a bad model / kwarg leaves no run folder behind
    if writer:
        prepare_run_folder(out, resume=resume_ckpt is not None, overwrite=overwrite or restarted)
        distributed.mark_run_folder(out)
    seed_everything(cfg.run.seed)
    with distributed.main_first():        # rank 0 generates or indexes the data first, the others read its cache
        train_set, val_set = build_datasets(cfg)
    model = distributed.prepare_model(build_model(cfg, len(train_set.class_names), resume_ckpt is not None),
                                      cfg.optim.sync_bn).to(device, memory_format=memory_format(cfg))
    plan = build_plan(cfg, model, model.anchors(cfg.data.img_size).to(device), train_set, device)
    if writer:
        print_fit_warning(model.anchors(cfg.data.img_size), train_set, cfg.model.match_iou, cfg.data.data)
    run = Run(cfg, out, model, plan, train_set, t_start, writer)
    state = RunState()
    if resume_ckpt is not None:
        state = resume_run(run, resume_ckpt)
        run.t_start = t_start = t_start - resume_ckpt.elapsed_s   # wall time counts the whole run
    elif writer:
        with writing(out / "config.yaml"):
            save_yaml(cfg, out / "config.yaml")
    log = RunLog(out, tensorboard=cfg.run.tensorboard, fresh=resume_ckpt is None)
    eval_kw = dict(img_size=cfg.data.img_size, mean=cfg.data.mean, std=cfg.data.std, nms_cfg=cfg.nms,
                   workers=min(cfg.data.workers, 2))
    row: dict = {}
    with StopSignals() as signals:
        for epoch in range(state.epoch, cfg.optim.epochs):
            try:
                tr, batches = run_epoch(run, epoch, state, signals)
            except NonFiniteLossError as e:
                raise SystemExit(f"error: {e}. The last good weights are in {out / 'last.pt'}; lower --lr or raise --warmup-epochs.")
            except EpochInterrupted as e:
                run.stop(e.signum, epoch, state, e.progress.batches)
            state.step += batches
            row = {"epoch": epoch + 1, "step": state.step, "train": tr, "val": None, "time": time.time() - t_start}
            if plan.last_info is not None:
                row["kd"] = plan.last_info
            last = epoch + 1 == cfg.optim.epochs
            if (epoch + 1) % cfg.run.eval_every == 0 or last:
                distributed.sync_buffers(plan.eval_model)
                row["val"] = evaluate(plan.eval_model, val_set, device, max_images=cfg.run.eval_images, desc="eval",
                                      per_class=last, **eval_kw)
            save_epoch(run, epoch, state, row, log)
            tqdm_write(epoch_message(cfg, epoch, tr, row, plan))
            if signals.signum:
                run.stop(signals.signum, epoch, state)
    return finish(cfg, out, model, val_set, train_set, row, device, eval_kw, t_start)


def epoch_message(cfg: TrainConfig, epoch: int, tr: dict, row: dict, plan) -> str:
    msg = f"epoch {epoch + 1}/{cfg.optim.epochs}  loss {tr.get('total', float('nan')):.3f}  lr {tr['lr']:.4g}"
    extra = plan.summary(tr)
    if extra:
        msg += "  " + extra
    if row["val"]:
        msg += f"  mAP {row['val']['mAP']:.2f}  AP50 {row['val']['AP50']:.2f}"
    return msg


def finish(cfg: TrainConfig, out: Path, model, val_set, train_set, row: dict, device, eval_kw: dict,
           t_start: float) -> dict:
    """Final numbers: the kept checkpoint (best, or last with --no-select-best) on the whole validation set."""
    distributed.barrier()                 # rank 0 has written best.pt
    best = Checkpoint.load(out / "best.pt" if (out / "best.pt").is_file() else out / "last.pt")  # no box to score
    model.load_state_dict(best.ema or best.model)
    full_eval = cfg.run.eval_images is None or cfg.run.eval_images >= len(val_set)
    if full_eval and row.get("val") and best.epoch == cfg.optim.epochs - 1 and "per_class" in row["val"]:
        final = row["val"]           # the last epoch is the kept one and was already scored on the whole set
    else:
        final = evaluate(model, val_set, device, per_class=True, desc="final eval", **eval_kw)
    summary = {"run": str(out), "model": cfg.model.name, "kd": cfg.kd.methods, "teacher": cfg.kd.teacher,
               "best_epoch": best.epoch + 1,
               **{k: final[k] for k in SUMMARY_KEYS}, "per_class": final.get("per_class", {}),
               "params(M)": count_parameters(model) / 1e6, "GFLOPs": count_gflops(model, cfg.data.img_size),
               "img_size": cfg.data.img_size, "train_images": len(train_set), "val_images": len(val_set),
               "bad_samples": {"train": dict(train_set.bad_samples), "val": dict(val_set.bad_samples)},
               "minutes": (time.time() - t_start) / 60, "device": str(device)}
    if distributed.is_main():
        filtering = arm_filter.summary_rows(model, val_set, device, cfg)   # RefineDet: what theta filters
        if filtering is not None:
            summary["arm_filtering"] = filtering
        write_json_atomic(out / "summary.json", summary)
    return summary


def tqdm_write(msg: str) -> None:
    from tqdm import tqdm
    tqdm.write(msg)


@command("python -m distill.train", interrupt=False)  # Ctrl-C: the run's own handling
def main(argv: list[str] | None = None) -> int:
    parser = build_parser(description=__doc__)
    parser.add_argument("--list-models", action="store_true", help="print the registered models and exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (its checkpoints, metrics and summary are removed "
                             "first); without it a folder holding a run is refused: continue it with --resume")
    args = vars(parser.parse_args(argv))
    overwrite = args.pop("overwrite", False)
    if args.pop("list_models", False):
        print("\n".join(list_models()))
        return 0
    try:
        from .text.train import is_text_run, main_text
        if is_text_run(args):           # --task text (or --resume of a text run): distill/text/train.py
            return main_text(args, overwrite)
        args.pop("task", None)
        if args.get("resume"):
            if overwrite:
                raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
            cfg, ck = resume_config(args["resume"], args)
            summaries = [fit(cfg, resume_ckpt=ck)]
        elif "model" not in args and "config" not in args:
            summaries = demo.run_demo(args, fit)
        else:
            args.setdefault("preset", "quick")
            summaries = [fit(resolve(args, PRESETS), overwrite=overwrite)]
    except ValueError as e:
        return fail(e)
    except KeyboardInterrupt:           # a second Ctrl-C in training, or one before training started
        print("stopped at once (Ctrl-C): nothing saved since the last checkpoint", file=sys.stderr)
        return exit_code(signal.SIGINT)
    print_table(summaries, "Results (COCO metrics in points on the validation set)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
