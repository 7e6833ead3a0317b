"""The distillation ablation: ``python -m distill.ablate --teacher runs/teacher/best.pt --seeds 3``.

Every method trains the same student on the same data with the same staged pipeline (distill/kd/schedule.py:
D pre-learning -> student / D fine-tuning rounds -> SGD post-learning), the same number of epochs and the
same seeds; only the distillation terms differ. The baseline is that pipeline with every KD weight at 0.
Discriminator stages draw batches of their own, so for a given seed every method's student steps see the
same batches with the same augmentations as the baseline's.

Writes to ``--out``: one run folder per (method, seed) -- finished ones are skipped on a re-run, stopped
ones are resumed --, ``ablation.json`` (every run and the aggregates), ``ablation.md`` (mean +- std of
mAP / AP50 / APs / APm / APl per method, the teacher on top, and the paper's Table 1 view: AP gain for
small / medium / large objects relative to the baseline) and ``ablation.png`` (bar plot).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from runtime.metadata import write_json_atomic

from .config import resolve
from .presets import PRESETS

METRICS = ("mAP", "AP50", "APs", "APm", "APl")


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    kd: str
    kd_weights: dict = field(default_factory=dict)


METHODS: tuple[Method, ...] = (
    Method("baseline", "baseline student (KD weight 0, same pipeline)", "gan", {"gan": 0.0}),
    Method("fitnet", "FitNets L2 hints", "fitnet"),
    Method("soft", "soft labels (Hinton, T^2 KL)", "soft"),
    Method("gan", "GAN-KD (paper: Tables 2-3, loss 3)", "gan"),
    Method("gan+soft", "GAN-KD + soft labels", "gan+soft"),
    Method("began", "BEGAN discriminator (k_t, eqs. 4-6)", "began"),
    Method("ab+gan", "activation-boundary init + GAN-KD", "ab+gan"),
    # Loss (3) sums six BCE terms; below 300 px several maps are <= 2x2 (three at 256 px) and their
    # discriminators can dominate the gradient. Averaging over the maps (weight 1/6) keeps lambda * L_MBOX in charge.
    Method("gan-mean", "GAN-KD, adversarial sum averaged over the 6 maps", "gan", {"gan": 1 / 6}),
)
BY_NAME = {m.name: m for m in METHODS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distill.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher checkpoint (best.pt / last.pt or its run folder)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method, 0..N-1 (default: 3)")
    p.add_argument("--preset", default="ablate", help="training recipe of every run (default: ablate; see distill/presets.py)")
    p.add_argument("--config", default=None, help="YAML of config overrides applied to every run (e.g. kd_mbox_weight)")
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
    return p


def run_config(args, method: Method, seed: int, out: Path):
    cli = {"preset": args.preset, "model": args.student, "kd": method.kd, "kd_weights": dict(method.kd_weights),
           "teacher": args.teacher, "seed": seed, "out": str(out), "device": args.device}
    if args.config:
        cli["config"] = args.config
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
    key = {"teacher": str(Path(args.teacher).resolve()), "img_size": cfg.img_size, "val": [cfg.data, cfg.shapes_val]}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["metrics"]
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .engine import evaluate
    from .train import build_datasets, pick_device
    device = pick_device(cfg.device)
    _, val_set = build_datasets(cfg)
    ck = load_checkpoint(args.teacher)
    model = model_from_checkpoint(ck).to(device)
    m = evaluate(model, val_set, device, img_size=cfg.img_size, mean=cfg.mean, std=cfg.std, nms_cfg=cfg.nms(),
                 desc="teacher eval")
    metrics = {k: m[k] for k in METRICS}
    write_json_atomic(cache, {"key": key, "metrics": metrics})
    return metrics


def run_one(cfg) -> dict:
    """Train (or resume, or skip) one run; returns its summary."""
    from .checkpoint import load_checkpoint
    from .train import fit
    out = Path(cfg.out)
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    if (out / "last.pt").is_file() and (out / "config.yaml").is_file():
        return fit(cfg, resume_ckpt=load_checkpoint(out / "last.pt"))
    return fit(cfg)


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: dict[str, list[dict]]) -> dict:
    agg = {}
    for name, rs in runs.items():
        agg[name] = {k: dict(zip(("mean", "std"), mean_std([r[k] for r in rs]))) for k in METRICS}
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
    b = {r["seed"]: r[key] for r in runs.get(base, [])}
    return [r[key] - b[r["seed"]] for r in runs.get(name, []) if r["seed"] in b]


def render_markdown(agg: dict, teacher: dict, order: list[str], meta: dict, runs: dict | None = None) -> str:
    lines = [f"# Distillation ablation ({meta['seeds']} seeds, preset `{meta['preset']}`, {meta['img_size']} px, "
             f"student `{meta['student']}`)", "",
             "COCO metrics in points on the embedded dataset's validation split, mean ± std over seeds.", "",
             "| method | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS),
             "| teacher `" + meta["teacher_model"] + "` | " + " | ".join(f"{teacher[k]:.2f}" for k in METRICS) + " |"]
    for name in order:
        a = agg[name]
        lines.append(f"| {BY_NAME[name].label} | " + " | ".join(f"{a[k]['mean']:.2f} ± {a[k]['std']:.2f}" for k in METRICS) + " |")
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
                cells.append(f"{g[label]['points']:+.2f} pt" + (f" ({pct:+.0f} %)" if pct is not None else ""))
            lines.append(f"| {BY_NAME[name].label} | " + " | ".join(cells) + " |")
        lines += ["", "Paper (VOC07, MobileNetV2 student): small +8 %, medium +14 %, large +12 %."]
        b = agg["baseline"]["mAP"]
        if "gan" in agg:
            g = agg["gan"]["mAP"]
            spread = max(b["std"], g["std"])
            verdict = "above" if g["mean"] - b["mean"] > spread else "NOT clearly above"
            lines += ["", f"GAN-KD vs baseline: {g['mean'] - b['mean']:+.2f} mAP points; largest seed std {spread:.2f} "
                      f"-> GAN-KD is {verdict} the baseline by more than the seeds' spread."]
            if runs:
                lines.append("Per seed (same data order and initialisation), method - baseline in mAP points: "
                             + "; ".join(f"{n} " + ", ".join(f"{d:+.2f}" for d in paired_gain(runs, n))
                                         for n in order if n != "baseline") + ".")
    lines += ["", f"Wall time of all runs: {sum(a['minutes'] for a in agg.values()):.1f} min."]
    return "\n".join(lines) + "\n"


def plot(agg: dict, teacher: dict, order: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(METRICS)
    x = np.arange(len(order))
    for i, k in enumerate(METRICS):
        ax.bar(x + i * width, [agg[n][k]["mean"] for n in order], width, yerr=[agg[n][k]["std"] for n in order],
               capsize=2, label=k)
        ax.axhline(teacher[k], color=f"C{i}", ls=":", lw=0.8)
    ax.set_xticks(x + width * (len(METRICS) - 1) / 2, order, rotation=15)
    ax.set_ylabel("COCO AP (points)")
    ax.set_title("Distillation ablation (bars: students, mean ± std over seeds; dotted: teacher)")
    ax.legend(fontsize=8, ncol=len(METRICS))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(agg: dict, teacher: dict, order: list[str]) -> None:
    rows = [["teacher", *(f"{teacher[k]:.2f}" for k in METRICS)]]
    rows += [[n, *(f"{agg[n][k]['mean']:.2f}±{agg[n][k]['std']:.2f}" for k in METRICS)] for n in order]
    head = ["method", *METRICS]
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    print("\n" + "  ".join(h.ljust(x) for h, x in zip(head, w)))
    print("  ".join("-" * x for x in w))
    for r in rows:
        print("  ".join(str(v).ljust(x) for v, x in zip(r, w)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or args.seeds < 1:
        print(f"error: unknown method(s) {unknown}; choose from {', '.join(BY_NAME)}" if unknown
              else "error: --seeds must be >= 1", file=sys.stderr)
        return 2
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        cfg0 = run_config(args, BY_NAME[names[0]], 0, out_root / names[0] / "seed0")
        teacher = teacher_row(args, cfg0, out_root)
        runs: dict[str, list[dict]] = {n: [] for n in names}
        # seed-major, baseline and GAN-KD first: the first rows already answer the main question
        first = [n for n in ("baseline", "gan") if n in names]
        jobs = [(n, s) for s in range(args.seeds) for n in first + [n for n in names if n not in first]]
        bar = tqdm(jobs, desc="ablation", dynamic_ncols=True)
        for name, seed in bar:
            bar.set_postfix(method=name, seed=seed)
            cfg = run_config(args, BY_NAME[name], seed, out_root / name / f"seed{seed}")
            s = run_one(cfg)
            runs[name].append({"seed": seed, "run": cfg.out, "minutes": s.get("minutes", 0.0), **{k: s[k] for k in METRICS}})
            tqdm.write(f"{name} seed {seed}: mAP {s['mAP']:.2f}  AP50 {s['AP50']:.2f}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    agg = aggregate(runs)
    from .checkpoint import load_checkpoint
    meta = {"seeds": args.seeds, "preset": args.preset, "img_size": cfg0.img_size, "student": args.student,
            "teacher": args.teacher, "teacher_model": load_checkpoint(args.teacher)["model_name"],
            "config": {k: v for k, v in cfg0.to_dict().items() if k not in ("seed", "out", "kd", "kd_weights")},
            "wall_minutes": (time.time() - t0) / 60}
    gains = {n: size_gain(agg, n) for n in names if n != "baseline" and "baseline" in agg}
    write_json_atomic(out_root / "ablation.json", {"meta": meta, "teacher": teacher, "runs": runs, "aggregate": agg,
                                                  "size_gain_vs_baseline": gains})
    (out_root / "ablation.md").write_text(render_markdown(agg, teacher, names, meta, runs))
    plot(agg, teacher, names, out_root / "ablation.png")
    print_table(agg, teacher, names)
    print(f"\nwrote {out_root / 'ablation.md'}, ablation.json, ablation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
