"""Setting up a run from its config: the device, the seeds, the datasets, the distillation session, and
the config and checkpoint of a run to resume.

Shared by the training command (distill/train.py) and the tools that rebuild a run's parts without
training it (distill/kd/diagnose.py, distill/ablate.py).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpoint, last_checkpoints, load_latest
from .config import TrainConfig, load_yaml
from .data import DetectionDataset


def pick_device(name: str) -> torch.device:
    """``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``; RuntimeError when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _dataset_kwargs(cfg: TrainConfig) -> dict:
    d = cfg.data
    return dict(img_size=d.img_size, mean=d.mean, std=d.std, on_bad_sample=d.on_bad_sample,
                zoom_out_max=d.zoom_out_max, data_root=d.data_root, resize_mode=d.resize_mode,
                shapes_kwargs={"num_train": d.shapes_train, "num_val": d.shapes_val, "seed": d.shapes_seed})


def build_val_set(cfg: TrainConfig) -> DetectionDataset:
    """The run's validation set in eval mode (``--val-data``, else the training spec's validation split)."""
    from .data import build_dataset, default_val_spec
    return build_dataset(cfg.data.val_data or default_val_spec(cfg.data.data), "val", train=False,
                         **_dataset_kwargs(cfg))


def build_datasets(cfg: TrainConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """(training set with the configured augmentation, validation set in eval mode); their classes must agree."""
    from .data import build_dataset, check_training_sets
    train_set = build_dataset(cfg.data.data, "train", train=True, augment=cfg.data.augment, **_dataset_kwargs(cfg))
    val_set = build_val_set(cfg)
    if list(val_set.class_names) != list(train_set.class_names):
        raise ValueError(f"validation classes {val_set.class_names} differ from training classes "
                         f"{train_set.class_names}")
    check_training_sets(train_set, val_set, cfg.optim.batch_size)
    return train_set, val_set


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The memory format of a run's detector, teacher and discriminators (``--channels-last``)."""
    return torch.channels_last if cfg.run.channels_last else torch.contiguous_format


def build_kd_session(cfg: TrainConfig, model: nn.Module, anchors: torch.Tensor, train_set: DetectionDataset,
                     device: torch.device):
    """The distillation session for ``--kd`` runs (None for plain training). Loads and checks the teacher.

    ``anchors``: [A, 4] of ``model`` at ``cfg.data.img_size`` on ``device``.
    """
    from .kd import KDSession, check_compatible, load_teacher, parse_kd
    kd = cfg.kd
    methods = parse_kd(kd.methods)
    if not methods:
        if kd.teacher:
            raise ValueError("--teacher is only used with --kd (e.g. --kd gan)")
        return None
    if not kd.teacher:
        raise ValueError(f"--kd {kd.methods} needs --teacher CHECKPOINT (e.g. runs/teacher/best.pt)")
    if cfg.optim.ema or cfg.optim.amp:
        raise ValueError("--ema / --amp are not supported with --kd")
    teacher, meta = load_teacher(kd.teacher, device)
    teacher.to(memory_format=memory_format(cfg))
    check_compatible(teacher, model, meta, train_set.class_names, cfg.data.img_size, cfg.data.mean, cfg.data.std,
                     need_anchors="soft" in methods)
    session = KDSession(cfg, model, teacher, anchors, device, train_set=train_set)
    for part in (session.methods, session.adapters):     # discriminators, generators, adapters
        if part is not None:
            part.to(memory_format=memory_format(cfg))
    print(f"teacher {meta['model_name']} from {meta['path']}; {session.describe()}")
    return session


def resume_config(run: str, cli: dict[str, Any]) -> tuple[TrainConfig, Checkpoint]:
    """The config and checkpoint of the run to continue: ``run`` is its folder (its newest readable checkpoint:
    last.pt, else last-prev.pt, ...) or a ``.pt`` file in it; ``cli``: the flags given with ``--resume`` (flag
    names), of which only device, workers, epochs, sync_bn and keep_last may change the run. Reads the
    ``config.yaml`` and checkpoints written before the config had sections too."""
    path = Path(run)
    folder = path.parent if path.suffix == ".pt" else path
    ck_path = path if path.suffix == ".pt" else folder / "last.pt"
    if not (folder / "config.yaml").is_file() or not (ck_path.is_file() or last_checkpoints(folder)):
        raise ValueError(f"--resume {run}: expected a run folder with config.yaml and last.pt")
    cfg = load_yaml(folder / "config.yaml")
    allowed = {"device", "workers", "resume", "epochs", "sync_bn", "keep_last"}
    changed = sorted(k for k in cli if k not in allowed)
    if changed:
        raise ValueError(f"--resume continues the run as configured; cannot change: {', '.join(changed)}")
    cfg = cfg.replace(**{k: cli[k] for k in ("device", "workers", "epochs", "sync_bn", "keep_last") if k in cli},
                      out=str(folder))
    return cfg, Checkpoint.load(ck_path) if path.suffix == ".pt" else load_latest(folder)
