"""Train a detector: ``python -m distill.train [--preset quick] [--model NAME] [--data SPEC] ...``.

With no ``--model`` and no ``--config`` it runs the demo pipeline on the embedded dataset: a teacher
(cached once trained), then a student, and prints both mAPs side by side.

A run folder holds ``last.pt`` and ``best.pt`` (atomic writes), ``config.yaml`` (the resolved config),
``metrics.jsonl`` (one line per epoch), ``summary.json`` (COCO metrics of the best checkpoint, params,
GFLOPs, wall time) and ``curves.png``. ``--resume DIR`` continues a stopped run exactly.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from runtime.metadata import write_json_atomic

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, build_parser, load_yaml, resolve, save_yaml
from .engine import NonFiniteLossError, evaluate, lr_lambda, param_groups, train_one_epoch
from .losses import MultiBoxLoss, encode_targets
from .models import Matcher, count_gflops, count_parameters, create_model, list_models, load_pretrained_backbone
from .presets import PRESETS

SUMMARY_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_datasets(cfg: TrainConfig):
    from .data import build_dataset, default_val_spec
    common = dict(img_size=cfg.img_size, mean=cfg.mean, std=cfg.std, on_bad_sample=cfg.on_bad_sample,
                  zoom_out_max=cfg.zoom_out_max,
                  data_root=cfg.data_root,
                  shapes_kwargs={"num_train": cfg.shapes_train, "num_val": cfg.shapes_val, "seed": cfg.shapes_seed})
    train_set = build_dataset(cfg.data, "train", train=True, augment=cfg.augment, **common)
    val_spec = cfg.val_data or default_val_spec(cfg.data)
    val_set = build_dataset(val_spec, "val", train=False, **common)
    if list(val_set.class_names) != list(train_set.class_names):
        raise ValueError(f"validation classes {val_set.class_names} differ from training classes {train_set.class_names}")
    return train_set, val_set


def detection_loss_fn(model, anchors, cfg: TrainConfig):
    """The plain SSD objective: encode targets against the anchors, multibox loss (dict of named terms)."""
    matcher, criterion = Matcher(cfg.match_iou), MultiBoxLoss(cfg.neg_pos_ratio)

    def loss_fn(m, images, targets):
        loc, conf = m(images)
        t = encode_targets(targets, anchors, m.box_coder if hasattr(m, "box_coder") else model.box_coder, matcher)
        return criterion(loc, conf, t)
    return loss_fn


def build_loss_fn(cfg: TrainConfig, model, anchors, train_set, device):
    """Where training objectives are chosen. Distillation methods extend this (see distill/kd)."""
    return detection_loss_fn(model, anchors, cfg)


def build_kd_session(cfg: TrainConfig, model, anchors, train_set, device):
    """The distillation session for ``--kd`` runs (None for plain training). Loads and checks the teacher."""
    from .kd import KDSession, check_compatible, load_teacher, parse_kd
    methods = parse_kd(cfg.kd)
    if not methods:
        if cfg.teacher:
            raise ValueError("--teacher is only used with --kd (e.g. --kd gan)")
        return None
    if not cfg.teacher:
        raise ValueError(f"--kd {cfg.kd} needs --teacher CHECKPOINT (e.g. runs/teacher/best.pt)")
    if cfg.ema or cfg.amp:
        raise ValueError("--ema / --amp are not supported with --kd")
    teacher, meta = load_teacher(cfg.teacher, device)
    check_compatible(teacher, model, meta, train_set.class_names, cfg.img_size, cfg.mean, cfg.std,
                     need_anchors="soft" in methods)
    session = KDSession(cfg, model, teacher, anchors, device)
    print(f"teacher {meta['model_name']} from {meta['path']}; {session.describe()}")
    return session


def kd_epoch_summary(tr: dict, kd) -> str:
    info = kd.last_info
    parts = [f"stages {'/'.join(f'{k}:{v}' for k, v in info['stages'].items())} -> {info['stage_now']}"]
    for k in ("det", "adv", "soft", "fitnet", "began", "ab", "d_gan", "d_acc_real", "d_acc_fake", "d_acc_student"):
        if k in tr:
            parts.append(f"{k} {tr[k]:.3f}")
    return "  ".join(parts)


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def plot_curves(metrics_path: Path, out_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ep = [r["epoch"] for r in rows]
    for k in rows[-1]["train"]:
        if k != "lr":
            a1.plot(ep, [r["train"].get(k, np.nan) for r in rows], label=k)
    a1.set_xlabel("epoch"), a1.set_title("training losses"), a1.legend(fontsize=7)
    ev = [(r["epoch"], r["val"]["mAP"], r["val"]["AP50"]) for r in rows if r.get("val")]
    if ev:
        a2.plot([e[0] for e in ev], [e[1] for e in ev], "o-", label="mAP")
        a2.plot([e[0] for e in ev], [e[2] for e in ev], "s--", label="AP50")
    a2.set_xlabel("epoch"), a2.set_title("validation (COCO, points)")
    if ev:
        a2.legend(fontsize=7)
    fig.tight_layout()
    tmp = out_png.with_name(out_png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out_png)


def print_table(rows: list[dict], title: str) -> None:
    cols = ["run", "model", "params(M)", "GFLOPs", *SUMMARY_KEYS, "minutes"]
    lines = [[str(r.get(c, "")) if not isinstance(r.get(c), float) else f"{r[c]:.2f}" for c in cols] for r in rows]
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for l in lines:
        print("  ".join(v.ljust(w) for v, w in zip(l, widths)))


def make_checkpoint(cfg, model, optimizer, scheduler, scaler, ema, epoch, step, train_set, best_map, extra=None) -> dict:
    ck = {"model_name": cfg.model, "model_kwargs": dict(cfg.model_kwargs), "num_classes": model.num_classes,
          "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
          "scaler": scaler.state_dict() if scaler is not None else None,
          "ema": ema.module.state_dict() if ema is not None else None,
          "epoch": epoch, "step": step, "rng": rng_state(), "class_names": list(train_set.class_names),
          "category_ids": [int(c) for c in train_set.category_ids], "config": cfg.to_dict(),
          "nms": vars(cfg.nms()).copy(), "best_map": best_map}
    ck.update(extra or {})
    return ck


def fit(cfg: TrainConfig, resume_ckpt: dict | None = None) -> dict:
    """Train one model as configured; returns the run summary (also written to summary.json)."""
    t_start = time.time()
    device = pick_device(cfg.device)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Data workers need cores too: oversubscribed OpenMP threads make CPU training many times slower.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - cfg.workers))
    out = Path(cfg.out or f"runs/{cfg.model}")
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    train_set, val_set = build_datasets(cfg)
    model = create_model(cfg.model, len(train_set.class_names), **cfg.model_kwargs)
    if cfg.pretrained_backbone and resume_ckpt is None:
        info = load_pretrained_backbone(model, cfg.pretrained_backbone)
        print(f"pretrained backbone: {info['loaded']}/{info['backbone_tensors']} tensors from {cfg.pretrained_backbone}")
    if cfg.init_weights and resume_ckpt is None:
        init = load_checkpoint(cfg.init_weights)
        if init["model_name"] != cfg.model or dict(init["model_kwargs"]) != dict(cfg.model_kwargs):
            raise ValueError(f"--init-weights {cfg.init_weights}: a {init['model_name']} {init['model_kwargs']}, "
                             f"this run trains {cfg.model} {cfg.model_kwargs}")
        model.load_state_dict(init["model"])
        print(f"initial weights: {init['path']}")
    model.to(device)
    anchors = model.anchors(cfg.img_size).to(device)
    loss_fn = build_loss_fn(cfg, model, anchors, train_set, device)
    kd = build_kd_session(cfg, model, anchors, train_set, device)

    from .data import collate_train
    iters_per_epoch = max(1, len(train_set) // cfg.batch_size)
    if kd is not None:       # stages 1-3 use the session's Adam; its post-training SGD is "optimizer"
        optimizer, scheduler = kd.post_opt, kd.post_sched
    else:
        if cfg.optimizer == "adamw":
            optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
        else:
            optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
            cfg.epochs * iters_per_epoch, int(cfg.warmup_epochs * iters_per_epoch), cfg.schedule,
            [int(m * iters_per_epoch) for m in cfg.milestones], cfg.gamma))
    scaler = None
    if cfg.amp:
        if device.type == "cuda":
            scaler = torch.amp.GradScaler("cuda")
        else:
            warnings.warn("--amp needs CUDA; training in float32 on CPU")
    ema = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)

    start_epoch, step, best_map = 0, 0, -1.0
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if scaler is not None and resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        if ema is not None and resume_ckpt.get("ema"):
            ema.module.load_state_dict(resume_ckpt["ema"])
        if kd is not None:
            kd.load_checkpoint_extra(resume_ckpt)
        start_epoch, step, best_map = resume_ckpt["epoch"] + 1, resume_ckpt["step"], resume_ckpt["best_map"]
        set_rng_state(resume_ckpt["rng"])
        t_start -= resume_ckpt.get("elapsed_s", 0.0)       # wall time counts the whole run, not this process
        print(f"resumed {out} at epoch {start_epoch}/{cfg.epochs}")
    else:
        save_yaml(cfg, out / "config.yaml")
        (out / "metrics.jsonl").write_text("")

    eval_kw = dict(img_size=cfg.img_size, mean=cfg.mean, std=cfg.std, nms_cfg=cfg.nms(), workers=min(cfg.workers, 2))
    row: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        # Data order and augmentation depend only on (seed, epoch): a resumed run sees the same batches.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=gen,
                            num_workers=cfg.workers, collate_fn=collate_train, persistent_workers=False)
        try:
            if kd is not None:
                tr = kd.train_epoch(loader, epoch, desc=f"{cfg.model} kd[{kd.schedule.stage}] epoch")
            else:
                tr = train_one_epoch(model, loader, optimizer, scheduler, loss_fn, device, epoch, scaler=scaler,
                                     clip_grad=cfg.clip_grad, ema=ema, desc=f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}")
        except NonFiniteLossError as e:
            raise SystemExit(f"error: {e}. The last good weights are in {out / 'last.pt'}; lower --lr or raise --warmup-epochs.")
        step += len(loader)
        row = {"epoch": epoch + 1, "step": step, "train": tr, "val": None, "time": time.time() - t_start}
        if kd is not None:
            row["kd"] = kd.last_info
        last = epoch + 1 == cfg.epochs
        if (epoch + 1) % cfg.eval_every == 0 or last:
            row["val"] = evaluate(ema.module if ema is not None else model, val_set, device,
                                  max_images=cfg.eval_images, desc="eval", per_class=last, **eval_kw)
        ck = make_checkpoint(cfg, model, optimizer, scheduler, scaler, ema, epoch, step, train_set, best_map,
                             extra=kd.checkpoint_extra() if kd is not None else None)
        ck["elapsed_s"] = time.time() - t_start
        if row["val"] is not None and row["val"]["mAP"] > best_map:
            best_map = ck["best_map"] = row["val"]["mAP"]
            save_checkpoint(out / "best.pt", ck)
        save_checkpoint(out / "last.pt", ck)
        _append_jsonl(out / "metrics.jsonl", row)
        plot_curves(out / "metrics.jsonl", out / "curves.png")
        msg = f"epoch {epoch + 1}/{cfg.epochs}  loss {tr['total']:.3f}  lr {tr['lr']:.4g}"
        if kd is not None:
            msg += "  " + kd_epoch_summary(tr, kd)
        if row["val"]:
            msg += f"  mAP {row['val']['mAP']:.2f}  AP50 {row['val']['AP50']:.2f}"
        tqdm_write(msg)

    # Final numbers: the best checkpoint on the whole validation set.
    best = load_checkpoint(out / "best.pt")
    model.load_state_dict(best["ema"] or best["model"])
    full_eval = cfg.eval_images is None or cfg.eval_images >= len(val_set)
    if full_eval and row.get("val") and best["epoch"] == cfg.epochs - 1 and "per_class" in row["val"]:
        final = row["val"]           # the last epoch is the best and was already scored on the whole set
    else:
        final = evaluate(model, val_set, device, per_class=True, desc="final eval", **eval_kw)
    summary = {"run": str(out), "model": cfg.model, "kd": cfg.kd, "teacher": cfg.teacher, "best_epoch": best["epoch"] + 1,
               **{k: final[k] for k in SUMMARY_KEYS}, "per_class": final.get("per_class", {}),
               "params(M)": count_parameters(model) / 1e6, "GFLOPs": count_gflops(model, cfg.img_size),
               "img_size": cfg.img_size, "train_images": len(train_set), "val_images": len(val_set),
               "bad_samples": {"train": dict(train_set.bad_samples), "val": dict(val_set.bad_samples)},
               "minutes": (time.time() - t_start) / 60, "device": str(device)}
    write_json_atomic(out / "summary.json", summary)
    return summary


def tqdm_write(msg: str) -> None:
    from tqdm import tqdm
    tqdm.write(msg)


def resume_config(run: str, cli: dict) -> tuple[TrainConfig, dict]:
    path = Path(run)
    folder = path.parent if path.suffix == ".pt" else path
    ck_path = path if path.suffix == ".pt" else folder / "last.pt"
    if not (folder / "config.yaml").is_file() or not ck_path.is_file():
        raise ValueError(f"--resume {run}: expected a run folder with config.yaml and last.pt")
    cfg = load_yaml(folder / "config.yaml")
    allowed = {"device", "workers", "resume", "epochs"}
    changed = sorted(k for k in cli if k not in allowed)
    if changed:
        raise ValueError(f"--resume continues the run as configured; cannot change: {', '.join(changed)}")
    for k in ("device", "workers", "epochs"):
        if k in cli:
            setattr(cfg, k, type(getattr(cfg, k))(cli[k]))
    cfg.out = str(folder)
    return cfg, load_checkpoint(ck_path)


def run_demo(cli: dict) -> list[dict]:
    """The main job on the embedded dataset: a teacher (cached) and a student, both evaluated."""
    from .demo import run_demo as _run
    return _run(cli)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(description=__doc__)
    parser.add_argument("--list-models", action="store_true", help="print the registered models and exit")
    args = vars(parser.parse_args(argv))
    if args.pop("list_models", False):
        print("\n".join(list_models()))
        return 0
    try:
        if args.get("resume"):
            cfg, ck = resume_config(args["resume"], args)
            summaries = [fit(cfg, resume_ckpt=ck)]
        elif "model" not in args and "config" not in args:
            summaries = run_demo(args)
        else:
            args.setdefault("preset", "quick")
            summaries = [fit(resolve(args, PRESETS))]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(summaries, "Results (COCO metrics in points on the validation set)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
