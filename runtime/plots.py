"""Pictures of an evaluation: per-class precision-recall curves and the detection confusion matrix.

matplotlib is imported on use: a deployment host without it gets the numbers (``metrics.json``) and a note
instead of the pictures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import atomic_path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_pr_curves(pr_iou50: dict[str, list[float]], path: str | Path) -> Path | None:
    """One precision-recall curve per class at IoU 0.5 (COCOeval's 101 recall points; undefined points are
    left out). Returns the path written, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    recall = np.linspace(0.0, 1.0, 101)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, precision in pr_iou50.items():
        p = np.asarray(precision, dtype=np.float64)
        ok = p >= 0
        ap = float(np.mean(np.where(ok, p, 0.0))) * 100
        ax.plot(recall[ok], p[ok], label=f"{name} (AP50 {ap:.1f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall at IoU 0.5")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path)


def write_confusion(confusion: dict[str, Any], path: str | Path) -> Path | None:
    """The confusion matrix of :func:`runtime.metrics.confusion_matrix` as a heat map with counts."""
    plt = _pyplot()
    if plt is None:
        return None
    m = np.asarray(confusion["matrix"])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * m.shape[1], 1.0 + 0.55 * m.shape[0]))
    ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(m.shape[1]), confusion["columns"], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(m.shape[0]), confusion["rows"], fontsize=8)
    ax.set(xlabel="predicted", ylabel="ground truth",
           title=f"detections (score >= {confusion['conf']}, IoU >= {confusion['iou']})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path)
