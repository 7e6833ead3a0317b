"""A real (tiny) training run end to end: the run folder's files, exact resume, CLI errors."""
import json

import pytest
import torch

import distill.train as train_mod
from distill.config import resolve
from distill.presets import PRESETS


def _cfg(tmp_path, out, **kw):
    args = {"preset": "smoke", "model": "ssdlite_mobilenetv2", "model_kwargs": {"width_mult": 0.25, "min_ratio": 0.1, "max_ratio": 0.9},
            "data_root": str(tmp_path / "data"), "out": str(tmp_path / out), "epochs": 2, "device": "cpu", **kw}
    return resolve(args, PRESETS)


def test_smoke_run_writes_every_file(tmp_path):
    summary = train_mod.fit(_cfg(tmp_path, "run"))
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "summary.json", "curves.png"):
        assert (run / name).is_file(), name
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"loc", "cls", "total", "lr"} <= set(rows[0]["train"])
    saved = json.loads((run / "summary.json").read_text())
    for k in ("mAP", "AP50", "AP75", "APs", "APm", "APl", "params(M)", "GFLOPs"):
        assert k in saved and k in summary
    ck = torch.load(run / "last.pt", weights_only=True)
    for k in ("model_name", "model_kwargs", "model", "optimizer", "scheduler", "epoch", "rng", "class_names",
              "category_ids", "config", "nms"):
        assert k in ck, k


def test_resume_continues_exactly(tmp_path, monkeypatch):
    train_mod.fit(_cfg(tmp_path, "straight"))
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]

    real = train_mod.train_one_epoch
    calls = {"n": 0}

    def crash_on_second_epoch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated stop")
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "train_one_epoch", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_mod.fit(_cfg(tmp_path, "stopped"))
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    assert torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["epoch"] == 0
    assert train_mod.main(["--resume", str(tmp_path / "stopped")]) == 0
    resumed = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert resumed["epoch"] == 1
    for k, v in straight.items():
        torch.testing.assert_close(resumed["model"][k], v, msg=k)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert train_mod.main(["--model", "ssdlite_mobilenetv3", "--preset", "smoke", "--data-root", str(tmp_path),
                           "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'ssdlite_mobilenetv3'" in err and "Traceback" not in err
    assert train_mod.main(["--model", "ssdlite_mobilenetv2", "--data", "coco:/nope.json:/nope",
                           "--out", str(tmp_path / "r2")]) == 2
    assert "/nope.json" in capsys.readouterr().err
    assert train_mod.main(["--resume", str(tmp_path / "nothing")]) == 2


def test_run_folder_has_csv_and_curves_and_refuses_tensorboard_without_the_package(tmp_path):
    import csv

    from distill.run_log import plot_curves, read_rows
    train_mod.fit(_cfg(tmp_path, "logged"))
    run = tmp_path / "logged"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    jsonl = read_rows(run / "metrics.jsonl")
    assert len(rows) == len(jsonl) and float(rows[-1]["train/loc"]) == pytest.approx(jsonl[-1]["train"]["loc"])
    assert "val/mAP" in rows[0] and (run / "curves.png").stat().st_size > 0
    # a distillation-like row with rates gets its own panel; a single short run still draws
    plot_curves([{"epoch": 1, "train": {"loc": 1.0, "total": 1.0, "d_acc_real": 0.9}, "val": None}], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install tensorboard"):
            train_mod.fit(_cfg(tmp_path, "tb", tensorboard=True))


@pytest.mark.parametrize("channels_last", [True, False])
def test_memory_format_of_the_trained_model(tmp_path, monkeypatch, channels_last):
    seen = {}
    real = train_mod.train_one_epoch

    def spy(*a, **kw):
        w = next(p for p in kw["model"].parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
        seen["cl"] = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "train_one_epoch", spy)
    train_mod.fit(_cfg(tmp_path, "run", epochs=1, channels_last=channels_last))
    assert seen["cl"] is channels_last
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["config"]["run"]["channels_last"] is channels_last
    from distill.checkpoint import model_from_checkpoint
    model = model_from_checkpoint(ck)                                   # a checkpoint loads into a plain model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ck["model"].values()))
