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

``--study text``: Table II of the text / non-text paper (papers/text-nontext-kd.txt) on ``textnet_student``:
``hard`` (no distillation), ``soft`` (eq. 3), ``soft+began`` (eqs. 2, 4-6), ``ab+soft+began`` (the full
method), each seed paired with ``hard`` (same initialisation, the same batches and flips in every epoch
after the AB pre-training), plus the teacher row: ``textnet_teacher`` trained once (seed 0,
``OUT/teacher/seed0``, skipped / resumed like the rows) or ``--teacher CKPT``. Sizes: the text preset with
96 px, 600 training and 200 validation images (:data:`TEXT_STUDY_SIZE`, under ``--config``). With
``--preset quick`` on one CPU thread (a 2-core machine shared with other training): ~23 min for the
teacher, ~9 min per distilled run (the teacher's forward pass on every batch), ~1 min per ``hard`` run:
about 1.8 h for 3 seeds. The report adds recall / precision / F
per row, the paired F differences against ``hard`` and whether the full method beats ``hard`` by more than
the seeds' spread; the ORT 1-thread latency of the seed-0 student and of the teacher are the printed
export + benchmark commands.

Writes to ``--out``: ``ablation.json`` (every run, mean / std per row, params, GFLOPs, paired differences
against the reference row with paired t-tests), ``ablation.md`` (the table, the paired differences, whether
the paper's ordering shows, the CPU latency commands) and ``ablation.png``. Once the printed latency commands
have run (from the same working directory: they write ``reports/<study folder>/<row>/report.json``), a re-run
with ``--aggregate-only`` adds their ONNX Runtime end-to-end batch-1 median to the table. RefineDet rows with an
ARM also get what negative anchor filtering removes at 0.99 (``distill.arm_filter``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.atomic import atomic_path, write_json_atomic, write_text_atomic
from runtime.cli import ProductParser, command, fail
from runtime.errors import unknown_name_error
from runtime.sizes import size_text

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
    task: str = "detect"                # "text": the text / non-text classifier (distill/text/train.py)
    metrics: tuple[str, ...] = METRICS  # the summary keys every run reports, in the table's order
    key: str = "mAP"                    # the metric of the verdict and the paired steps
    also_keys: tuple[str, ...] = ()     # further metrics the ordering is checked on (same paper order)
    paper_metric: str = "VOC07 mAP"
    protocol: str = ("COCO metrics in points on the embedded dataset's validation split, last epoch, mean ± std "
                     "over seeds. Every row trains plainly (no distillation) with the same seeds, data order and "
                     "backbone start.")
    overrides: dict = field(default_factory=dict)   # config under --config and the rows' own (the study's sizes)


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
    latency_rows=("full", "ssdlite"), also_keys=("APs",))

TEXT_METRICS = ("recall", "precision", "f1")
# The text study's sizes on top of the text task's preset (distill/text/train.py text_presets): 96 px and 600
# training images keep the VGG-16 teacher's forward passes, which every distilled student step pays for, to
# minutes per run on one CPU thread; --config overrides them.
TEXT_STUDY_SIZE = {"img_size": 96, "shapes_train": 600, "shapes_val": 200}


def _tx(name: str, kd: str, label: str) -> Method:
    return Method(name, label, kd, {}, {"model": "textnet_student"})


TEXT = Study(
    "text", "Text / non-text classification: the effect of knowledge distillation (Table II)",
    rows=(_tx("hard", "none", "hard labels (no distillation)"), _tx("soft", "soft", "soft labels (eq. 3)"),
          _tx("soft+began", "soft+began", "soft labels + adversarial (BEGAN, eqs. 2, 4-6)"),
          _tx("ab+soft+began", "ab+soft+began", "AB pre-training + soft + adversarial (the full method)")),
    default_rows=("hard", "soft", "soft+began", "ab+soft+began"), reference="hard",
    ordering=("ab+soft+began", "soft+began", "soft", "hard"), steps=("hard", "soft", "soft+began", "ab+soft+began"),
    paper={"hard": 89.5, "soft": 91.5, "soft+began": 92.5, "ab+soft+began": 93.0, "teacher": 95.7},
    latency_rows=("ab+soft+began",), task="text", metrics=TEXT_METRICS, key="f1", paper_metric="TextDis F-measure",
    protocol=("Image-level recall / precision / F-measure in points on the embedded text data's validation split "
              "(threshold 0.5), last epoch, mean ± std over seeds. Every student row starts from the same "
              "initialisation per seed and sees the same batches and flips in every epoch after the AB "
              "pre-training; the distilled rows learn from the one teacher below (trained once, seed 0)."),
    overrides=TEXT_STUDY_SIZE)
TEACHER_ROW = Method("teacher", "teacher (VGG-16, hard labels)", "none", {}, {"model": "textnet_teacher"})
STUDIES: dict[str, Study] = {s.name: s for s in (REFINEDET, TEXT)}


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m distill.ablate_arch", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--study", default="refinedet", help=f"which study: {', '.join(STUDIES)} (default: refinedet)")
    p.add_argument("--rows", default=None,
                   help="comma-separated subset of the study's rows (default: its standard rows)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per row, 0..N-1 (default: 3)")
    p.add_argument("--preset", default="quick",
                   help="training recipe of every run (default: quick; see distill/presets.py; --study text: the "
                        "text task's preset at 96 px, 600 + 200 images: ~9 min per distilled run, ~23 min for "
                        "the teacher on one CPU thread)")
    p.add_argument("--config", default=None, help="YAML of config overrides applied to every run (model_kwargs are "
                                                   "merged under each row's own)")
    p.add_argument("--out", default=None, help="output folder (default: runs/ablate-<study>)")
    p.add_argument("--pretrained-backbone", default=None,
                   help="ImageNet backbone weights of every row (default: the locally installed MobileNetV2 weights "
                        "when present; 'none': random init)")
    p.add_argument("--teacher", default=None,
                   help="--study text: the teacher checkpoint of the distilled rows (default: train "
                        "textnet_teacher once, seed 0, in OUT/teacher/seed0)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' (default: auto)")
    p.add_argument("--aggregate-only", action="store_true",
                   help="train nothing: aggregate the finished runs found in --out (e.g. while the study is still "
                        "going)")
    p.add_argument("--recorded", action="append", default=[], metavar="JSON", help=ablate.RECORDED_HELP)
    return p


def text_config(args, study: Study, row: Method, seed: int, out: Path):
    """The TrainConfig of one text run: the text preset with the study's sizes <- --config <- the row's model,
    ``--kd`` and (distilled rows) the teacher checkpoint."""
    from .text.train import text_presets
    cli = {"preset": args.preset, "task": "text", "model": row.overrides["model"], "kd": row.kd, "seed": seed,
           "out": str(out), "device": args.device, "select_best": False}
    if row.kd != "none":
        cli["teacher"] = str(args.teacher_ckpt)
    if args.config:
        cli["config"] = args.config
    return resolve(cli, {n: {**p, **study.overrides} for n, p in text_presets().items()})


def run_config(args, row: Method, seed: int, out: Path):
    """The TrainConfig of one (row, seed): preset <- --config <- the row's model and kwargs (model_kwargs merged)."""
    study = STUDIES.get(getattr(args, "study", None))
    if study is not None and study.task == "text":
        return text_config(args, study, row, seed, out)
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
        for r in rs:
            if "run" in r:
                s = json.loads((Path(r["run"]) / "summary.json").read_text())
                out[name] = {"params(M)": s.get("params(M)"), "GFLOPs": s.get("GFLOPs"), "model": s.get("model")}
                break
            if r.get("costs"):                  # a recorded run (--recorded): the file's row costs
                out[name] = r["costs"]
                break
    return out


def filtering_rows(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per row whose model filters anchors (a RefineDet with its ARM): the seeds' mean of distill.arm_filter's
    shares at 0.99 -- anchors filtered, boxes that lose every ODM positive -- read from each run's summary.json
    (``arm_filtering``, written by distill.train) or the run folder's arm_filter.json (``python -m
    distill.arm_filter --checkpoint RUN``, for runs trained before the summary had it). Rows without the
    measurement on every seed are left out."""
    out = {}
    for name, rs in runs.items():
        vals = []
        for r in rs:
            if "run" not in r:                  # a recorded run (--recorded): its row's recorded mean, if any
                s = r.get("arm_filtering")
                if not s or "0.99" not in s:
                    break
                vals.append(s["0.99"])
                continue
            folder = Path(r["run"])
            s = json.loads((folder / "summary.json").read_text()).get("arm_filtering")
            if s is None and (folder / "arm_filter.json").is_file():
                s = json.loads((folder / "arm_filter.json").read_text()).get("shares")
            if not s or "0.99" not in s:
                break
            vals.append(s["0.99"])
        else:
            if vals:
                out[name] = {k: _mean([v[k] for v in vals]) for k in ("anchors", "boxes_lost", "odm_positives")}
                out[name]["seeds"] = len(vals)
    return out


def _mean(vals: list) -> float | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def ordering_notes(study: Study, agg: dict, runs: dict) -> list[str]:
    """:func:`ordering_note` on the study's key metric, then on each of ``study.also_keys``."""
    return [ordering_note(study, agg, runs, k) for k in (study.key, *study.also_keys)]


def ordering_note(study: Study, agg: dict, runs: dict, key: str | None = None) -> str:
    """Whether the paper's order (best first) shows in the mean ``key`` (default: the study's, mAP), whether each
    of its steps is resolved by the paired t-test (p < 0.05), and the paired differences along ``study.steps``."""
    chain = [n for n in study.ordering if n in agg]
    if len(chain) < 2:
        return f"The paper's ordering ({' > '.join(study.ordering)}): fewer than two of its rows finished, no verdict."
    k = key or study.key
    paper = " > ".join(f"{n} ({study.paper[n]:.1f})" for n in chain)
    ours = ", ".join(f"{n} {agg[n][k]['mean']:.2f}" for n in chain)
    wrong = [f"{a} <= {b}" for a, b in zip(chain, chain[1:]) if not agg[a][k]["mean"] > agg[b][k]["mean"]]
    done = [n for n in study.steps if n in agg]
    steps = [f"{b} - {a}: {ablate._fmt_paired(ablate.paired_stats(runs, b, a, k))}" for a, b in zip(done, done[1:])]
    ps = [ablate.paired_stats(runs, b, a, k)["p"] for a, b in zip(chain, chain[1:])]
    resolved = all(p is not None and p < 0.05 for p in ps)
    head = (f"The paper's ordering {paper} ({study.paper_metric}) SHOWS in the mean {k} here ({ours}), "
            + ("every step at paired p < 0.05." if resolved else "but not every step is resolved at paired p < 0.05.")
            if not wrong else
            f"The paper's ordering {paper} ({study.paper_metric}) does NOT show in the mean {k} here ({ours}; out of order: "
            f"{', '.join(wrong)}).")
    return head + f" Paired steps (p: paired t-test), {k} points: " + "; ".join(steps) + "."


def spread_note(study: Study, agg: dict, runs: dict) -> str | None:
    """Whether the study's best row (``ordering[0]``) beats the reference by more than the seeds' spread (the
    larger of the two rows' std of ``key``), with the paired test; None when the two are the same row."""
    best, ref, k = study.ordering[0], study.reference, study.key
    if best == ref:
        return None
    if best not in agg or ref not in agg:
        return f"{best} vs {ref}: not both finished, no verdict."
    st = ablate.paired_stats(runs, best, ref, k)       # over the seeds both rows have finished
    diff = st["mean"]
    spread = max(agg[best][k]["std"], agg[ref][k]["std"])
    paired = ablate._fmt_paired(st)
    if st["n"] < 2:
        return f"{best} vs {ref}: {diff:+.2f} {k} points on one paired seed: no verdict before more seeds."
    verdict = "beats" if diff > spread else "does NOT beat"
    return (f"{best} vs {ref}: {diff:+.2f} {k} points, largest seed std {spread:.2f} -> {best} {verdict} {ref} by "
            f"more than the seeds' spread (paired: {paired}).")


def latency_commands(study: Study, out_root: Path, names: list[str], teacher: str | None = None) -> list[str]:
    """The commands that add ORT end-to-end batch-1 CPU latency of the seed-0 checkpoints to the comparison
    (export and benchmarks sit above distill: this module prints them, it does not run them). Text study: the
    classifier's benchmark rows (model alone, one thread) of the seed-0 student and of ``teacher``."""
    rows = [(n, out_root / n / "seed0" / "best.pt") for n in study.latency_rows if n in names]
    if study.task == "text":
        rows += [("teacher", Path(teacher))] if teacher else []
        return [c for n, ck in rows for c in (
            f"python -m export.onnx --checkpoint {ck} --out exports/{out_root.name}/{n}",
            f"python benchmarks/run.py --checkpoint {ck} --exports exports/{out_root.name}/{n} --threads 1 "
            f"--out reports/{out_root.name}/{n}")]
    cmds = []
    for n, ck in rows:
        ex = Path("exports") / out_root.name / n
        cmds += [f"python -m export.onnx --checkpoint {ck} --out {ex}",
                 f"python benchmarks/run.py --checkpoint {ck} --exports {ex} --only onnxruntime-cpu-nms "
                 f"--batch-sizes 1 --threads 1 --no-peer --out reports/{out_root.name}/{n}"]
    return cmds


LATENCY_BACKEND = "onnxruntime-cpu-nms"      # the latency commands' --only: ONNX Runtime, NMS in the graph


def latency_rows(study: Study, out_root: Path, names: list[str], recorded: list[str] = ()) -> dict[str, dict]:
    """Per latency row whose benchmark report exists (``reports/<study folder>/<row>/report.json``, what the
    printed commands write): ONNX Runtime end-to-end batch-1 latency (median and mean ms, the threads, the
    benchmark's busy-machine flags). A row without a report keeps the latency a ``recorded`` study JSON has
    for it (``recorded`` says which file)."""
    out = {}
    for path in recorded:
        for n, e in (json.loads(Path(path).read_text()).get("latency") or {}).items():
            if n in names and n in study.latency_rows:
                out[n] = {**e, "recorded": str(path)}
    for n in study.latency_rows:
        path = Path("reports") / out_root.name / n / "report.json"
        if n not in names or not path.is_file():
            continue
        rep = json.loads(path.read_text())
        entry = next((b for b in rep.get("backends", []) if b.get("name") == LATENCY_BACKEND), None)
        e2e = ((entry or {}).get("latency_ms") or {}).get("e2e")
        if entry and entry.get("status") == "ok" and e2e:
            threads = rep.get("threads") or (rep.get("config") or {}).get("threads")   # text / detection report
            out[n] = {"p50_ms": e2e.get("p50"), "mean_ms": e2e.get("mean"), "threads": threads,
                      "busy": entry.get("busy") or [], "report": str(path)}
    return out


def _cell(a: dict, k: str) -> str:
    m = a[k]["mean"]
    return ablate._num(m) + (f" ± {ablate._num(a[k]['std'])}" if a["seeds"] > 1 and not math.isnan(m) else "")


def render_markdown(study: Study, agg: dict, costs: dict, runs: dict, names: list[str], meta: dict,
                    latency: dict | None = None) -> str:
    labels = {r.name: r.label for r in study.rows}
    ms = study.metrics
    latency = latency or {}
    lat_head = " CPU ms (ORT, e2e, b1, p50) |" if latency else ""
    lines = [f"# {study.title}", "",
             f"Preset `{meta['preset']}`, {size_text(meta['img_size'])} px, seeds 0-{meta['seeds'] - 1} asked. "
             + study.protocol, "",
             "| row | model | seeds | " + " | ".join(ms) + f" | params (M) | GFLOPs |{lat_head} paper "
             f"{study.paper_metric} |",
             "|---|---|---|" + "---|" * (len(ms) + 3 + bool(latency))]
    t = meta.get("teacher")
    if t:
        lines.append(f"| {TEACHER_ROW.label} | `{t['model']}` | 1 | " + " | ".join(ablate._num(t[k]) for k in ms)
                     + f" | {ablate._num(t['params(M)'], '.3f')} | - |" + (" - |" if latency else "")
                     + f" {study.paper.get('teacher', '')} |")
    for n in names:
        c, paper = costs[n], study.paper.get(n)
        lat = (f" {ablate._num(latency[n]['p50_ms'])} |" if n in latency else " - |") if latency else ""
        lines.append(f"| {labels[n]} | `{c['model']}` | {agg[n]['seeds']} | "
                     + " | ".join(_cell(agg[n], k) for k in ms)
                     + f" | {ablate._num(c['params(M)'], '.3f')} | {ablate._num(c['GFLOPs'], '.3f')} |{lat} "
                     + ("" if paper is None else f"{paper:.1f}") + " |")
    if latency:
        busy = [f"{n}: {', '.join(v['busy'])}" for n, v in latency.items() if v["busy"]]
        lines += ["", "CPU ms: the seed-0 checkpoint's benchmark (" + ", ".join(
            f"`{v['report']}`, {v['threads']} thread(s)" for v in latency.values()) + "); the rows were timed one "
            "after the other, not interleaved: compare them from one quiet machine."
            + (f" Busy-machine flags: {'; '.join(busy)}." if busy else "")]
    if study.reference in agg:
        lines += ablate.paired_lines(runs, names, study.reference, (study.key, next(k for k in ms if k != study.key),
                                                                  *study.also_keys))
    filt = filtering_rows({n: runs[n] for n in names})
    if filt:
        lines += ["", "Negative anchor filtering at theta = 0.99 on the validation images (`python -m distill.arm_filter`;"
                  " mean over seeds; for a theta = 1.0 row: what 0.99 WOULD filter):", "",
                  "| row | seeds | anchors filtered % | ODM positives filtered % | boxes losing every ODM positive % |",
                  "|---|---|---|---|---|"]
        lines += [f"| {labels[n]} | {f['seeds']} | {ablate._num(f['anchors'])} | {ablate._num(f['odm_positives'])} | "
                  f"{ablate._num(f['boxes_lost'])} |" for n, f in filt.items()]
    for note in ordering_notes(study, agg, runs):
        lines += ["", note]
    spread = spread_note(study, agg, runs)
    lines += ["", spread] if spread else []
    cmds = latency_commands(study, Path(meta["out"]), names, meta.get("teacher_checkpoint"))
    if cmds:
        what = ("the classifier alone, batch 1, one thread" if study.task == "text" else
                "end to end, batch 1, one thread")
        lines += ["", f"CPU latency (ONNX Runtime, {what}) of the seed-0 checkpoints:", "", "```", *cmds, "```"]
    lines += ["", f"Wall time of all runs: {sum(a['minutes'] for a in agg.values()):.1f} min."]
    return "\n".join(lines) + "\n"


def text_teacher(args, study: Study, out_root: Path) -> dict | None:
    """The text study's teacher: ``--teacher`` scored on the study's validation images (cached in
    teacher_eval.json), else textnet_teacher trained once (seed 0, OUT/teacher/seed0; skipped when finished,
    resumed when stopped). Sets ``args.teacher_ckpt``; returns its row (recall / precision / f1, params(M),
    model, run) or None (``--aggregate-only`` before the teacher finished)."""
    if args.teacher:
        return _scored_teacher(args, text_config(args, study, TEACHER_ROW, 0, out_root / "teacher-eval"), out_root)
    cfg = text_config(args, study, TEACHER_ROW, 0, out_root / "teacher" / "seed0")
    args.teacher_ckpt = str(Path(cfg.run.out) / "best.pt")
    summary = Path(cfg.run.out) / "summary.json"
    if args.aggregate_only and not summary.is_file():
        return None
    s = json.loads(summary.read_text()) if summary.is_file() else ablate.run_one(cfg)
    return {**{k: s[k] for k in study.metrics}, "params(M)": s["params(M)"], "model": s["model"], "run": cfg.run.out}


def _scored_teacher(args, cfg, out_root: Path) -> dict:
    from .checkpoint import Checkpoint
    from .runs import pick_device
    from .text.models import count_parameters
    from .text.train import build_text_datasets, evaluate_text, input_size
    size = input_size(cfg)
    key = {"teacher": str(Path(args.teacher).resolve()), "size": list(size),
           "val": [cfg.data.data, cfg.data.val_data, cfg.data.shapes_val, cfg.data.shapes_seed]}
    cache = out_root / "teacher_eval.json"
    if cache.is_file() and json.loads(cache.read_text()).get("key") == key:
        return json.loads(cache.read_text())["row"]
    ck = Checkpoint.load(args.teacher)
    if ck.extra.get("task") != "text":
        raise ValueError(f"--teacher {args.teacher}: a {ck.model_name} checkpoint, expected a text classifier "
                         "trained with --task text")
    device = pick_device(cfg.run.device)
    model = ck.build_model().to(device)
    m = evaluate_text(model, build_text_datasets(cfg, size)[1], device, cfg.optim.batch_size)
    row = {**{k: m[k] for k in TEXT_METRICS}, "params(M)": count_parameters(model) / 1e6, "model": ck.model_name,
           "run": str(args.teacher)}
    write_json_atomic(cache, {"key": key, "row": row})
    return row


def _rows(study: Study, spec: str | None) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()] if spec else list(study.default_rows)
    known = [r.name for r in study.rows]
    for n in names:
        if n not in known:
            raise unknown_name_error(f"row of study '{study.name}'", n, known)
    return names


def write_report(study: Study, runs: dict, names: list[str], meta: dict, out_root: Path) -> dict:
    """Aggregate, then write ablation.json / .md / .png (each atomically); returns the JSON document."""
    agg = ablate.aggregate(runs, study.metrics)
    costs = model_costs(runs)
    paired = {n: {k: ablate.paired_stats(runs, n, study.reference, k) for k in study.metrics}
              for n in names if n != study.reference and study.reference in agg}
    latency = latency_rows(study, out_root, names, meta.get("recorded") or ())
    doc = {"meta": meta, "runs": runs, "aggregate": agg, "costs": costs, "latency": latency,
           "paired_vs_" + study.reference: paired,
           "arm_filtering": filtering_rows({n: runs[n] for n in names}),
           "ordering": ordering_note(study, agg, runs),
           "ordering_also": {k: ordering_note(study, agg, runs, k) for k in study.also_keys},
           "spread": spread_note(study, agg, runs),
           "latency_commands": latency_commands(study, out_root, names, meta.get("teacher_checkpoint"))}
    write_json_atomic(out_root / "ablation.json", doc)
    write_text_atomic(out_root / "ablation.md", render_markdown(study, agg, costs, runs, names, meta, latency))
    with atomic_path(out_root / "ablation.png") as tmp:
        ablate.plot(agg, meta.get("teacher"), names, tmp, title=f"{study.title} (mean ± std over seeds)",
                    metrics=study.metrics, ylabel="points" if study.task == "text" else "COCO AP (points)")
    return doc


@command("python -m distill.ablate_arch")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.study not in STUDIES:
        return fail(unknown_name_error("study", args.study, STUDIES))
    if args.seeds < 1:
        return fail("--seeds must be >= 1")
    study = STUDIES[args.study]
    if args.teacher and study.task != "text":
        return fail(f"--teacher is for --study text (distilled rows); study '{study.name}' trains without one")
    args.teacher_ckpt = args.teacher
    out_root = Path(args.out or f"runs/ablate-{study.name}")
    t0 = time.time()
    try:
        names = _rows(study, args.rows)
        out_root.mkdir(parents=True, exist_ok=True)
        rows = {r.name: r for r in study.rows}
        teacher = text_teacher(args, study, out_root) if study.task == "text" else None
        # The study's config is its reference row's: rows differ in their own model settings (RefineDet keeps 200
        # detections, SSD-Lite 100), so a --rows subset must not change what --recorded compares against.
        cfg0 = run_config(args, rows[study.reference], 0, out_root / study.reference / "seed0")
        flat = {k: v for k, v in cfg0.to_flat().items() if k not in ("seed", "out", "model", "model_kwargs")}
        recorded = ablate.load_recorded(args.recorded, flat, names)
        runs = ablate.collect_runs(args, names, out_root, rows=rows, config=run_config, metrics=study.metrics,
                                   recorded=recorded)
    except ValueError as e:
        return fail(e)
    names = [n for n in names if n in runs]
    if not names:
        return fail(f"{out_root}: no finished run to aggregate")
    meta = {"study": study.name, "rows": names, "seeds": args.seeds, "preset": args.preset,
            "img_size": cfg0.data.img_size, "out": str(out_root), "config_file": args.config,
            "config": flat, "recorded": args.recorded,
            "row_models": {n: rows[n].overrides for n in names}, "wall_minutes": (time.time() - t0) / 60,
            "teacher": teacher, "teacher_checkpoint": args.teacher_ckpt}
    write_report(study, runs, names, meta, out_root)
    print("\n" + (out_root / "ablation.md").read_text())
    print(f"wrote {out_root / 'ablation.md'}, ablation.json, ablation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
