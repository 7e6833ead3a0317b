"""Loading the teacher: frozen, eval mode, no grad, checked against the student it teaches."""
from __future__ import annotations

import torch
from torch import nn

from ..checkpoint import load_checkpoint, model_from_checkpoint


def load_teacher(path: str, device: torch.device) -> tuple[nn.Module, dict]:
    """The teacher of a checkpoint, frozen (requires_grad False) in eval mode. Returns (model, checkpoint meta)."""
    ck = load_checkpoint(path)
    teacher = model_from_checkpoint(ck).to(device)
    freeze(teacher)
    meta = {k: ck.get(k) for k in ("model_name", "model_kwargs", "class_names", "config", "path")}
    return teacher, meta


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_compatible(teacher: nn.Module, student: nn.Module, meta: dict, class_names, img_size: int,
                     mean, std, need_anchors: bool) -> None:
    """Raise ValueError when the teacher cannot teach this student (classes, maps, anchors, pixels)."""
    src = meta.get("path", "teacher")
    if list(meta.get("class_names") or []) != list(class_names):
        raise ValueError(f"--teacher {src}: classes {meta.get('class_names')} differ from the dataset's {list(class_names)}")
    ts, ss = teacher.feature_sizes(img_size), student.feature_sizes(img_size)
    if ts != ss:
        raise ValueError(f"--teacher {src}: feature-map sizes {ts} at {img_size} px differ from the student's {ss}")
    tcfg = meta.get("config") or {}
    for key, mine in (("mean", mean), ("std", std)):
        if key in tcfg and [round(float(v), 6) for v in tcfg[key]] != [round(float(v), 6) for v in mine]:
            raise ValueError(f"--teacher {src}: trained with {key}={tcfg[key]}, this run uses {list(mine)}")
    if need_anchors:
        ta, sa = teacher.anchors(img_size), student.anchors(img_size)
        if ta.shape != sa.shape or not torch.allclose(ta, sa, atol=1e-6):
            raise ValueError(f"--teacher {src}: anchors differ from the student's ({tuple(ta.shape)} vs {tuple(sa.shape)}); "
                             "soft-label KD needs identical anchors (same min_ratio / max_ratio / aspect_ratios)")
