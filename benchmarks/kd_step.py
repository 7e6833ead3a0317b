"""What each distillation method costs per step: ``python benchmarks/kd_step.py --teacher CKPT [--methods baseline,gan,sr]``.

Times the product's own distillation steps (``distill.kd.session.KDSession``) of ``distill.ablate``'s rows, built
exactly as the study builds them (same preset, data, student and teacher): the student step (forward, every term,
backward, the optimizers) and, for methods with discriminators, the discriminator step of the D stages. The rows
are timed interleaved, step by step on the same batches, so that a busy machine slows all alike. Parts of a step
are timed on their own too: the teacher's forward pass (every distillation step reads it) and, for SR-KD rows,
z_HR, the high-resolution pass (the teacher at twice the input size). The first ``--warmup`` steps are not timed.
Prints a table (median seconds, ratio to the first row) and writes ``kd_step.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.timing import add_step_args, timed_call
from runtime.atomic import write_json_atomic
from runtime.cli import ProductParser, command, out_folder


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python benchmarks/kd_step.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher checkpoint (best.pt / last.pt)")
    p.add_argument("--methods", default="baseline,gan,sr",
                   help="distill.ablate rows, comma-separated; the first is the ratios' reference (default: baseline,gan,sr)")
    p.add_argument("--preset", default="quick", help="training recipe (input size, batch, optimizer; default: quick)")
    p.add_argument("--data", default=None, help="training data, as distill.train --data (default: the preset's)")
    p.add_argument("--student", default="ssdlite_mobilenetv2", help="student model (default: ssdlite_mobilenetv2)")
    add_step_args(p, "row", "reports/kd_step", 4)
    return p


def _config(args, name: str):
    """The study's config of row ``name`` (distill.ablate.run_config: its preset, data, student, overrides)."""
    from distill import ablate
    study = ablate.build_parser().parse_args(["--teacher", args.teacher, "--preset", args.preset, "--student",
                                              args.student, "--device", args.device, "--pretrained-backbone", "none",
                                              *(["--data", args.data] if args.data else [])])
    return ablate.run_config(study, ablate.BY_NAME[name], 0, Path(args.out) / "unused" / name)


def _session(cfg, train_set):
    """Row ``cfg``'s distillation session on ``train_set`` (the rows share one data set), student seeded alike."""
    from distill.runs import seed_everything
    from distill.train import build_kd_session, build_model
    seed_everything(0)
    device = torch.device(cfg.run.device)
    student = build_model(cfg, len(train_set.class_names), False).to(device).train()
    return build_kd_session(cfg, student, student.anchors(cfg.data.img_size).to(device), train_set, device)


def _parts(session) -> dict:
    """name -> fn(images, targets) of what this row's steps are made of."""
    parts = {"student step": lambda im, tg: session.train_step(im, tg)}
    if session.d_opt is not None:             # the D stages train something (the baseline's are only counted)
        parts["D step"] = lambda im, tg: session.discriminator_step(im, tg)
    parts["teacher pass"] = lambda im, tg: session.teacher_outputs(im)
    if "sr" in session.methods:
        sr = session.methods["sr"]

        def z_hr(im, tg):
            with torch.no_grad():
                sizes = [tuple(f.shape[-2:]) for f in session.student.forward_features(im)[2]]
            sr.high_res(im, sizes)
        parts["z_HR pass (2x)"] = z_hr
    return parts


@command("python benchmarks/kd_step.py")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    from distill.ablate import BY_NAME
    from distill.data import collate_train
    bad = [n for n in names if n not in BY_NAME]
    if bad or not names or args.steps < 1 or args.warmup < 0:
        raise ValueError(f"--methods: unknown row(s) {bad}; choose from {', '.join(BY_NAME)}" if bad or not names
                         else "--steps must be >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads)
    from distill.runs import build_datasets
    configs = {n: _config(args, n) for n in names}
    cfg0 = configs[names[0]]
    train_set, _ = build_datasets(cfg0)
    sessions = {n: _session(cfg, train_set) for n, cfg in configs.items()}
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg0.optim.batch_size, shuffle=False,
                                         collate_fn=collate_train, drop_last=True)
    batches = iter(loader)
    parts = {n: _parts(s) for n, s in sessions.items()}
    for s in sessions.values():
        s.schedule.stage = "student"             # every row's student step carries its distillation terms
    times = {n: {p: [] for p in ps} for n, ps in parts.items()}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    for i in range(args.warmup + args.steps):
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        images = images.to(args.device)
        for n, ps in parts.items():
            for p, fn in ps.items():
                t = timed_call(lambda: fn(images, targets), sync)
                if i >= args.warmup:
                    times[n][p].append(t)
    med = {n: {p: statistics.median(v) for p, v in t.items()} for n, t in times.items()}
    ref = med[names[0]]["student step"]
    report = {"methods": names, "preset": args.preset, "data": cfg0.data.data, "student": args.student,
              "teacher": args.teacher, "img_size": cfg0.data.img_size, "batch_size": cfg0.optim.batch_size,
              "threads": args.threads, "device": args.device, "steps": args.steps, "seconds": times, "median_s": med,
              "student_step_vs_first": {n: med[n]["student step"] / ref for n in names}}
    out = out_folder(args.out)
    write_json_atomic(out / "kd_step.json", report)
    cols = ["student step", "D step", "teacher pass", "z_HR pass (2x)"]
    print(f"\nstudent {args.student}, preset {args.preset}, {cfg0.data.img_size} px, batch {cfg0.optim.batch_size}, "
          f"{args.threads} thread(s), {args.device}: median seconds over {args.steps} interleaved steps")
    print(f"{'row':<12}" + "".join(f"{c:>16}" for c in cols) + f"{'step vs ' + names[0]:>18}")
    for n in names:
        cells = "".join(f"{med[n][c]:>16.2f}" if c in med[n] else f"{'-':>16}" for c in cols)
        print(f"{n:<12}{cells}{report['student_step_vs_first'][n]:>17.2f}x")
    print(f"wrote {out / 'kd_step.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
