"""Training of the text / non-text classifier from the command line (``python -m distill.train --task text``):
teacher and distilled student runs on tiny embedded data, the checkpoint contract, BEGAN's k_t (eq. 6),
exact resume of a run stopped inside its adversarial stage, and the task / model checks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from distill import train
from distill.checkpoint import Checkpoint
from distill.safety import TEST_SIGNAL_ENV
from distill.text.kd import BeganControl, parse_text_kd
from distill.text.models import TextStudent, TextTeacher

TINY = ["--preset", "smoke", "--device", "cpu", "--img-size", "64"]


def student_args(teacher: Path, out: Path, kd: str = "ab+soft+began", epochs: int = 1) -> list[str]:
    """12 training images in batches of 4 (3 batches an epoch), 4 validation images."""
    return ["--task", "text", "--model", "textnet_student", *TINY, "--shapes-train", "12", "--shapes-val", "4",
            "--batch-size", "4", "--epochs", str(epochs), "--ab-epochs", "1", "--teacher", str(teacher),
            "--kd", kd, "--out", str(out)]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text") / "teacher"
    rc = train.main(["--task", "text", "--model", "textnet_teacher", *TINY, "--shapes-train", "8", "--shapes-val",
                     "4", "--batch-size", "4", "--out", str(out)])
    assert rc == 0
    return out


def test_teacher_run_writes_best_checkpoint_and_summary(teacher_run: Path):
    summary = json.loads((teacher_run / "summary.json").read_text())
    assert summary["task"] == "text" and summary["model"] == "textnet_teacher"
    for key in ("precision", "recall", "f1", "region_acc"):
        assert 0.0 <= summary[key] <= 100.0
    assert summary["tp"] + summary["fp"] + summary["fn"] + summary["tn"] == 4
    ck = Checkpoint.load(teacher_run / "best.pt")
    assert ck.model_name == "textnet_teacher" and ck.num_classes == 1 and ck.class_names == ["text"]
    assert ck.extra["task"] == "text" and ck.extra["img_size"] == [64, 64] and ck.extra["grids"] == [3, 5]
    assert ck.extra["threshold"] == 0.5 and len(ck.extra["mean"]) == 3 and len(ck.extra["std"]) == 3
    assert ck.best_map == pytest.approx(summary["f1"])
    model = ck.build_model()
    assert isinstance(model, TextTeacher)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    assert out["image_logit"].shape == (1,)
    row = json.loads((teacher_run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["stage"] == "main" and "hard" in row["train"] and row["val"]["f1"] == pytest.approx(summary["f1"])
    assert (teacher_run / "metrics.csv").read_text().splitlines()[0].count("val/f1") == 1


def test_student_distillation_runs_both_stages_and_logs_each_term(teacher_run: Path, tmp_path: Path):
    out = tmp_path / "kd"
    assert train.main(student_args(teacher_run / "best.pt", out)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["ab", "main"]
    assert set(rows[0]["train"]) >= {"ab", "total"} and rows[0]["train"]["ab"] > 0
    assert set(rows[1]["train"]) >= {"soft", "began_g", "d_began", "recon_real", "recon_fake", "began_k"}
    assert "hard" not in rows[1]["train"]
    assert 0.0 <= rows[1]["train"]["began_k"] <= 1.0
    assert rows[1]["train"]["lr"] == pytest.approx(0.01) and rows[0]["train"]["lr"] == pytest.approx(0.001)
    ck = Checkpoint.load(out / "best.pt")
    assert ck.epoch == 1 and isinstance(ck.build_model(), TextStudent)          # best among stage-2 epochs
    assert "discriminator" in ck.extra["text_training"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kd"] == "ab+soft+began" and abs(summary["params"] - 87_000) < 0.2 * 87_000


def test_began_k_follows_eq6_and_stays_in_unit_interval():
    b = BeganControl(16, gamma=0.75, fk=1e-3)
    assert b.k == 0.0                                                     # k_0 = 0
    assert b.update_k(0.4, 0.1) == pytest.approx(1e-3 * (0.75 * 0.4 - 0.1))   # 2e-4
    assert b.update_k(0.4, 0.1) == pytest.approx(4e-4)
    assert b.update_k(0.1, 5.0) == 0.0                                    # clipped below
    b.k = 0.9999
    assert b.update_k(10.0, 0.0) == 1.0                                   # clipped above
    t, s = torch.rand(2, 34, 16), torch.rand(2, 34, 16) + 1.0
    loss, real, fake = b.discriminator_loss(t, s)                         # eq. 4 with k_t = 1
    assert float(loss.detach()) == pytest.approx(real - fake, abs=1e-6)
    assert not any(p.requires_grad is False for p in b.disc.parameters())
    s.requires_grad_(True)
    b.student_term(s).backward()                                          # eq. 5 reaches the student only
    assert s.grad is not None and all(p.grad is None for p in b.disc.parameters())


def test_text_kd_methods():
    assert parse_text_kd("soft+began+ab") == ["ab", "soft", "began"] and parse_text_kd("none") == []
    with pytest.raises(ValueError, match="gan"):
        parse_text_kd("gan")


def test_run_stopped_inside_the_adversarial_stage_resumes_exactly(teacher_run: Path, tmp_path: Path, monkeypatch):
    teacher = teacher_run / "best.pt"
    assert train.main(student_args(teacher, tmp_path / "whole", epochs=2)) == 0
    monkeypatch.setenv(TEST_SIGNAL_ENV, "TERM:2:2")                       # epoch 2 (stage 2), after batch 2
    with pytest.raises(SystemExit) as e:
        train.main(student_args(teacher, tmp_path / "cut", epochs=2))
    assert e.value.code == 143
    partial = Checkpoint.load(tmp_path / "cut" / "last.pt").partial
    assert partial["epoch"] == 1 and partial["batches"] == 2
    monkeypatch.delenv(TEST_SIGNAL_ENV)
    assert train.main(["--resume", str(tmp_path / "cut")]) == 0
    a, b = Checkpoint.load(tmp_path / "whole" / "last.pt"), Checkpoint.load(tmp_path / "cut" / "last.pt")
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    da, db = a.extra["text_training"], b.extra["text_training"]
    assert da["began_k"] == db["began_k"]
    for k in da["discriminator"]:
        assert torch.equal(da["discriminator"][k], db["discriminator"][k]), k
    rows = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
            for r in ("whole", "cut")]
    assert [r["train"] for r in rows[0]] == [r["train"] for r in rows[1]]
    assert [r["val"] for r in rows[0]] == [r["val"] for r in rows[1]]


@pytest.mark.parametrize("argv, match", [
    (["--task", "text", "--model", "ssdlite_mobilenetv2"], "--task text trains"),
    (["--model", "textnet_student"], "add --task text"),
    (["--task", "text", "--model", "textnet_student", "--kd", "gan", "--teacher", "x.pt"], "unknown method 'gan'"),
    (["--task", "text", "--model", "textnet_student", "--kd", "soft"], "needs --teacher"),
    (["--task", "text", "--model", "textnet_student", "--data", "text:/nowhere/at/all"], "does not exist"),
])
def test_wrong_task_model_or_data_is_one_line(argv, match, tmp_path, capsys):
    assert train.main([*argv, "--preset", "smoke", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and err.startswith("error:")
    assert not (tmp_path / "r").exists()


def test_folder_data_and_non_square_input(tmp_path: Path):
    from PIL import Image

    from distill.text.data import generate
    root = tmp_path / "textdis"
    for i in range(12):
        s = generate(5, i, (64, 96))
        folder = root / ("text" if s.is_text else "nontext")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(s.image).save(folder / f"{i:02d}.png")
        if s.is_text and i != 0:                                          # image 00: text, boxes unknown
            (folder / f"{i:02d}.txt").write_text("".join(" ".join(f"{v:.1f}" for v in b) + "\n" for b in s.boxes))
    out = tmp_path / "run"
    assert train.main(["--task", "text", "--model", "textnet_student", *TINY, "--data", f"text:{root}",
                       "--text-size", "64x96", "--batch-size", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["img_size"] == [64, 96] and summary["train_images"] + summary["val_images"] == 12
    assert summary["val_images"] == 1                                     # every 10th image held out
    assert Checkpoint.load(out / "best.pt").extra["img_size"] == [64, 96]


def test_teacher_batch_norm_option_has_the_same_outputs():
    torch.manual_seed(0)
    model = TextTeacher().eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in TextTeacher(batch_norm=False).modules())
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 80))
    assert out["region_logits"][5].shape == (2, 5, 5) and out["region_features"][3].shape == (2, 9, 128)


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_main_stage_lr_schedule(schedule):
    """cosine (the default): x 0.5 (1 + cos(pi e / E)) at main epoch e of E, so the reported last epoch trains at a
    low lr; plateau (the paper's): lr / 10 after 2 epochs without a lower training loss."""
    from distill.config import resolve
    from distill.presets import PRESETS
    from distill.text.train import TextPlan
    cfg = resolve({"task": "text", "model": "textnet_student", "preset": "smoke", "epochs": 4, "lr": 1e-3,
                   "schedule": schedule}, PRESETS)
    plan = TextPlan(cfg, TextStudent(), None, [], torch.device("cpu"))
    lrs = []
    for loss in (1.0, 1.0, 1.0, 1.0):
        lrs.append(plan.lr("main"))
        plan.end_epoch({"total": loss}, "main")
    if schedule == "cosine":
        assert lrs == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    else:
        assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3]) and plan.lr("main") == pytest.approx(1e-4)


def test_plateau_schedule_is_the_text_task_s_only(capsys):
    assert train.main(["--preset", "smoke", "--schedule", "plateau", "--out", "/tmp/never-made"]) == 2
    assert "--schedule plateau is the text classifier's" in capsys.readouterr().err
