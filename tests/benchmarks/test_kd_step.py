"""benchmarks/kd_step.py: every row's steps are timed on the same batches, SR-KD's z_HR pass on its own."""
import json
import math

import pytest

from benchmarks import kd_step
from tests.distill.test_kd_train import teacher_ckpt  # noqa: F401


def test_rows_and_their_parts_are_timed_and_reported(teacher_ckpt, tmp_path, capsys):
    teacher = teacher_ckpt
    out = tmp_path / "ks"
    argv = ["--teacher", str(teacher), "--preset", "smoke", "--data", "shapes", "--methods", "baseline,gan,sr",
            "--steps", "2", "--warmup", "0", "--out", str(out)]
    assert kd_step.main(argv) == 0
    report = json.loads((out / "kd_step.json").read_text())
    assert report["methods"] == ["baseline", "gan", "sr"]
    assert set(report["seconds"]["sr"]) == {"student step", "D step", "teacher pass", "z_HR pass (2x)"}
    assert "z_HR pass (2x)" not in report["seconds"]["gan"] and "D step" in report["seconds"]["gan"]
    assert "D step" not in report["seconds"]["baseline"]                  # KD weight 0: D stages only counted
    assert all(len(v) == 2 and min(v) > 0 for row in report["seconds"].values() for v in row.values())
    assert report["student_step_vs_first"]["baseline"] == 1.0
    assert all(math.isfinite(r) and r > 0 for r in report["student_step_vs_first"].values())
    assert "step vs baseline" in capsys.readouterr().out


def test_an_unknown_row_is_one_line(tmp_path, capsys):
    argv = ["--teacher", str(tmp_path / "t.pt"), "--methods", "baseline,sr-big", "--out", str(tmp_path / "ks")]
    assert kd_step.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert "unknown row(s) ['sr-big']" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ks").exists()
