"""The distillation ablation: ``python -m distill.ablate --teacher runs/teacher/best.pt --seeds 3``.

Every method trains the same student on the same data with the same staged pipeline (distill/kd/schedule.py:
D pre-learning -> student / D fine-tuning rounds -> SGD post-learning), the same number of epochs and the
same seeds; only the distillation terms differ. The baseline is that pipeline with every KD weight at 0.
Discriminator stages draw batches of their own, so for a given seed every method's student steps see the
same batches with the same augmentations as the baseline's.

Every run reports its LAST epoch (``--no-select-best``): picking the best epoch on the validation images
that are then reported would favour whichever method has the noisiest curve.

Writes to ``--out``: one run folder per (method, seed) -- finished ones are skipped on a re-run, stopped
ones are resumed, so a study can be stopped and continued across sessions --, ``ablation.json`` (every run,
the aggregates and the paired statistics), ``ablation.md`` (mean +- std of mAP / AP50 / APs / APm / APl per
method, the teacher on top; per-seed paired differences against the baseline with their mean +- std and
a paired t-test p-value; the paper's Table 1 view: AP gain for small / medium / large objects) and
``ablation.png`` (bar plot). ``--paired-against NAME`` adds the same paired statistics against another row
(e.g. ``gan+soft`` against ``soft``).

Several processes can work through one study (one per GPU, or two one-thread processes on a small CPU): each
claims a run before training it (``.seedN.claim`` beside the run folder) and skips the runs another live
process holds; each process aggregates what is finished when it ends (``--aggregate-only`` for the final table).

Converged-baseline protocol (the paper calls GAN-KD a regulariser of a trained student): train the
baseline to its plateau once, then fine-tune from it with every method for the same number of iterations::

    python -m distill.train --model ssdlite_mobilenetv2 --preset quick --epochs 12 --out runs/converged
    python -m distill.ablate --teacher runs/demo/teacher/best.pt --init-weights runs/converged/best.pt \
        --preset quick --methods baseline,gan,gan+rec --seeds 3 --out runs/ablate-finetune

Small objects, feature super-resolution (``--kd sr``) against the baseline and GAN-KD, its combinations (with
``soft`` to pair ``soft+sr`` with), G kept at inference (``sr-keep-g``; ``sr-g-only``: the SR terms train the kept
G alone, the slides' min over G), and the slides' ablation shape (without L_MSE / without the adversarial term /
without the classification term), on the embedded small-objects set (``--data`` reaches every run and the
teacher row)::

    python -m distill.ablate --teacher runs/small/teacher/best.pt --data shapes-small --preset quick --seeds 5 \
        --methods baseline,gan,sr,soft,gan+sr,soft+sr,sr-no-mse,sr-no-adv,sr-no-cls,sr-no-tv,sr-keep-g,sr-g-only \
        --paired-against gan,soft --out runs/ablate-sr

alpha and beta by experiment (against ``sr``, ``sr-no-adv`` = alpha 0, ``sr-no-cls`` = beta 0): ``sr-alpha0.01``,
``sr-beta2``.

Rows that chose SR-KD's defaults (one-seed pilots, docs/ablation-sr.md), each at the pilots' first feature share
0.75x: ``sr-ratio0.75`` (L_MSE + L_TV at 0.75x the detection loss; the default is now 0.25x), ``sr-map0`` (the finest
map only), ``sr-no-reg`` (gamma 0), ``sr-small-region`` (small boxes' cells only).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from runtime.atomic import write_json_atomic, write_text_atomic
from runtime.cli import command, fail, ProductParser
from runtime.sizes import size_text

from .config import resolve
from .presets import PRESETS

# The papers' COCO columns (AP at 0.5:0.95, 0.5, 0.75; small / medium / large). A study JSON recorded before a
# column existed (AP75 came later) leaves it out of that row's mean and pairs: "-" where no seed has it.
METRICS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    kd: str
    kd_weights: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)      # further config flags of this row


METHODS: tuple[Method, ...] = (
    Method("baseline", "baseline student (KD weight 0, same pipeline)", "gan", {"gan": 0.0}),
    Method("soft", "soft labels (Hinton, T^2 KL)", "soft"),
    Method("gan", "GAN-KD as the paper writes it (patch D, loss 3)", "gan"),
    Method("gan+soft", "GAN-KD + soft labels", "gan+soft"),
    Method("rec", "eq. (1)'s L_REC alone (GAN-KD + rec without its adversarial term)", "gan+rec", {"gan": 0.0}),
    Method("gan+rec", "GAN-KD + L_REC (eq. 1)", "gan+rec"),
    Method("gan+rec+soft", "GAN-KD + L_REC + soft labels", "gan+rec+soft"),
    Method("rec+soft", "L_REC + soft labels (no adversarial term)", "gan+rec+soft", {"gan": 0.0}),
    Method("gan-lr1e-4", "GAN-KD, distillation step 1e-4 (a fifth of the detection step)", "gan", {}, {"kd_lr": 1e-4}),
    Method("gan-lsgan", "GAN-KD, least-squares GAN loss, warm-up", "gan", {}, {"gan_loss": "lsgan", "gan_warmup": 0.25}),
    Method("gan-table", "GAN-KD, Tables 2-3 read literally (1x1 D outputs)", "gan", {}, {"gan_disc_output": "table"}),
    Method("fitnet", "FitNets L2 hints", "fitnet"),
    Method("began", "BEGAN discriminator (k_t, eqs. 4-6)", "began"),
    Method("ab+gan", "activation-boundary init + GAN-KD", "ab+gan"),
    # Feature super-resolution (--kd sr) and the slides' ablation shape: one term of sr removed at a time.
    Method("sr", "SR-KD: feature super-resolution, G training-only", "sr"),
    Method("gan+sr", "GAN-KD + SR-KD", "gan+sr"),
    Method("soft+sr", "soft labels + SR-KD", "soft+sr"),
    Method("sr-keep-g", "SR-KD, G kept in the student at inference", "sr", {}, {"sr_keep_g": True}),
    Method("sr-g-only", "SR-KD, G kept, the SR terms train G alone (the slides' min over G)", "sr", {},
           {"sr_keep_g": True, "sr_grad": "g"}),
    Method("sr-no-mse", "SR-KD without the reconstruction term L_MSE", "sr", {}, {"sr_mse_weight": 0.0}),
    Method("sr-no-adv", "SR-KD without the adversarial term (alpha 0)", "sr", {}, {"sr_alpha": 0.0}),
    Method("sr-no-cls", "SR-KD without the classification term (beta 0)", "sr", {}, {"sr_beta": 0.0}),
    Method("sr-no-tv", "SR-KD without the smoothness term L_TV", "sr", {}, {"sr_tv_weight": 0.0}),
    # alpha and beta chosen by experiment: alpha 1e-3 (SRGAN's) against 0 (sr-no-adv) and 1e-2; beta 1 against
    # 0 (sr-no-cls) and 2.
    Method("sr-alpha0.01", "SR-KD, adversarial weight alpha 1e-2 (10x the default)", "sr", {}, {"sr_alpha": 1e-2}),
    Method("sr-beta2", "SR-KD, classification weight beta 2 (2x the default)", "sr", {}, {"sr_beta": 2.0}),
    # Variants that chose SR-KD's defaults (seed 0 at the first default, 0.75x, cost 7.4 mAP, APl -20, on shapes-small):
    # map 1 of SSD-Lite is stride 32 (~67 px anchors at 256 px), medium and large objects' map.
    Method("sr-ratio0.75", "SR-KD, L_MSE + L_TV scaled to 0.75x the detection loss (the pilots' first default)", "sr",
           {}, {"sr_init_ratio": 0.75}),
    Method("sr-map0", "SR-KD on the finest map only (--sr-maps 0), at 0.75x", "sr", {},
           {"sr_maps": [0], "sr_init_ratio": 0.75}),
    Method("sr-no-reg", "SR-KD without the regression term (gamma 0), at 0.75x", "sr", {},
           {"sr_gamma": 0.0, "sr_init_ratio": 0.75}),
    Method("sr-small-region", "SR-KD, L_MSE + L_TV on small boxes' cells only, at 0.75x", "sr", {},
           {"sr_region": "small", "sr_init_ratio": 0.75}),
)
BY_NAME = {m.name: m for m in METHODS}


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m distill.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--teacher", required=True, help="teacher checkpoint (best.pt / last.pt or its run folder)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method, 0..N-1 (default: 3)")
    p.add_argument("--preset", default="ablate", help="training recipe of every run (default: ablate; see distill/presets.py)")
    p.add_argument("--config", default=None, help="YAML of config overrides applied to every run (e.g. kd_mbox_weight)")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="training data of every run and of the teacher row, as distill.train --data (e.g. "
                        "shapes-small; default: the preset's / --config's)")
    p.add_argument("--out", default="runs/ablate", help="output folder (default: runs/ablate)")
    p.add_argument("--methods", default=",".join(m.name for m in METHODS),
                   help=f"comma-separated subset of: {', '.join(m.name for m in METHODS)} (default: all)")
    p.add_argument("--student", default="ssdlite_mobilenetv2", help="student model (default: ssdlite_mobilenetv2)")
    p.add_argument("--init-weights", default=None,
                   help="checkpoint every student starts from (shared warm start; default: the preset's, else random init)")
    p.add_argument("--pretrained-backbone", default=None,
                   help="ImageNet backbone weights of the student (default: the locally installed MobileNetV2 weights "
                        "when present; 'none': random init)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' (default: auto)")
    p.add_argument("--paired-against", default=None,
                   help="also report paired differences of every row against these rows, comma-separated (e.g. "
                        "rec,soft: the adversarial term's share in gan+rec and gan+soft), besides the baseline")
    p.add_argument("--aggregate-only", action="store_true",
                   help="train nothing: aggregate the finished runs found in --out (e.g. while a study is still going)")
    p.add_argument("--recorded", action="append", default=[], metavar="JSON", help=RECORDED_HELP)
    return p


RECORDED_HELP = ("a study's JSON committed earlier (the ablation.json this command wrote, e.g. "
                 "docs/ablation/refinedet-12ep.json): its (row, seed) results count as finished where --out has no "
                 "run folder for them, so a study outlives a lost runs/ folder; refused when it was recorded with "
                 "another training config; repeatable")
_PATH_KEYS = ("pretrained_backbone", "init_weights", "teacher")   # compared by file name: clones differ in prefix


def load_recorded(paths: list[str], config: dict, names: list[str]) -> dict[str, dict[int, dict]]:
    """``{row: {seed: run entry}}`` from the ``runs`` of earlier study JSONs (``--recorded``). ``config`` is this
    study's flat config as its JSON's ``meta.config`` holds it; a recorded file whose config differs in a value
    they both have is refused with the keys that differ (its runs would not be paired with the new ones).
    Each entry keeps ``recorded`` (the file) in place of a run folder, and the row's ``costs`` and
    ``arm_filtering`` where the file has them (distill.ablate_arch reads those from run folders otherwise;
    a row's recorded filtering mean stands for each of its recorded seeds, which keeps the mean exact)."""
    out: dict[str, dict[int, dict]] = {}
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValueError(f"--recorded {path}: cannot read it ({e.strerror or e})") from None
        try:
            doc = json.loads(text)
            runs, rec_cfg = doc["runs"], doc["meta"]["config"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--recorded {path}: not a study JSON written by distill.ablate / distill.ablate_arch "
                             f"(expected 'meta.config' and 'runs'): {e}") from None
        diff = []
        for k in sorted(set(config) & set(rec_cfg)):
            a, b = config[k], rec_cfg[k]
            if k in _PATH_KEYS and isinstance(a, str) and isinstance(b, str):
                a, b = Path(a).name, Path(b).name
            if a != b:
                diff.append(f"{k}: {a!r} here, {b!r} there")
        if diff:
            raise ValueError(f"--recorded {path}: recorded with another config ({'; '.join(diff)}); its runs would "
                             f"not pair with this study's")
        filt, costs = doc.get("arm_filtering") or {}, doc.get("costs") or {}
        for name, rs in runs.items():
            if name not in names:
                continue
            f = filt.get(name)
            for r in rs:
                e = {k: v for k, v in r.items() if k != "run"}
                e["recorded"] = str(path)
                if costs.get(name):
                    e["costs"] = costs[name]
                if f and f.get("seeds") == len(rs):
                    e["arm_filtering"] = {"0.99": {k: f[k] for k in ("anchors", "boxes_lost", "odm_positives")}}
                out.setdefault(name, {}).setdefault(int(r["seed"]), e)
    return out


def run_config(args, method: Method, seed: int, out: Path):
    cli = {"preset": args.preset, "model": args.student, "kd": method.kd, "kd_weights": dict(method.kd_weights),
           "teacher": args.teacher, "seed": seed, "out": str(out), "device": args.device, "select_best": False,
           **method.overrides}
    if args.config:
        cli["config"] = args.config
    if getattr(args, "data", None):
        cli["data"] = args.data
    if args.init_weights:
        cli["init_weights"] = args.init_weights
    elif args.pretrained_backbone != "none":
        # The paper's students start from ImageNet backbones; use the locally installed ones when present.
        from .models import find_offline_backbone_weights
        path = args.pretrained_backbone or find_offline_backbone_weights(args.student)
        if path:
            cli["pretrained_backbone"] = str(path)
    return resolve(cli, PRESETS)


def teacher_row(args, cfg, out_root: Path) -> dict:
    """The teacher scored on the same validation images at the same input size (cached in teacher_eval.json)."""
    cache = out_root / "teacher_eval.json"
    key = {"teacher": str(Path(args.teacher).resolve()), "img_size": cfg.data.img_size, "val": [cfg.data.data, cfg.data.shapes_val]}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key and all(k in saved.get("metrics", {}) for k in METRICS):
            return saved["metrics"]
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .engine import evaluate
    from .runs import build_datasets, pick_device
    device = pick_device(cfg.run.device)
    _, val_set = build_datasets(cfg)
    ck = load_checkpoint(args.teacher)
    model = model_from_checkpoint(ck).to(device)
    m = evaluate(model, val_set, device, img_size=cfg.data.img_size, mean=cfg.data.mean, std=cfg.data.std, nms_cfg=cfg.nms,
                 desc="teacher eval")
    metrics = {k: m[k] for k in METRICS}
    write_json_atomic(cache, {"key": key, "metrics": metrics})
    return metrics


def run_one(cfg) -> dict:
    """Train (or resume, or skip) one run; returns its summary."""
    from .checkpoint import last_checkpoints, load_latest
    from .train import fit
    if cfg.run.task == "text":                  # the text / non-text classifier's loop
        from .text.train import text_fit as fit
    out = Path(cfg.run.out)
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    if last_checkpoints(out) and (out / "config.yaml").is_file():
        return fit(cfg, resume_ckpt=load_latest(out))
    if (out / "config.yaml").is_file():          # stopped before its first checkpoint: nothing to continue
        return fit(cfg, overwrite=True)
    return fit(cfg)


def _has(r: dict, key: str) -> bool:
    """Whether run ``r`` has a value of ``key`` (runs recorded without it: ``None`` / missing / NaN)."""
    return isinstance(r.get(key), (int, float)) and not math.isnan(r[key])


def _present(rs: list[dict], key: str) -> list[float]:
    """The runs' values of ``key``, leaving out runs recorded without it."""
    return [r[key] for r in rs if _has(r, key)]


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: dict[str, list[dict]], metrics: tuple[str, ...] = METRICS) -> dict:
    agg = {}
    for name, rs in runs.items():
        agg[name] = {k: dict(zip(("mean", "std"), mean_std(_present(rs, k)))) for k in metrics}
        agg[name]["seeds"] = len(rs)
        agg[name]["minutes"] = sum(r.get("minutes", 0.0) for r in rs)
    return agg


def size_gain(agg: dict, name: str, base: str = "baseline") -> dict:
    """Table 1 of the GAN-KD paper: AP gain per object size relative to the baseline, in % and in points."""
    out = {}
    for k, label in (("APs", "small"), ("APm", "medium"), ("APl", "large")):
        b, m = agg[base][k]["mean"], agg[name][k]["mean"]
        # a percentage of a baseline below 0.05 points is noise over noise: left out
        out[label] = {"points": m - b, "percent": (100.0 * (m - b) / b) if b >= 0.05 else None}
    return out


def paired_gain(runs: dict[str, list[dict]], name: str, key: str = "mAP", base: str = "baseline") -> list[float]:
    """Per-seed difference method - baseline (same seed = same data order and initialisation)."""
    b = {r["seed"]: r[key] for r in runs.get(base, []) if _has(r, key)}
    return [r[key] - b[r["seed"]] for r in runs.get(name, []) if r["seed"] in b and _has(r, key)]


def paired_stats(runs: dict[str, list[dict]], name: str, base: str = "baseline", key: str = "mAP") -> dict:
    """Paired differences ``name - base`` over the seeds both have: mean, std, n and the two-sided paired
    t-test (scipy.stats.ttest_1samp of the differences against 0; p is None below 2 pairs or with no spread)."""
    d = paired_gain(runs, name, key, base)
    out = {"against": base, "metric": key, "diffs": d, "n": len(d)}
    out["mean"], out["std"] = mean_std(d)
    out["t"] = out["p"] = None
    if len(d) >= 2 and out["std"] > 0:
        from scipy import stats
        res = stats.ttest_1samp(d, 0.0)
        out["t"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def _num(v: float, spec: str = ".2f") -> str:
    """A metric in points; "-" where COCO has nothing to measure (-1, NaN here: e.g. APs without small objects)."""
    return "-" if v is None or math.isnan(v) else format(v, spec)


def _fmt_paired(st: dict) -> str:
    if not st["n"]:
        return "n/a"
    if st["n"] == 1:
        return f"{st['mean']:+.2f} (n = 1)"
    return f"{st['mean']:+.2f} ± {st['std']:.2f} (n = {st['n']}{fmt_p(st['p'])})"


def fmt_p(p: float | None) -> str:
    """``, p = 0.042`` / ``, p < 0.001`` (three decimals would print a clear result as ``p = 0.000``)."""
    if p is None:
        return ""
    return ", p < 0.001" if p < 0.001 else f", p = {p:.3f}"


def gan_verdict(st: dict) -> str:
    """One line: GAN-KD against the baseline, paired over seeds (same initialisation and batches per seed), with
    the paired t-test's verdict at p < 0.05 -- above, below or no difference shown."""
    head = f"GAN-KD vs baseline, paired over seeds: {_fmt_paired(st)} mAP points"
    if st["p"] is None:
        return head + (": no verdict before two seeds." if st["n"] < 2 else ": the same on every seed (no spread, no t-test).")
    if st["p"] >= 0.05:
        return head + ": no difference shown at p < 0.05."
    return head + f": GAN-KD is {'above' if st['mean'] > 0 else 'BELOW'} the baseline (p < 0.05)."


def render_markdown(agg: dict, teacher: dict, order: list[str], meta: dict, runs: dict | None = None) -> str:
    done = sorted({a["seeds"] for a in agg.values()})
    seeds = f"{meta['seeds']} seeds" if done == [meta["seeds"]] else \
        f"seeds 0-{meta['seeds'] - 1} asked, {'/'.join(map(str, done))} finished per method"
    data = meta.get("config", {}).get("data", "shapes")
    lines = [f"# Distillation ablation ({seeds}, preset `{meta['preset']}`, {size_text(meta['img_size'])} px, "
             f"student `{meta['student']}`)", "",
             f"COCO metrics in points on the validation split of `{data}`, mean ± std over seeds "
             "(one value where one seed has finished).", "",
             "| method | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS),
             "| teacher `" + meta["teacher_model"] + "` | | " + " | ".join(_num(teacher[k]) for k in METRICS) + " |"]
    for name in order:
        a = agg[name]
        cells = [_num(a[k]["mean"]) + (f" ± {_num(a[k]['std'])}" if a["seeds"] > 1 and not math.isnan(a[k]["mean"])
                                       else "") for k in METRICS]
        lines.append(f"| {BY_NAME[name].label} | {a['seeds']} | " + " | ".join(cells) + " |")
    if "baseline" in agg:
        lines += ["", "## AP gain per object size vs the baseline (the paper's Table 1 view)", "",
                  "| method | small (APs) | medium (APm) | large (APl) |", "|---|---|---|---|"]
        for name in order:
            if name == "baseline":
                continue
            g = size_gain(agg, name)
            cells = []
            for label in ("small", "medium", "large"):
                pct = g[label]["percent"]
                cells.append(_num(g[label]["points"], "+.2f") + " pt" * (not math.isnan(g[label]["points"]))
                             + (f" ({pct:+.0f} %)" if pct is not None else ""))
            lines.append(f"| {BY_NAME[name].label} | " + " | ".join(cells) + " |")
        lines += ["", "Paper (VOC07, MobileNetV2 student): small +8 %, medium +14 %, large +12 %."]
        b = agg["baseline"]["mAP"]
        if "gan" in agg and min(agg["gan"]["seeds"], agg["baseline"]["seeds"]) < 2:
            lines += ["", f"GAN-KD vs baseline: {agg['gan']['mAP']['mean'] - b['mean']:+.2f} mAP points on one seed: "
                      "no verdict before more seeds."]
        elif "gan" in agg and runs:
            lines += ["", gan_verdict(paired_stats(runs, "gan", "baseline"))]
    if runs and "baseline" in agg:
        lines += paired_lines(runs, order, "baseline")
    for ref in paired_refs(meta.get("paired_against")):
        if runs and ref in agg and ref != "baseline":
            lines += paired_lines(runs, order, ref)
    lines += ["", f"Wall time of all runs: {sum(a['minutes'] for a in agg.values()):.1f} min."]
    return "\n".join(lines) + "\n"


def paired_refs(value: str | None) -> list[str]:
    """``--paired-against`` (``soft`` or ``rec,soft``) -> the reference rows, in order, without repeats."""
    return list(dict.fromkeys(n.strip() for n in (value or "").split(",") if n.strip()))


def paired_lines(runs: dict, order: list[str], base: str,
                 keys: tuple[str, ...] = ("mAP", "AP50", "AP75", "APs")) -> list[str]:
    """The paired-differences table against ``base``: per seed and mean ± std of ``keys[0]`` (with the paired
    t-test), then mean ± std (with the t-test) of each further key. Detection studies show APs beside mAP and
    AP50 and AP75: small objects are what SR-KD is for, the gain per object size is what the papers report, and
    AP75 against AP50 tells tighter boxes from more objects found (SR-KD's slides aim at the former)."""
    a, more = keys[0], keys[1:]
    lines = ["", f"## Paired differences against `{base}` (same seed = same data order and initialisation)", "",
             f"| method | per seed, {a} points | {a} mean ± std (paired t-test) | "
             + " | ".join(f"{b} mean ± std" for b in more) + " |", "|---|---|---|" + "---|" * len(more)]
    for n in order:
        if n == base:
            continue
        st = paired_stats(runs, n, base, a)
        lines.append(f"| {n} | " + ", ".join(f"{d:+.2f}" for d in st["diffs"]) + f" | {_fmt_paired(st)} | "
                     + " | ".join(_fmt_paired(paired_stats(runs, n, base, b)) for b in more) + " |")
    return lines


def plot(agg: dict, teacher: dict | None, order: list[str], path: Path, title: str | None = None,
         metrics: tuple[str, ...] = METRICS, ylabel: str = "COCO AP (points)") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(metrics)
    x = np.arange(len(order))
    for i, k in enumerate(metrics):
        ax.bar(x + i * width, [agg[n][k]["mean"] for n in order], width, yerr=[agg[n][k]["std"] for n in order],
               capsize=2, label=k)
        if teacher:
            ax.axhline(teacher[k], color=f"C{i}", ls=":", lw=0.8)
    ax.set_xticks(x + width * (len(metrics) - 1) / 2, order, rotation=15)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Distillation ablation (bars: students, mean ± std over seeds; dotted: teacher)")
    ax.legend(fontsize=8, ncol=len(metrics))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(agg: dict, teacher: dict, order: list[str]) -> None:
    rows = [["teacher", *(_num(teacher[k]) for k in METRICS)]]
    rows += [[n, *(_num(agg[n][k]["mean"]) + ("" if math.isnan(agg[n][k]["mean"]) else f"±{_num(agg[n][k]['std'])}")
                   for k in METRICS)] for n in order]
    head = ["method", *METRICS]
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    print("\n" + "  ".join(h.ljust(x) for h, x in zip(head, w)))
    print("  ".join("-" * x for x in w))
    for r in rows:
        print("  ".join(str(v).ljust(x) for v, x in zip(r, w)))


def collect_runs(args, names: list[str], out_root: Path, rows: dict[str, Method] | None = None,
                 config=None, metrics: tuple[str, ...] = METRICS,
                 recorded: dict[str, dict[int, dict]] | None = None) -> dict[str, list[dict]]:
    """Train (or resume, or skip) every (method, seed), seed-major, baseline and GAN-KD first: the first rows
    already answer the main question. With ``--aggregate-only`` nothing trains: finished runs are read.
    ``rows`` / ``config``: another study's rows and its ``config(args, row, seed, out) -> TrainConfig``
    (default: :data:`BY_NAME`, :func:`run_config`) and the summary keys it reports (``metrics``).
    ``recorded`` (:func:`load_recorded`): results of earlier runs, used where no run folder has a summary."""
    from .safety import claim_run
    runs: dict[str, list[dict]] = {n: [] for n in names}
    first = [n for n in ("baseline", "gan") if n in names]
    jobs = [(n, s) for s in range(args.seeds) for n in first + [n for n in names if n not in first]]
    bar = tqdm(jobs, desc="ablation", dynamic_ncols=True)
    for name, seed in bar:
        bar.set_postfix(method=name, seed=seed)
        cfg = (config or run_config)(args, (rows or BY_NAME)[name], seed, out_root / name / f"seed{seed}")
        summary = Path(cfg.run.out) / "summary.json"
        rec = (recorded or {}).get(name, {}).get(seed)
        if rec is not None and not summary.is_file():
            runs[name].append(rec)
            tqdm.write(f"{name} seed {seed}: recorded in {rec['recorded']}: " +
                       "  ".join(f"{k} {rec[k]:.2f}" for k in metrics[:2]))
            continue
        if args.aggregate_only and not summary.is_file():
            continue
        if args.aggregate_only or summary.is_file():
            s = json.loads(summary.read_text())
        else:
            with claim_run(cfg.run.out) as holder:
                if holder is not None:          # another study process is training it
                    tqdm.write(f"{name} seed {seed}: being trained by process {holder['pid']} on {holder['host']} "
                               f"({holder['claim']}); skipped here, aggregate with --aggregate-only when it ends")
                    continue
                s = run_one(cfg)
        runs[name].append({"seed": seed, "run": cfg.run.out, "minutes": s.get("minutes", 0.0),
                           **{k: s.get(k) for k in metrics}})   # None: a summary written before the column existed
        tqdm.write(f"{name} seed {seed}: " + "  ".join(f"{k} {s[k]:.2f}" for k in metrics[:2]))
    return {n: r for n, r in runs.items() if r}


@command("python -m distill.ablate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names + paired_refs(args.paired_against) if n not in BY_NAME]
    if unknown or args.seeds < 1:
        print(f"error: unknown method(s) {unknown}; choose from {', '.join(BY_NAME)}" if unknown
              else "error: --seeds must be >= 1", file=sys.stderr)
        return 2
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        cfg0 = run_config(args, BY_NAME[names[0]], 0, out_root / names[0] / "seed0")
        flat = {k: v for k, v in cfg0.to_flat().items() if k not in ("seed", "out", "kd", "kd_weights")}
        recorded = load_recorded(args.recorded, flat, names)
        teacher = teacher_row(args, cfg0, out_root)
        runs = collect_runs(args, names, out_root, recorded=recorded)
    except ValueError as e:
        return fail(e)
    names = [n for n in names if n in runs]
    agg = aggregate(runs)
    from .checkpoint import load_checkpoint
    meta = {"seeds": args.seeds, "preset": args.preset, "img_size": cfg0.data.img_size, "student": args.student,
            "teacher": args.teacher, "teacher_model": load_checkpoint(args.teacher)["model_name"],
            "init_weights": args.init_weights, "paired_against": args.paired_against, "config": flat,
            "recorded": args.recorded, "wall_minutes": (time.time() - t0) / 60}
    gains = {n: size_gain(agg, n) for n in names if n != "baseline" and "baseline" in agg}
    paired = {base: {n: {k: paired_stats(runs, n, base, k) for k in METRICS} for n in names if n != base}
              for base in ("baseline", *paired_refs(args.paired_against)) if base in agg}
    write_json_atomic(out_root / "ablation.json", {"meta": meta, "teacher": teacher, "runs": runs, "aggregate": agg,
                                                  "size_gain_vs_baseline": gains, "paired": paired})
    write_text_atomic(out_root / "ablation.md", render_markdown(agg, teacher, names, meta, runs))
    plot(agg, teacher, names, out_root / "ablation.png")
    print_table(agg, teacher, names)
    print(f"\nwrote {out_root / 'ablation.md'}, ablation.json, ablation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
