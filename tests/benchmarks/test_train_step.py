"""benchmarks/train_step.py: both memory formats time the product's training step on real batches."""
import json
import math

from benchmarks import train_step


def test_both_formats_are_timed_and_reported(tmp_path, capsys):
    out = tmp_path / "ts"
    argv = ["--preset", "smoke", "--steps", "2", "--warmup", "0", "--out", str(out)]
    assert train_step.main(argv + ["--data", "shapes"]) == 0
    report = json.loads((out / "train_step.json").read_text())
    assert set(report["seconds"]) == {"contiguous", "channels_last"}
    assert all(len(t["step"]) == 2 and min(t["step"]) > 0 for t in report["seconds"].values())
    assert set(report["speedup_channels_last"]) == {"step"}                 # no teacher: no teacher column
    assert math.isfinite(report["speedup_channels_last"]["step"]) and report["img_size"] == 64
    assert "channels_last speed-up: step" in capsys.readouterr().out
