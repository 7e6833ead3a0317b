"""Why does (or doesn't) a distillation term help? ``python -m distill.kd.diagnose RUN``.

RUN is a ``--kd gan...`` run folder (its config.yaml, teacher and last.pt). Two measurements:

* **Gradient alignment.** On ``--batches`` training batches, the gradient of each loss term on the
  student's parameters: its norm, and its cosine with the detection (multibox) gradient. A term whose
  gradient is as large as the detection gradient but orthogonal to it (cosine ~ 0) competes with
  detection for every optimizer step; one with a positive cosine speeds detection learning up.
  Terms: det (loc + cls), gan (eq. (2), student labelled "real", the run's discriminators), soft (T^2 KL),
  fitnet (L2 hints, the run's adapters).
* **Discriminator learnability** (``--d-iters N``): fresh discriminators of the run's architecture,
  trained N iterations (loss (2), Adam at the run's gan_lr) against the frozen student; their accuracy on
  a held-out batch, teacher maps ("real") / student maps ("fake"), per feature map.

``--student`` picks the student weights measured: ``run`` (the run's last.pt, default), ``init`` (the run's
initialisation: its ImageNet backbone and seed, random heads) or any checkpoint (e.g. the baseline's).
Writes the numbers as JSON (``--out``, default RUN/diagnose.json) and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from runtime.atomic import write_json_atomic
from runtime.cli import command, ProductParser


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m distill.kd.diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("run", help="a --kd gan run folder (config.yaml + last.pt)")
    p.add_argument("--student", default="run", help="'run' (default), 'init' or a checkpoint path")
    p.add_argument("--batches", type=int, default=4, help="training batches averaged for the gradients (default: 4)")
    p.add_argument("--d-iters", type=int, default=0, help="also train fresh discriminators this many iterations (default: 0)")
    p.add_argument("--device", default="cpu", help="'cpu' (default), 'cuda', 'auto'")
    p.add_argument("--out", default=None, help="JSON output (default: RUN/diagnose.json)")
    return p


def _session(run: Path, student_arg: str, device):
    from ..checkpoint import load_checkpoint
    from ..config import load_yaml
    from ..models import create_model, load_pretrained_backbone
    from ..runs import build_datasets, build_kd_session, seed_everything
    from .session import parse_kd
    cfg_path, ck_path = run / "config.yaml", run / "last.pt"
    for f in (cfg_path, ck_path):
        if not f.is_file():
            raise ValueError(f"{f}: not found (RUN must be a distillation run folder with config.yaml and last.pt)")
    cfg = load_yaml(cfg_path)
    if "gan" not in parse_kd(cfg.kd.methods):
        raise ValueError(f"{run}: a --kd {cfg.kd.methods} run; diagnose needs a run with GAN-KD discriminators (--kd gan...)")
    run_ck = load_checkpoint(ck_path)
    cfg = cfg.replace(kd="gan+soft+fitnet", kd_weights={}, device=str(device), workers=0)
    seed_everything(cfg.run.seed)
    train_set, _ = build_datasets(cfg)
    model = create_model(cfg.model.name, len(train_set.class_names), **cfg.model.kwargs)
    if student_arg == "init":
        if cfg.model.pretrained_backbone:
            load_pretrained_backbone(model, cfg.model.pretrained_backbone)
    else:
        ck = run_ck if student_arg == "run" else load_checkpoint(student_arg)
        if ck["model_name"] != cfg.model.name:
            raise ValueError(f"--student {student_arg}: a {ck['model_name']}, the run trains {cfg.model.name}")
        model.load_state_dict(ck["model"])
    model.to(device)
    kd = build_kd_session(cfg, model, model.anchors(cfg.data.img_size).to(device), train_set, device)
    if run_ck.get("gan_state", {}).get("format", 1) != 2:
        raise ValueError(f"{ck_path}: written by an older version of the distillation session; diagnose a new run")
    kd.discs.load_state_dict(run_ck["discriminators"]["patch"])
    kd.adapters.load_state_dict(run_ck["kd_modules"]["adapters"])
    if run_ck["kd_modules"].get("standardizer"):
        kd.standardizer.load_state_dict(run_ck["kd_modules"]["standardizer"])
    return cfg, kd, train_set


def gradient_alignment(kd, batches) -> dict:
    """Mean over ``batches`` of each term's gradient norm and cosine with the detection gradient."""
    params = [p for p in kd.student.parameters() if p.requires_grad]
    norms, cos = {}, {}
    for images, targets in batches:
        kd.student.train()
        det_terms, kd_terms, _, _ = kd.student_terms(images.to(kd.device), targets)
        terms = {"det": sum(det_terms.values()), **kd_terms}
        grads = {}
        for name, loss in terms.items():
            g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads[name] = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params)])
            norms.setdefault(name, []).append(grads[name].norm().item())
            cos.setdefault(name, []).append(F.cosine_similarity(grads["det"], grads[name], 0).item())
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {name: {"grad_norm": mean(norms[name]), "cos_with_det": mean(cos[name])} for name in norms}


def discriminator_learnability(kd, batches, held_out, iters: int) -> list[dict]:
    """Train fresh discriminators ``iters`` iterations; held-out accuracy per map every iters / 5."""
    from . import losses as L
    gan = kd.methods["gan"]
    saved_discs, saved_opt = {k: v.clone() for k, v in gan.discs.state_dict().items()}, kd.d_opt
    gan.reset_discriminators()
    kd.d_opt = torch.optim.Adam(gan.discs.parameters(), lr=kd.d_lr, betas=(0.5, 0.999))
    images = held_out[0].to(kd.device)
    rows, every = [], max(1, iters // 5)
    try:
        for i in range(1, iters + 1):
            info = kd.discriminator_step(next(batches)[0].to(kd.device))
            if i % every == 0 or i == iters:
                t_maps, s_maps = kd.maps(images)
                with torch.no_grad():
                    accs = [L.d_accuracy(d(t, images), d(s, images)) for d, t, s in zip(gan.discs, t_maps, s_maps)]
                rows.append({"iteration": i, "d_loss": info.get("d_gan"), "held_out_acc_real": [a[0] for a in accs],
                             "held_out_acc_fake": [a[1] for a in accs]})
    finally:
        gan.discs.load_state_dict(saved_discs)
        kd.d_opt = saved_opt
    return rows


@command("python -m distill.kd.diagnose")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from torch.utils.data import DataLoader

    from ..data import collate_train
    from ..runs import pick_device
    run = Path(args.run)
    try:
        cfg, kd, train_set = _session(run, args.student, pick_device(args.device))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(cfg.run.seed + 1)
    loader = DataLoader(train_set, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True, generator=gen,
                        collate_fn=collate_train)

    def stream():
        while True:
            yield from loader

    it = stream()
    held_out = next(it)
    batches = [next(it) for _ in range(args.batches)]
    result = {"run": str(run), "student": args.student, "batches": args.batches, "batch_size": cfg.optim.batch_size,
              "gradients": gradient_alignment(kd, batches)}
    print(f"student: {args.student}; gradients on the student's parameters, mean of {args.batches} batches")
    print(f"{'term':8s} {'grad norm':>10s} {'cos(det)':>9s}")
    for name, g in result["gradients"].items():
        print(f"{name:8s} {g['grad_norm']:10.3f} {g['cos_with_det']:9.3f}")
    if args.d_iters > 0:
        rows = discriminator_learnability(kd, it, held_out, args.d_iters)
        result["discriminator_learnability"] = rows
        print("fresh discriminators, held-out accuracy per map (teacher real / student fake):")
        for r in rows:
            print(f"  it {r['iteration']:4d}  " + "  ".join(f"{a:.2f}/{b:.2f}" for a, b in
                                                          zip(r["held_out_acc_real"], r["held_out_acc_fake"])))
    out = Path(args.out) if args.out else run / "diagnose.json"
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
