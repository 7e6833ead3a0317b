"""Training speed by memory format: ``python benchmarks/train_step.py [--preset quick] [--teacher CKPT]``.

Times the product's own training step (``distill.train.DetectorTraining.step``: forward, anchor matching,
loss, backward, optimizer and schedule) on real batches of the run's data, once per memory format
(``--no-channels-last`` / ``--channels-last``), the two formats interleaved step by step so that a busy
machine slows both alike; with ``--teacher`` also the teacher's forward pass (what every distillation step
adds before its own terms). The first ``--warmup`` steps of each are not timed. Prints a table and writes
``train_step.json`` (per-step seconds, medians, the ratio) to ``--out``.
"""
from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.timing import add_step_args, timed_call
from runtime.atomic import write_json_atomic
from runtime.cli import ProductParser, command

FORMATS = {"contiguous": False, "channels_last": True}


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python benchmarks/train_step.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", help="training recipe (input size, batch, optimizer; default: quick)")
    p.add_argument("--model", default="ssdlite_mobilenetv2", help="detector (default: ssdlite_mobilenetv2)")
    p.add_argument("--data", default=None, help="training data, as distill.train --data (default: the preset's)")
    p.add_argument("--teacher", default=None, help="also time this checkpoint's forward pass (a distillation teacher)")
    add_step_args(p, "format", "reports/train_step", 6)
    return p


def _parts(args, channels_last: bool):
    """The plain training plan of one memory format, on its own copy of the model (same seed: same weights)."""
    from distill.config import resolve
    from distill.presets import PRESETS
    from distill.runs import build_datasets, memory_format, seed_everything
    from distill.train import DetectorTraining, build_model, epoch_loader
    over = {"preset": args.preset, "model": args.model, "out": str(Path(args.out) / "unused"),
            "device": args.device, "channels_last": channels_last, "pretrained_backbone": None}
    if args.data:
        over["data"] = args.data
    cfg = resolve(over, PRESETS)
    seed_everything(0)
    train_set, _ = build_datasets(cfg)
    device = torch.device(args.device)
    model = build_model(cfg, len(train_set.class_names), False).to(device, memory_format=memory_format(cfg)).train()
    plan = DetectorTraining(cfg, model, model.anchors(cfg.data.img_size).to(device), 1000, device)
    teacher = None
    if args.teacher:
        from distill.kd import load_teacher
        teacher = load_teacher(args.teacher, device)[0].to(memory_format=memory_format(cfg))
    return cfg, plan, teacher, iter(epoch_loader(cfg, train_set, 0))


@command("python benchmarks/train_step.py")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = {name: _parts(args, cl) for name, cl in FORMATS.items()}
    times: dict[str, dict[str, list[float]]] = {n: {"step": [], "teacher": []} for n in FORMATS}
    for i in range(args.warmup + args.steps):
        for name, (cfg, plan, teacher, batches) in parts.items():
            images, targets = next(batches)
            images = images.to(args.device)
            step = timed_call(lambda: plan.step(images, targets))
            with torch.no_grad():
                tf = timed_call(lambda: teacher.forward_features(images)) if teacher is not None else float("nan")
            if i >= args.warmup:
                times[name]["step"].append(step)
                times[name]["teacher"].append(tf)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    cfg = parts["contiguous"][0]
    report = {"model": args.model, "preset": args.preset, "img_size": cfg.data.img_size,
              "batch_size": cfg.optim.batch_size, "threads": args.threads, "device": args.device,
              "teacher": args.teacher, "steps": args.steps, "seconds": times, "median_s": med,
              "speedup_channels_last": {k: med["contiguous"][k] / med["channels_last"][k] for k in ("step", "teacher")
                                        if args.teacher or k == "step"}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "train_step.json", report)
    print(f"\n{args.model}, preset {args.preset}, {cfg.data.img_size} px, batch {cfg.optim.batch_size}, "
          f"{args.threads} thread(s), {args.device}: median seconds over {args.steps} interleaved steps")
    print(f"{'format':<14}{'training step':>15}{'teacher forward':>17}")
    for name in FORMATS:
        print(f"{name:<14}{med[name]['step']:>15.2f}{med[name]['teacher']:>17.2f}")
    print("channels_last speed-up: " + ", ".join(f"{k} {v:.2f}x" for k, v in report["speedup_channels_last"].items()))
    print(f"wrote {out / 'train_step.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
