"""``python -m distill.ablate_arch --study text``: Table II as a resumable study on a tiny override (48 px,
1 epoch, 8 images, 1 seed, rows hard and ab+soft+began): the report has every row and column and the teacher
row, the paired F difference is the runs' own, and a second invocation trains nothing."""
from __future__ import annotations

import json

import pytest

from distill import ablate_arch

ROWS = ("hard", "ab+soft+began")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate_text")
    cfg = root / "tiny.yaml"
    cfg.write_text("img_size: 48\nshapes_train: 8\nshapes_val: 8\nepochs: 1\nab_epochs: 1\nbatch_size: 4\n")
    argv = ["--study", "text", "--preset", "quick", "--seeds", "1", "--rows", ",".join(ROWS), "--config", str(cfg),
            "--device", "cpu", "--out", str(root / "out")]
    assert ablate_arch.main(argv) == 0
    return root / "out", argv


def test_report_has_every_row_column_and_the_teacher(study):
    out, _ = study
    doc = json.loads((out / "ablation.json").read_text())
    assert doc["meta"]["rows"] == list(ROWS) and doc["meta"]["img_size"] == 48
    for row in ROWS:
        s = json.loads((out / row / "seed0" / "summary.json").read_text())
        assert s["kd"] == ("none" if row == "hard" else row) and s["img_size"] == [48, 48]
        for k in ("recall", "precision", "f1"):
            assert doc["aggregate"][row][k] == {"mean": pytest.approx(s[k]), "std": 0.0}
        assert doc["costs"][row]["params(M)"] == pytest.approx(s["params(M)"])
    teacher = doc["meta"]["teacher"]
    t_summary = json.loads((out / "teacher" / "seed0" / "summary.json").read_text())
    assert teacher["f1"] == pytest.approx(t_summary["f1"]) and teacher["model"] == "textnet_teacher"
    assert teacher["params(M)"] > 100 * doc["costs"]["hard"]["params(M)"] > 5       # VGG-16 vs ~0.09 M
    runs = {r: json.loads((out / r / "seed0" / "summary.json").read_text()) for r in ROWS}
    paired = doc["paired_vs_hard"]["ab+soft+began"]["f1"]
    assert paired["diffs"] == [pytest.approx(runs["ab+soft+began"]["f1"] - runs["hard"]["f1"])] and paired["p"] is None
    assert "one paired seed" in doc["spread"]
    md = (out / "ablation.md").read_text()
    assert "| recall | precision | f1 | params (M) |" in md and "teacher (VGG-16, hard labels)" in md
    for row in ablate_arch.TEXT.rows:
        assert (row.label in md) == (row.name in ROWS)
    cmds = doc["latency_commands"]
    assert any("export.onnx" in c and "ab+soft+began/seed0/best.pt" in c for c in cmds)
    assert any("benchmarks/run.py" in c and "teacher/seed0/best.pt" in c and "--threads 1" in c for c in cmds)
    assert (out / "ablation.png").stat().st_size > 1000


def test_second_invocation_trains_nothing_and_a_stopped_run_resumes(study, monkeypatch):
    out, argv = study
    before = json.loads((out / "ablation.json").read_text())["aggregate"]
    import distill.text.train as text_train

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(text_train, "text_fit", no_training)
    assert ablate_arch.main(argv) == 0
    assert json.loads((out / "ablation.json").read_text())["aggregate"] == before
    monkeypatch.undo()
    (out / "hard" / "seed0" / "summary.json").unlink()         # stopped after its last checkpoint
    assert ablate_arch.main(argv) == 0
    again = json.loads((out / "ablation.json").read_text())["aggregate"]["hard"]
    assert all(again[k] == before["hard"][k] for k in ("recall", "precision", "f1"))
    assert (out / "hard" / "seed0" / "summary.json").is_file()


def test_teacher_flag_is_refused_for_a_detector_study(capsys):
    assert ablate_arch.main(["--study", "refinedet", "--teacher", "x.pt"]) == 2
    assert "--teacher is for --study text" in capsys.readouterr().err
