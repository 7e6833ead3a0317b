"""What a run folder shows while it trains: ``metrics.jsonl`` (one JSON row per epoch, appended), the same
rows flattened into ``metrics.csv``, ``curves.png``, and optionally TensorBoard event files (``--tensorboard``,
needs the ``tensorboard`` package: ``pip install tensorboard``).

A row is ``{"epoch", "step", "time", "train": {term: mean}, "val": {mAP, AP50, ...} | None, "kd": {...}}``.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_path, write_text_atomic

from . import distributed

VAL_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")
# Logged numbers that are accuracies or rates in [0, 1], not losses: drawn on their own axis.
RATE_PREFIXES = ("d_acc", "began_k")
SUMS = ("total", "det")           # sums of other terms: drawn once, dashed, not as series of their own


def read_rows(metrics_path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]


def flat_row(row: dict, val_keys: tuple[str, ...] = VAL_KEYS) -> dict[str, Any]:
    """One CSV line: epoch, step, time, ``train/<term>`` and ``val/<metric>`` columns."""
    out: dict[str, Any] = {"epoch": row["epoch"], "step": row.get("step"), "time_s": round(row.get("time", 0.0), 1)}
    out.update({f"train/{k}": v for k, v in row.get("train", {}).items()})
    out.update({f"val/{k}": (row.get("val") or {}).get(k) for k in val_keys})
    return out


def write_csv(rows: list[dict], path: Path, val_keys: tuple[str, ...] = VAL_KEYS) -> None:
    flat = [flat_row(r, val_keys) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(flat)
    write_text_atomic(path, buf.getvalue())


def plot_curves(rows: list[dict], out_png: Path, val_curves: tuple[str, ...] = ("mAP", "AP50")) -> None:
    """Losses (left), rates such as discriminator accuracies (middle, when logged), validation AP (right);
    markers when the run is short enough to see every epoch."""
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [r["epoch"] for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r["train"] if k != "lr"))
    rates = [k for k in keys if k.startswith(RATE_PREFIXES)]
    losses = [k for k in keys if k not in rates]
    panels = 3 if rates else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5))
    mark = "o" if len(rows) <= 30 else None
    for k in losses:
        style = dict(ls="--", lw=1.0, color="k") if k in SUMS else {}
        axes[0].plot(ep, [r["train"].get(k, float("nan")) for r in rows], marker=mark, label=k, **style)
    axes[0].set(xlabel="epoch", title="training losses (epoch means)")
    axes[0].legend(fontsize=7)
    if rates:
        for k in rates:
            axes[1].plot(ep, [r["train"].get(k, float("nan")) for r in rows], marker=mark, label=k)
        axes[1].set(xlabel="epoch", title="discriminator accuracies", ylim=(-0.05, 1.05))
        axes[1].legend(fontsize=7)
    ev = [r for r in rows if r.get("val")]
    for key, style in zip(val_curves, ("o-", "s--", "^:")):
        axes[-1].plot([r["epoch"] for r in ev], [r["val"][key] for r in ev], style, label=key)
    axes[-1].set(xlabel="epoch", title=f"validation ({', '.join(val_curves)}, points)")
    if ev:
        axes[-1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


class RunLog:
    """Appends a row to ``metrics.jsonl`` and refreshes ``metrics.csv`` / ``curves.png`` (and TensorBoard).
    Under torchrun only rank 0 writes; on the other ranks it does nothing."""

    def __init__(self, out: Path, tensorboard: bool = False, fresh: bool = True,
                 val_keys: tuple[str, ...] = VAL_KEYS, val_curves: tuple[str, ...] = ("mAP", "AP50")):
        self.out = Path(out)
        self.val_keys, self.val_curves = tuple(val_keys), tuple(val_curves)
        self.active = distributed.is_main()
        tensorboard = tensorboard and self.active
        if fresh and self.active:
            (self.out / "metrics.jsonl").write_text("")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(self.out / "tensorboard"))

    def add(self, row: dict) -> None:
        if not self.active:
            return
        path = self.out / "metrics.jsonl"
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        write_text_atomic(path, old + json.dumps(row) + "\n")     # whole or not at all: a full disk cuts no row
        rows = read_rows(self.out / "metrics.jsonl")
        write_csv(rows, self.out / "metrics.csv", self.val_keys)
        plot_curves(rows, self.out / "curves.png", self.val_curves)
        if self.tb is not None:
            for k, v in flat_row(row, self.val_keys).items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()
