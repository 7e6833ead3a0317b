"""distill.ablate_arch: the RefineDet Table 2 study end to end on tiny real runs, its rows, its notes."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from distill import ablate_arch, train
from distill.ablate import METRICS
from distill.losses.refinedet import RefineDetLoss
from distill.models import Matcher, count_parameters, create_model


def _tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"shapes_train": 8, "shapes_val": 4, "img_size": 64, "epochs": 1,
                                    "data_root": str(tmp_path / "data"), "model_kwargs": {"width_mult": 0.25}}))
    return path


def test_refinedet_study_writes_every_row_and_column_then_skips_finished_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    argv = ["--study", "refinedet", "--preset", "smoke", "--config", str(_tiny_config(tmp_path)), "--seeds", "1",
            "--rows", "full,ssdlite", "--out", str(out), "--pretrained-backbone", "none", "--device", "cpu"]
    assert ablate_arch.main(argv) == 0
    doc = json.loads((out / "ablation.json").read_text())
    assert set(doc["aggregate"]) == {"full", "ssdlite"}
    for row in ("full", "ssdlite"):
        assert all(not math.isnan(doc["aggregate"][row][k]["mean"]) for k in ("mAP", "AP50"))
        assert set(METRICS) <= set(doc["aggregate"][row]) and doc["aggregate"][row]["seeds"] == 1
        assert doc["costs"][row]["params(M)"] > 0 and doc["costs"][row]["GFLOPs"] > 0
    assert [doc["costs"][r]["model"] for r in ("full", "ssdlite")] == ["refinedet_mobilenetv2", "ssdlite_mobilenetv2"]
    assert doc["costs"]["full"]["params(M)"] != doc["costs"]["ssdlite"]["params(M)"]
    st = doc["paired_vs_full"]["ssdlite"]
    assert set(st) == set(METRICS) and st["mAP"]["n"] == 1
    agg = doc["aggregate"]
    assert st["mAP"]["diffs"][0] == pytest.approx(agg["ssdlite"]["mAP"]["mean"] - agg["full"]["mAP"]["mean"])
    md = (out / "ablation.md").read_text()
    for text in ("RefineDet-MobileNetV2 (full)", "SSD-Lite-MobileNetV2", *METRICS, "params (M)", "GFLOPs",
                 "Paired differences against `full`", "paper's ordering", "benchmarks/run.py", "export.onnx",
                 "Negative anchor filtering at theta = 0.99"):
        assert text in md, text
    # the ARM's filtering, from the run's summary: the full row has it, SSD-Lite (no ARM) does not
    summary = json.loads((out / "full" / "seed0" / "summary.json").read_text())
    assert set(doc["arm_filtering"]) == {"full"}
    assert doc["arm_filtering"]["full"]["anchors"] == pytest.approx(summary["arm_filtering"]["0.99"]["anchors"])
    assert (out / "ablation.png").stat().st_size > 0
    assert "CPU ms" not in md                       # no benchmark report yet: no latency column
    # a second invocation trains nothing: every (row, seed) is finished; the benchmark report the printed
    # latency command writes (reports/<study folder>/<row>/report.json) becomes the table's latency column
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    monkeypatch.chdir(tmp_path)
    rep = tmp_path / "reports" / out.name / "full" / "report.json"
    rep.parent.mkdir(parents=True)
    rep.write_text(json.dumps({"config": {"threads": 1}, "backends": [
        {"name": "pytorch-cpu", "status": "ok", "latency_ms": {"e2e": {"p50": 99.0, "mean": 99.0}}},
        {"name": "onnxruntime-cpu-nms", "status": "ok", "busy": [],
         "latency_ms": {"e2e": {"p50": 12.5, "mean": 13.0}, "model": {"p50": 10.0, "mean": 10.5}}}]}))
    capsys.readouterr()
    assert ablate_arch.main(argv) == 0
    doc = json.loads((out / "ablation.json").read_text())
    assert doc["aggregate"]["full"]["mAP"] == agg["full"]["mAP"]
    assert doc["latency"]["full"]["p50_ms"] == 12.5 and "ssdlite" not in doc["latency"]
    table = [ln for ln in (out / "ablation.md").read_text().splitlines() if ln.startswith("| RefineDet-MobileNetV2 (full)")]
    assert "CPU ms (ORT, e2e, b1, p50)" in (out / "ablation.md").read_text() and "| 12.50 |" in table[0]
    assert "1 thread(s)" in (out / "ablation.md").read_text()


def test_recorded_study_json_stands_for_lost_run_folders_and_a_different_config_is_refused(tmp_path, monkeypatch,
                                                                                           capsys):
    cfg = _tiny_config(tmp_path)
    common = ["--study", "refinedet", "--preset", "smoke", "--config", str(cfg), "--rows", "full",
              "--pretrained-backbone", "none", "--device", "cpu"]
    assert ablate_arch.main(common + ["--seeds", "1", "--out", str(tmp_path / "first")]) == 0
    first = json.loads((tmp_path / "first" / "ablation.json").read_text())
    recorded = tmp_path / "recorded.json"            # the committed copy; the run folders are then lost
    recorded.write_text(json.dumps(first))
    trained = []
    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda c, **k: (trained.append(c.run.seed), real_fit(c, **k))[1])
    out = tmp_path / "second"
    assert ablate_arch.main(common + ["--seeds", "2", "--out", str(out), "--recorded", str(recorded)]) == 0
    assert trained == [1]                            # seed 0 is recorded: only seed 1 trains
    doc = json.loads((out / "ablation.json").read_text())
    s0, s1 = doc["runs"]["full"]
    assert s0["recorded"] == str(recorded) and "run" not in s0 and s0["mAP"] == first["runs"]["full"][0]["mAP"]
    assert s1["run"].endswith("seed1")
    assert doc["aggregate"]["full"]["seeds"] == 2
    assert doc["aggregate"]["full"]["mAP"]["mean"] == pytest.approx((s0["mAP"] + s1["mAP"]) / 2)
    assert doc["costs"]["full"] == first["costs"]["full"]
    new = json.loads((out / "full" / "seed1" / "summary.json").read_text())["arm_filtering"]["0.99"]["anchors"]
    assert doc["arm_filtering"]["full"]["seeds"] == 2
    assert doc["arm_filtering"]["full"]["anchors"] == pytest.approx((first["arm_filtering"]["full"]["anchors"] + new) / 2)
    assert doc["meta"]["recorded"] == [str(recorded)]
    # a --rows subset led by a row with its own detection settings still compares the study's (reference) config
    assert ablate_arch.main([*common[:6], "--rows", "ssdlite,full", *common[8:], "--seeds", "2", "--out", str(out),
                             "--recorded", str(recorded), "--aggregate-only"]) == 0
    assert trained == [1] and json.loads((out / "ablation.json").read_text())["meta"]["rows"] == ["full"]
    # recorded with another recipe: refused in one line naming the value, nothing trained, nothing written
    other = dict(first, meta=dict(first["meta"], config=dict(first["meta"]["config"], epochs=7)))
    recorded.write_text(json.dumps(other))
    capsys.readouterr()
    assert ablate_arch.main(common + ["--seeds", "2", "--out", str(tmp_path / "third"), "--recorded",
                                      str(recorded)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(recorded) in err[0] and "epochs: 1 here, 7 there" in err[0]
    assert trained == [1] and not (tmp_path / "third" / "ablation.json").exists()
    recorded.write_text("{}")
    assert ablate_arch.main(common + ["--out", str(tmp_path / "third"), "--recorded", str(recorded)]) == 2
    assert "not a study JSON" in capsys.readouterr().err


def test_bad_study_or_row_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert ablate_arch.main(["--study", "refinedett", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refinedett" in err and "refinedet" in err.replace("refinedett", "")
    assert ablate_arch.main(["--study", "refinedet", "--rows", "full,no-fpn", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-fpn" in err and "no-two-step" in err
    assert not out.exists()


def test_rows_share_the_recipe_and_keep_their_own_model_kwargs(tmp_path):
    class Args:
        preset, config, device, pretrained_backbone = "smoke", str(_tiny_config(tmp_path)), "cpu", "none"
    rows = {r.name: r for r in ablate_arch.REFINEDET.rows}
    cfgs = {n: ablate_arch.run_config(Args, rows[n], 2, tmp_path / n) for n in ("full", "no-tcb", "ssdlite")}
    assert cfgs["no-tcb"].model.kwargs == {"width_mult": 0.25, "theta": 1.0, "two_step": False, "tcb": False,
                                           "arm": False}
    Args.config = None                     # no YAML: the preset's model_kwargs lie under the row's
    assert ablate_arch.run_config(Args, rows["theta1"], 0, tmp_path / "t").model.kwargs == \
        {"min_ratio": 0.1, "max_ratio": 0.9, "theta": 1.0}
    assert cfgs["ssdlite"].model.name == "ssdlite_mobilenetv2" and cfgs["ssdlite"].model.kwargs["width_mult"] == 0.25
    assert {c.run.seed for c in cfgs.values()} == {2} and {c.kd.methods for c in cfgs.values()} == {"none"}
    assert len({(c.data.img_size, c.optim.epochs, c.optim.batch_size, c.data.shapes_train) for c in cfgs.values()}) == 1
    assert not any(c.run.select_best for c in cfgs.values())


def test_no_tcb_row_is_one_multiclass_module_without_arm():
    kw = dict(width_mult=0.25, tcb_channels=16, theta=1.0, two_step=False, tcb=False)
    with_arm = create_model("refinedet_mobilenetv2", 2, **kw)
    no_arm = create_model("refinedet_mobilenetv2", 2, arm=False, **kw)
    arm_params = count_parameters(with_arm.arm_loc) + count_parameters(with_arm.arm_conf)
    assert no_arm.arm_loc is None and count_parameters(no_arm) == count_parameters(with_arm) - arm_params
    loc, conf = no_arm.eval()(torch.randn(1, 3, 64, 64))
    assert not loc[..., 4:].any() and not conf[..., -2:].any()
    targets = [{"boxes": torch.tensor([[0.1, 0.1, 0.7, 0.7]]), "labels": torch.tensor([1])}]
    terms = RefineDetLoss()(loc, conf, targets, no_arm.anchors(64), no_arm.box_coder, Matcher(0.5))
    assert terms["arm_loc"] == 0 and terms["arm_cls"] == 0 and terms["odm_cls"] > 0
    with pytest.raises(ValueError, match="arm=False"):
        create_model("refinedet_mobilenetv2", 2, width_mult=0.25, arm=False)


def test_ordering_note_says_whether_the_papers_order_shows():
    from distill.ablate import aggregate

    def note(means):
        runs = {n: [{"seed": s, **{k: m + 0.3 * s * (i + 1) for k in METRICS}} for s in range(3)]
                for i, (n, m) in enumerate(means.items())}
        return ablate_arch.ordering_note(ablate_arch.REFINEDET, aggregate(runs), runs)
    shows = note({"full": 30.0, "theta1": 28.0, "no-two-step": 20.0, "no-tcb": 19.0})
    assert "SHOWS" in shows and "every step at paired p < 0.05" in shows and "no-tcb - no-two-step: -0.70" in shows
    reversed_ = note({"full": 30.0, "theta1": 31.0, "no-two-step": 20.0})
    assert "does NOT show" in reversed_ and "full <= theta1" in reversed_
    # the ordering is checked on APs too: here mAP is out of order and APs in order
    runs = {n: [{"seed": s, **{k: m for k in METRICS}, "APs": a + 0.1 * s} for s in range(3)]
            for n, m, a in (("full", 60.0, 46.0), ("theta1", 61.0, 43.0), ("no-two-step", 62.0, 41.0))}
    notes = ablate_arch.ordering_notes(ablate_arch.REFINEDET, aggregate(runs), runs)
    assert len(notes) == 2 and "does NOT show in the mean mAP" in notes[0] and "SHOWS in the mean APs" in notes[1]
