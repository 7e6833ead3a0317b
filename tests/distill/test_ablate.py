"""distill.ablate end to end with a stand-in for training (the real runs are minutes each)."""
import json
import math

import pytest

from distill import ablate, train
from tests.helpers import make_tiny_checkpoint


@pytest.fixture
def fake_training(monkeypatch):
    calls = []

    def fake_fit(cfg, resume_ckpt=None):
        calls.append((cfg.kd.methods, json.dumps(cfg.kd.weights, sort_keys=True), cfg.run.seed))
        gain = {"gan": 0.5, "gan+soft": 0.7, "soft": 0.3}.get(cfg.kd.methods, 0.0) if cfg.kd.weights.get("gan", 1) else 0.0
        s = {"mAP": 1.0 + gain + 0.01 * cfg.run.seed, "AP50": 2.0 + gain, "APs": 0.5, "APm": 1.0 + gain, "APl": 2.0,
             "minutes": 0.1}
        (train.Path(cfg.run.out)).mkdir(parents=True, exist_ok=True)
        (train.Path(cfg.run.out) / "summary.json").write_text(json.dumps(s))
        return s

    monkeypatch.setattr(train, "fit", fake_fit)
    monkeypatch.setattr(ablate, "teacher_row", lambda args, cfg, out: {k: 3.0 for k in ablate.METRICS})
    return calls


def test_a_column_some_runs_lack_is_left_out_of_their_means_and_pairs():
    """AP75 joined METRICS after studies were recorded: those runs count where they have the column only."""
    runs = {"baseline": [{"seed": 0, "mAP": 1.0, "AP75": None}, {"seed": 1, "mAP": 2.0, "AP75": 4.0},
                         {"seed": 2, "mAP": 3.0, "AP75": 6.0}],
            "sr": [{"seed": 0, "mAP": 0.5}, {"seed": 1, "mAP": 1.5, "AP75": 5.0}, {"seed": 2, "mAP": 2.0, "AP75": 8.0}]}
    agg = ablate.aggregate(runs, ("mAP", "AP75"))
    assert agg["baseline"]["AP75"]["mean"] == pytest.approx(5.0) and agg["baseline"]["mAP"]["mean"] == pytest.approx(2.0)
    assert ablate.paired_gain(runs, "sr", "AP75") == pytest.approx([1.0, 2.0])          # seed 0: neither side counts
    assert ablate.paired_gain(runs, "sr", "mAP") == pytest.approx([-0.5, -0.5, -1.0])
    none = ablate.aggregate({"old": [{"seed": 0, "mAP": 1.0}]}, ("mAP", "AP75"))
    assert math.isnan(none["old"]["AP75"]["mean"]) and ablate._num(none["old"]["AP75"]["mean"]) == "-"


def test_ablation_writes_tables_and_skips_finished_runs(tmp_path, fake_training, capsys):
    teacher = make_tiny_checkpoint(tmp_path / "t.pt", model="ssd_darknet53", model_kwargs={"width_mult": 0.125})
    out = tmp_path / "abl"
    argv = ["--teacher", str(teacher), "--seeds", "3", "--out", str(out), "--pretrained-backbone", "none"]
    assert ablate.main(argv) == 0
    assert len(fake_training) == len(ablate.METHODS) * 3
    assert ("gan", '{"gan": 0.0}', 0) in fake_training                  # the baseline: GAN pipeline, weight 0
    data = json.loads((out / "ablation.json").read_text())
    assert data["aggregate"]["gan"]["mAP"]["mean"] == pytest.approx(1.51)
    assert data["aggregate"]["baseline"]["mAP"]["std"] == pytest.approx(0.01)
    assert data["size_gain_vs_baseline"]["gan"]["medium"]["percent"] == pytest.approx(50.0)
    md = (out / "ablation.md").read_text()
    assert md.index("teacher") < md.index("baseline student")
    assert "Table 1 view" in md and "GAN-KD vs baseline, paired over seeds: +0.50 ± 0.00 (n = 3) mAP points: the same on every seed" in md
    assert (out / "ablation.png").stat().st_size > 0
    assert "gan+soft" in capsys.readouterr().out
    # re-run: every (method, seed) is finished -> nothing trains again
    fake_training.clear()
    assert ablate.main(argv) == 0
    assert fake_training == []


def test_ablation_cli_errors(tmp_path, capsys):
    assert ablate.main(["--teacher", "x.pt", "--methods", "gann"]) == 2
    assert "unknown method" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablate.main([])                                             # --teacher is required
    help_text = ablate.build_parser().format_help()
    for flag in ("--teacher", "--seeds", "--preset", "--out", "--methods", "--student", "--init-weights",
                 "--pretrained-backbone", "--config", "--device"):
        assert flag in help_text


def test_paired_statistics_match_a_paired_t_test():
    from scipy import stats
    runs = {"baseline": [{"seed": s, "mAP": m} for s, m in enumerate([10.0, 12.0, 11.0, 9.0, 13.0])],
            "gan": [{"seed": s, "mAP": m} for s, m in enumerate([11.0, 12.5, 12.5, 9.5, 13.2])]}
    st = ablate.paired_stats(runs, "gan")
    assert st["diffs"] == pytest.approx([1.0, 0.5, 1.5, 0.5, 0.2]) and st["n"] == 5
    ref = stats.ttest_rel([r["mAP"] for r in runs["gan"]], [r["mAP"] for r in runs["baseline"]])
    assert st["p"] == pytest.approx(ref.pvalue) and st["mean"] == pytest.approx(0.74)
    assert ablate.paired_stats({"baseline": runs["baseline"][:1], "gan": runs["gan"][:1]}, "gan")["p"] is None


def test_aggregate_only_reads_finished_runs_and_writes_paired_tables(tmp_path, fake_training):
    teacher = make_tiny_checkpoint(tmp_path / "t.pt", model="ssd_darknet53", model_kwargs={"width_mult": 0.125})
    out = tmp_path / "abl"
    base = ["--teacher", str(teacher), "--out", str(out), "--pretrained-backbone", "none"]
    assert ablate.main(base + ["--seeds", "2", "--methods", "baseline,soft"]) == 0
    fake_training.clear()
    argv = base + ["--seeds", "3", "--methods", "baseline,soft,gan+soft", "--aggregate-only", "--paired-against", "soft"]
    assert ablate.main(argv) == 0 and fake_training == []             # nothing trains
    data = json.loads((out / "ablation.json").read_text())
    assert set(data["runs"]) == {"baseline", "soft"} and len(data["runs"]["soft"]) == 2
    assert data["paired"]["baseline"]["soft"]["mAP"]["diffs"] == pytest.approx([0.3, 0.3])
    assert "Paired differences against `soft`" in (out / "ablation.md").read_text()
    assert data["paired"]["baseline"]["soft"]["APs"]["n"] == 2            # small objects: paired like mAP
    assert "| APs mean ± std |" in (out / "ablation.md").read_text()
    argv[-1] = "soft,baseline"                                        # several references, comma-separated
    assert ablate.main(argv) == 0
    data = json.loads((out / "ablation.json").read_text())
    assert set(data["paired"]) == {"baseline", "soft"}
    assert data["paired"]["soft"]["baseline"]["mAP"]["diffs"] == pytest.approx([-0.3, -0.3])
    assert (out / "ablation.md").read_text().count("Paired differences against `") == 2


def test_paired_against_unknown_row_is_one_line(tmp_path, capsys):
    argv = ["--teacher", "t.pt", "--out", str(tmp_path / "abl"), "--paired-against", "soft,rek", "--aggregate-only"]
    assert ablate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown method(s) ['rek']" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "abl").exists()


def test_sr_rows_resolve_to_their_configs_and_data_reaches_every_run(tmp_path, monkeypatch):
    args = ablate.build_parser().parse_args(["--teacher", "t.pt", "--data", "shapes-small", "--preset", "quick",
                                             "--pretrained-backbone", "none"])
    want = {"sr": ("sr", {"sr_init_ratio": 0.25}), "gan+sr": ("gan+sr", {}), "soft+sr": ("soft+sr", {}),
            "sr-keep-g": ("sr", {"sr_keep_g": True, "sr_grad": "student"}),
            "sr-g-only": ("sr", {"sr_keep_g": True, "sr_grad": "g"}), "sr-no-mse": ("sr", {"sr_mse_weight": 0.0, "sr_tv_weight": 1.0}),
            "sr-no-adv": ("sr", {"sr_alpha": 0.0, "sr_beta": 1.0}),
            "sr-no-cls": ("sr", {"sr_beta": 0.0, "sr_alpha": 1e-3}),
            "sr-no-tv": ("sr", {"sr_tv_weight": 0.0, "sr_mse_weight": 1.0}),
            "sr-map0": ("sr", {"sr_maps": [0], "sr_init_ratio": 0.75}), "sr-ratio0.75": ("sr", {"sr_init_ratio": 0.75}),
            "sr-no-reg": ("sr", {"sr_gamma": 0.0, "sr_beta": 1.0, "sr_init_ratio": 0.75}),
            "sr-small-region": ("sr", {"sr_region": "small", "sr_init_ratio": 0.75})}
    for name, (kd, flags) in want.items():
        cfg = ablate.run_config(args, ablate.BY_NAME[name], 1, tmp_path / name)
        assert cfg.kd.methods == kd and cfg.kd.weights == {} and cfg.data.data == "shapes-small", name
        assert all(cfg.to_flat()[k] == v for k, v in flags.items()), name
        assert ("sr_generator" in cfg.model.kwargs) == (name in ("sr-keep-g", "sr-g-only")), name
    seen = []
    monkeypatch.setattr(ablate, "teacher_row", lambda a, cfg, out: seen.append(("teacher", cfg.data.data))
                        or {k: 1.0 for k in ablate.METRICS})
    monkeypatch.setattr(ablate, "run_one", lambda cfg: seen.append((cfg.kd.methods, cfg.data.data))
                        or {k: 1.0 for k in ablate.METRICS})
    monkeypatch.setattr(ablate, "plot", lambda *a, **k: None)
    teacher = make_tiny_checkpoint(tmp_path / "t.pt", model="ssd_darknet53", model_kwargs={"width_mult": 0.125})
    argv = ["--teacher", str(teacher), "--data", "shapes-small", "--seeds", "1", "--methods", "baseline,sr-keep-g",
            "--out", str(tmp_path / "abl"), "--pretrained-backbone", "none"]
    assert ablate.main(argv) == 0
    assert seen == [("teacher", "shapes-small"), ("gan", "shapes-small"), ("sr", "shapes-small")]


def test_p_values_below_a_thousandth_are_not_printed_as_zero():
    assert ablate.fmt_p(0.0001) == ", p < 0.001" and ablate.fmt_p(0.0421) == ", p = 0.042" and ablate.fmt_p(None) == ""


def _hold_claim(path):
    """A separate process that holds the claim file's lock until killed; returns it once the lock is taken."""
    import subprocess
    import sys
    code = ("import fcntl, json, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, json.dumps({'pid': os.getpid(), 'host': 'h'}).encode(), 0); "
            "print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_claimed_by_another_live_process_is_skipped(tmp_path, fake_training, capsys):
    teacher = make_tiny_checkpoint(tmp_path / "t.pt", model="ssd_darknet53", model_kwargs={"width_mult": 0.125})
    out = tmp_path / "abl"
    (out / "soft").mkdir(parents=True)
    holder = _hold_claim(out / "soft" / ".seed0.claim")
    (out / "soft" / ".seed1.claim").write_text(json.dumps({"pid": 999999, "host": "h"}))   # left by a dead process
    try:
        argv = ["--teacher", str(teacher), "--seeds", "2", "--out", str(out), "--pretrained-backbone", "none",
                "--methods", "baseline,soft"]
        assert ablate.main(argv) == 0
    finally:
        holder.kill()
        holder.wait()
    trained = {(m, s) for m, _, s in fake_training}
    assert ("soft", 0) not in trained and ("soft", 1) in trained and ("gan", 0) in trained   # baseline = gan, w 0
    assert f"soft seed 0: being trained by process {holder.pid} on h" in capsys.readouterr().out
    data = json.loads((out / "ablation.json").read_text())
    assert [r["seed"] for r in data["runs"]["soft"]] == [1]
    fake_training.clear()
    assert ablate.main(argv) == 0 and fake_training == [("soft", "{}", 0)]   # its holder gone: the run is free


def test_claims_are_exclusive_and_released(tmp_path):
    import os
    from distill.safety import claim_run
    run = tmp_path / "m" / "seed0"
    with claim_run(run) as holder:
        assert holder is None
        assert json.loads((tmp_path / "m" / ".seed0.claim").read_text())["pid"] == os.getpid()
        with claim_run(run) as other:                                # held, even by this process: not twice
            assert other == {"pid": os.getpid(), "host": __import__("socket").gethostname(),
                             "claim": str(tmp_path / "m" / ".seed0.claim")}
    with claim_run(run) as holder:                                   # released on exit
        assert holder is None


def test_gan_verdict_is_the_paired_tests():
    def runs(diffs):
        return {"baseline": [{"seed": s, "mAP": 50.0 + s} for s in range(len(diffs))],
                "gan": [{"seed": s, "mAP": 50.0 + s + d} for s, d in enumerate(diffs)]}
    below = ablate.gan_verdict(ablate.paired_stats(runs([-1.0, -1.9, -1.4]), "gan"))
    assert "-1.43 ± 0.45 (n = 3, p = 0.03" in below and below.endswith("GAN-KD is BELOW the baseline (p < 0.05).")
    assert ablate.gan_verdict(ablate.paired_stats(runs([2.0, 2.5, 3.1]), "gan")).endswith("is above the baseline (p < 0.05).")
    assert ablate.gan_verdict(ablate.paired_stats(runs([-2.8, 6.3]), "gan")).endswith("no difference shown at p < 0.05.")
    assert "no verdict" in ablate.gan_verdict(ablate.paired_stats(runs([1.0]), "gan"))
