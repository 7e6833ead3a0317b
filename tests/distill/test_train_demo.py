import json

import yaml

from distill.demo import finished_run, stage_config, teacher_role
from distill.config import FLAGS


def test_cached_teacher_survives_new_distillation_config_keys(tmp_path):
    out = tmp_path / "teacher"
    cfg = stage_config({}, teacher_role(), out)
    out.mkdir()
    saved = {k: v for k, v in cfg.to_flat().items()   # an older run: flat, without the newer keys
             if FLAGS[k].section != "kd" and k != "init_weights"}
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    (out / "summary.json").write_text(json.dumps({"mAP": 1.0}))
    (out / "best.pt").write_bytes(b"")
    assert finished_run(out, cfg) == {"mAP": 1.0}
    saved["epochs"] = cfg.optim.epochs + 1                          # a real difference still retrains
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    assert finished_run(out, cfg) is None


def test_demo_student_is_distilled_with_the_chosen_method(tmp_path):
    """The demo ships the distillation the ablation shows best at its schedule (the study's "rec" row today),
    configured as that row of distill.ablate runs it, and reports its last epoch as the study does."""
    from distill.ablate import BY_NAME
    from distill.demo import STUDENT, STUDENT_KD
    from distill.kd import parse_kd
    cfg = stage_config({}, STUDENT, tmp_path / "student", extra={**STUDENT_KD, "teacher": "t.pt"})
    row = BY_NAME["rec"]
    assert parse_kd(cfg.kd.methods) == parse_kd(row.kd) and cfg.kd.teacher == "t.pt"
    assert {k: cfg.kd.weights.get(k) for k in row.kd_weights} == dict(row.kd_weights) == {"gan": 0.0}
    assert cfg.run.select_best is False
    assert cfg.optim.epochs > cfg.kd.gan_post_epochs
