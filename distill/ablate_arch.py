"""Architecture ablations: ``python -m distill.ablate_arch --study refinedet --preset quick --seeds 3``.

A study is a list of rows, each a detector (model name + builder kwargs) trained plainly (no teacher, no
distillation) from the same start: the same preset, the same seeds (seed s: the same data order and
augmentations in every row, distill/train.py ``epoch_loader``), the same ImageNet backbone file when one is
installed (``--pretrained-backbone none``: random init). Every run reports its LAST epoch, as
``distill.ablate`` does, and runs, resumes, skips and aggregates through that module's code: one run folder
per (row, seed) -- finished ones are skipped on a re-run, stopped ones resumed, so a study can be stopped and
continued across sessions.

``--study refinedet``: RefineDet's Table 2 (Zhang et al. 2018, sec. 5.1.2) on RefineDet-MobileNetV2, plus
SSD-Lite-MobileNetV2 at the same input size and backbone. The paper's columns are cumulative, and so are the
default rows: ``full``; ``theta1`` (theta = 1.0: no negative anchor filtering); ``no-two-step`` (theta = 1.0,
ODM offsets against the tiled anchors); ``no-tcb`` (theta = 1.0, no two-step, no TCB and no ARM:
``arm=False``, one multi-class module on the four maps, the paper's "redefining the loss function in the ARM
to directly detect multi-class objects, just like SSD"). Single-removal rows (``only-no-two-step``,
``only-no-tcb``) are available through ``--rows``.

Writes to ``--out``: ``ablation.json`` (every run, mean / std per row, params, GFLOPs, paired differences
against the reference row with paired t-tests), ``ablation.md`` (the table, the paired differences, whether
the paper's ordering shows, the CPU latency commands) and ``ablation.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.atomic import atomic_path, write_json_atomic, write_text_atomic
from runtime.cli import ProductParser, command, fail
from runtime.errors import unknown_name_error

from . import ablate
from .ablate import METRICS, Method
from .config import resolve
from .presets import PRESETS


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    rows: tuple[Method, ...]
    default_rows: tuple[str, ...]
    reference: str                      # the row every other is paired against
    ordering: tuple[str, ...]           # the paper's claimed order, best first (the verdict)
    steps: tuple[str, ...]              # consecutive rows whose paired differences the note lists
    paper: dict                         # row -> the paper's number (mAP, VOC07 test)
    latency_rows: tuple[str, ...] = ()  # rows whose seed-0 checkpoint the latency commands export


def _rd(name: str, label: str, **kwargs) -> Method:
    return Method(name, label, "none", {}, {"model": "refinedet_mobilenetv2", "model_kwargs": kwargs})


REFINEDET = Study(
    "refinedet", "RefineDet ablation (Table 2) and SSD-Lite at the same input size and backbone",
    rows=(_rd("full", "RefineDet-MobileNetV2 (full)"),
          _rd("theta1", "θ = 1.0 (no negative anchor filtering)", theta=1.0),
          _rd("no-two-step", "θ = 1.0, no two-step regression", theta=1.0, two_step=False),
          _rd("no-tcb", "θ = 1.0, no two-step, no TCB (one multi-class module)", theta=1.0, two_step=False,
              tcb=False, arm=False),
          Method("ssdlite", "SSD-Lite-MobileNetV2 (same backbone and input)", "none", {},
                 {"model": "ssdlite_mobilenetv2"}),
          _rd("only-no-two-step", "no two-step regression only (θ = 0.99, TCB)", two_step=False),
          _rd("only-no-tcb", "no TCB only (ODM on the ARM maps; θ = 0.99, two-step)", tcb=False)),
    default_rows=("full", "theta1", "no-two-step", "no-tcb", "ssdlite"),
    reference="full", ordering=("full", "theta1", "no-two-step"), steps=("full", "theta1", "no-two-step", "no-tcb"),
    paper={"full": 80.0, "theta1": 79.5, "no-two-step": 77.3, "no-tcb": 76.2},
    latency_rows=("full", "ssdlite"))
STUDIES: dict[str, Study] = {s.name: s for s in (REFINEDET,)}


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m distill.ablate_arch", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--study", default="refinedet", help=f"which study: {', '.join(STUDIES)} (default: refinedet)")
    p.add_argument("--rows", default=None,
                   help="comma-separated subset of the study's rows (default: its standard rows)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per row, 0..N-1 (default: 3)")
    p.add_argument("--preset", default="quick",
                   help="training recipe of every run (default: quick; see distill/presets.py)")
    p.add_argument("--config", default=None, help="YAML of config overrides applied to every run (model_kwargs are "
                                                   "merged under each row's own)")
    p.add_argument("--out", default=None, help="output folder (default: runs/ablate-<study>)")
    p.add_argument("--pretrained-backbone", default=None,
                   help="ImageNet backbone weights of every row (default: the locally installed MobileNetV2 weights "
                        "when present; 'none': random init)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' (default: auto)")
    p.add_argument("--aggregate-only", action="store_true",
                   help="train nothing: aggregate the finished runs found in --out (e.g. while the study is still "
                        "going)")
    return p


def run_config(args, row: Method, seed: int, out: Path):
    """The TrainConfig of one (row, seed): preset <- --config <- the row's model and kwargs (model_kwargs merged)."""
    cli = {"preset": args.preset, "kd": row.kd, "seed": seed, "out": str(out), "device": args.device,
           "select_best": False, "model": row.overrides["model"]}
    if args.config:
        cli["config"] = args.config
    base = resolve(cli, PRESETS).model.kwargs
    cli["model_kwargs"] = {**base, **row.overrides.get("model_kwargs", {})}
    if args.pretrained_backbone != "none":
        from .models import find_offline_backbone_weights
        path = args.pretrained_backbone or find_offline_backbone_weights(cli["model"], cli["model_kwargs"])
        if path:
            cli["pretrained_backbone"] = str(path)
    return resolve(cli, PRESETS)


def model_costs(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per row: params (M) and GFLOPs (distill.models.count_gflops, one image at the run's input size) from the
    summary of its first finished run."""
    out = {}
    for name, rs in runs.items():
        s = json.loads((Path(rs[0]["run"]) / "summary.json").read_text())
        out[name] = {"params(M)": s.get("params(M)"), "GFLOPs": s.get("GFLOPs"), "model": s.get("model")}
    return out


def ordering_note(study: Study, agg: dict, runs: dict) -> str:
    """Whether the paper's order (best first) shows in the mean mAP, whether each of its steps is resolved by the
    paired t-test (p < 0.05), and the paired differences along ``study.steps``."""
    chain = [n for n in study.ordering if n in agg]
    if len(chain) < 2:
        return f"The paper's ordering ({' > '.join(study.ordering)}): fewer than two of its rows finished, no verdict."
    paper = " > ".join(f"{n} ({study.paper[n]:.1f})" for n in chain)
    ours = ", ".join(f"{n} {agg[n]['mAP']['mean']:.2f}" for n in chain)
    wrong = [f"{a} <= {b}" for a, b in zip(chain, chain[1:]) if not agg[a]["mAP"]["mean"] > agg[b]["mAP"]["mean"]]
    done = [n for n in study.steps if n in agg]
    steps = [f"{b} - {a}: {ablate._fmt_paired(ablate.paired_stats(runs, b, a))}" for a, b in zip(done, done[1:])]
    ps = [ablate.paired_stats(runs, b, a)["p"] for a, b in zip(chain, chain[1:])]
    resolved = all(p is not None and p < 0.05 for p in ps)
    head = (f"The paper's ordering {paper} (VOC07 mAP) SHOWS in the mean mAP here ({ours}), "
            + ("every step at paired p < 0.05." if resolved else "but not every step is resolved at paired p < 0.05.")
            if not wrong else
            f"The paper's ordering {paper} (VOC07 mAP) does NOT show here ({ours}; out of order: {', '.join(wrong)}).")
    return head + " Paired steps (p: paired t-test), mAP points: " + "; ".join(steps) + "."


def latency_commands(study: Study, out_root: Path, names: list[str]) -> list[str]:
    """The commands that add ORT end-to-end batch-1 CPU latency of the seed-0 checkpoints to the comparison
    (export and benchmarks sit above distill: this module prints them, it does not run them)."""
    cmds = []
    for n in (n for n in study.latency_rows if n in names):
        ck, ex = out_root / n / "seed0" / "best.pt", Path("exports") / out_root.name / n
        cmds += [f"python -m export.onnx --checkpoint {ck} --out {ex}",
                 f"python benchmarks/run.py --checkpoint {ck} --exports {ex} --only onnxruntime-cpu-nms "
                 f"--batch-sizes 1 --no-peer --out reports/{out_root.name}/{n}"]
    return cmds


def _cell(a: dict, k: str) -> str:
    m = a[k]["mean"]
    return ablate._num(m) + (f" ± {ablate._num(a[k]['std'])}" if a["seeds"] > 1 and not math.isnan(m) else "")


def render_markdown(study: Study, agg: dict, costs: dict, runs: dict, names: list[str], meta: dict) -> str:
    labels = {r.name: r.label for r in study.rows}
    lines = [f"# {study.title}", "",
             f"Preset `{meta['preset']}`, {meta['img_size']} px, seeds 0-{meta['seeds'] - 1} asked; COCO metrics in "
             "points on the embedded dataset's validation split, last epoch, mean ± std over seeds. Every row "
             "trains plainly (no distillation) with the same seeds, data order and backbone start.", "",
             "| row | model | seeds | " + " | ".join(METRICS) + " | params (M) | GFLOPs | paper mAP (VOC07) |",
             "|---|---|---|" + "---|" * (len(METRICS) + 3)]
    for n in names:
        c, paper = costs[n], study.paper.get(n)
        lines.append(f"| {labels[n]} | `{c['model']}` | {agg[n]['seeds']} | "
                     + " | ".join(_cell(agg[n], k) for k in METRICS)
                     + f" | {ablate._num(c['params(M)'], '.3f')} | {ablate._num(c['GFLOPs'], '.3f')} | "
                     + ("" if paper is None else f"{paper:.1f}") + " |")
    if study.reference in agg:
        lines += ablate.paired_lines(runs, names, study.reference)
    lines += ["", ordering_note(study, agg, runs)]
    cmds = latency_commands(study, Path(meta["out"]), names)
    if cmds:
        lines += ["", "CPU latency (ONNX Runtime, end to end, batch 1) of the seed-0 checkpoints:", "", "```",
                  *cmds, "```"]
    lines += ["", f"Wall time of all runs: {sum(a['minutes'] for a in agg.values()):.1f} min."]
    return "\n".join(lines) + "\n"


def _rows(study: Study, spec: str | None) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()] if spec else list(study.default_rows)
    known = [r.name for r in study.rows]
    for n in names:
        if n not in known:
            raise unknown_name_error(f"row of study '{study.name}'", n, known)
    return names


def write_report(study: Study, runs: dict, names: list[str], meta: dict, out_root: Path) -> dict:
    """Aggregate, then write ablation.json / .md / .png (each atomically); returns the JSON document."""
    agg = ablate.aggregate(runs)
    costs = model_costs(runs)
    paired = {n: {k: ablate.paired_stats(runs, n, study.reference, k) for k in METRICS}
              for n in names if n != study.reference and study.reference in agg}
    doc = {"meta": meta, "runs": runs, "aggregate": agg, "costs": costs, "paired_vs_" + study.reference: paired,
           "ordering": ordering_note(study, agg, runs), "latency_commands": latency_commands(study, out_root, names)}
    write_json_atomic(out_root / "ablation.json", doc)
    write_text_atomic(out_root / "ablation.md", render_markdown(study, agg, costs, runs, names, meta))
    with atomic_path(out_root / "ablation.png") as tmp:
        ablate.plot(agg, None, names, tmp, title=f"{study.title} (mean ± std over seeds)")
    return doc


@command("python -m distill.ablate_arch")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.study not in STUDIES:
        return fail(unknown_name_error("study", args.study, STUDIES))
    if args.seeds < 1:
        return fail("--seeds must be >= 1")
    study = STUDIES[args.study]
    out_root = Path(args.out or f"runs/ablate-{study.name}")
    t0 = time.time()
    try:
        names = _rows(study, args.rows)
        out_root.mkdir(parents=True, exist_ok=True)
        rows = {r.name: r for r in study.rows}
        cfg0 = run_config(args, rows[names[0]], 0, out_root / names[0] / "seed0")
        runs = ablate.collect_runs(args, names, out_root, rows=rows, config=run_config)
    except ValueError as e:
        return fail(e)
    names = [n for n in names if n in runs]
    if not names:
        return fail(f"{out_root}: no finished run to aggregate")
    meta = {"study": study.name, "rows": names, "seeds": args.seeds, "preset": args.preset,
            "img_size": cfg0.data.img_size, "out": str(out_root), "config_file": args.config,
            "config": {k: v for k, v in cfg0.to_flat().items() if k not in ("seed", "out", "model", "model_kwargs")},
            "row_models": {n: rows[n].overrides for n in names}, "wall_minutes": (time.time() - t0) / 60}
    write_report(study, runs, names, meta, out_root)
    print("\n" + (out_root / "ablation.md").read_text())
    print(f"wrote {out_root / 'ablation.md'}, ablation.json, ablation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
