"""Precision / recall / F-measure of a text / non-text classifier on ``text`` data, and its region maps.

``python -m runtime.evaluate --model exports/text_kd/model.onnx --data text:DIR [--out DIR]`` comes here
(so does a model whose sidecar says task "text"): every image of the folder is classified
(:func:`runtime.classifier.load_classifier`), scored by :func:`runtime.textdata.text_prf` at the model's
threshold, printed as a table and, with ``--out``, written to ``metrics.json`` (atomically) with
``region_maps.png`` beside it: a few images with their region probability maps laid over them.

``--data text`` is the embedded validation split, read from ``<data root>/text_val`` (a ``text:DIR`` folder
that ``python -m export.text --checkpoint CKPT --write-val data/text_val`` writes from the generator).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import atomic_path, write_json_atomic

EMBEDDED_VAL_DIR = "text_val"
PICTURE_IMAGES = 6
PRF_KEYS = ("precision", "recall", "f1", "accuracy")


def is_text_spec(spec: str | None) -> bool:
    """Whether a ``--data`` spec names text data (``text`` or ``text:DIR``)."""
    return spec is not None and (spec == "text" or spec.startswith("text:"))


def text_folder(spec: str, data_root: str | None = None) -> Path:
    """The folder a text spec reads: ``text:DIR`` -> DIR; ``text`` -> ``<data_root>/text_val`` (ValueError
    naming the command that writes it when it is missing)."""
    from runtime.textdata import parse_text_spec
    kind, folder = parse_text_spec(spec)
    if kind == "folder":
        return folder
    folder = Path(data_root or "data") / EMBEDDED_VAL_DIR
    if not folder.is_dir():
        raise ValueError(f"the embedded text validation split is not on disk at {folder}; write it with: python -m "
                         f"export.text --checkpoint CKPT --write-val {folder} (or pass --data text:DIR)")
    return folder


def evaluate_classifier(clf: Any, dataset: Any, *, max_images: int | None = None,
                        keep: int = PICTURE_IMAGES) -> dict[str, Any]:
    """Score ``clf`` (:class:`runtime.classifier.Classifier`) on a :class:`runtime.textdata.TextFolder`:
    :func:`runtime.textdata.text_prf` at the classifier's threshold (rates in points), ``images``, ``seconds``,
    and ``_examples``: the first ``keep`` images of each class with their predictions (for the picture)."""
    from runtime.textdata import text_prf
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    order = interleaved(np.asarray(dataset.labels))[:n]   # both classes in any first n
    probs, labels, examples = np.zeros(n, np.float32), np.zeros(n, np.int64), []
    t0 = time.perf_counter()
    for start in range(0, n, clf.batch_size):
        items = [dataset[i] for i in order[start:start + clf.batch_size]]
        preds = clf.predict([img for img, _ in items])
        for k, (img, target), pred in zip(range(start, n), items, preds):
            probs[k], labels[k] = pred["text_prob"], target["label"]
            if len(examples) < keep:
                examples.append((img, target, pred))
    seconds = time.perf_counter() - t0
    return {**text_prf(probs, labels, clf.threshold), "images": n, "seconds": round(seconds, 3),
            "ms_per_image": round(1e3 * seconds / max(n, 1), 3), "_examples": examples}


def interleaved(labels: np.ndarray) -> list[int]:
    """Indices of int [N] 0 / 1 ``labels`` with text and non-text images alternating, so that any prefix holds
    both classes."""
    pos, neg = list(np.flatnonzero(labels == 1)), list(np.flatnonzero(labels == 0))
    pairs = [int(i) for pair in zip(pos, neg) for i in pair]
    return pairs + [int(i) for i in pos[len(neg):] + neg[len(pos):]]


def format_text_table(metrics: dict[str, Any], title: str = "") -> str:
    """P / R / F / accuracy in points and the confusion counts, as a small table."""
    lines = [title] if title else []
    lines.append(f"{'P':>6} {'R':>6} {'F':>6} {'acc':>6}   {'tp':>5} {'fp':>5} {'fn':>5} {'tn':>5}  threshold")
    lines.append(" ".join(f"{metrics[k]:6.1f}" for k in PRF_KEYS) + "   "
                 + " ".join(f"{metrics[k]:>5d}" for k in ("tp", "fp", "fn", "tn")) + f"  {metrics['threshold']:.2f}")
    return "\n".join(lines)


def write_region_maps(examples: list[Any], grids: tuple[int, ...], path: Path) -> Path | None:
    """One row per example: the image, then each grid's region probabilities laid over it (red = text), with
    the image-level probability and the true class. None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not examples:
        return None
    fig, axes = plt.subplots(len(examples), 1 + len(grids), figsize=(2.2 * (1 + len(grids)), 2.2 * len(examples)),
                             squeeze=False)
    for row, (img, target, pred) in zip(axes, examples):
        truth = "text" if target["label"] else "non-text"
        row[0].imshow(img)
        row[0].set_title(f"p(text) {pred['text_prob']:.2f} | {truth}", fontsize=8,
                         color="green" if pred["is_text"] == bool(target["label"]) else "red")
        for ax, g in zip(row[1:], grids):
            h, w = img.shape[:2]
            ax.imshow(img)
            regions = pred["regions"][g]
            ax.imshow(regions, cmap="Reds", vmin=0, vmax=1, alpha=0.55, extent=(0, w, h, 0), interpolation="nearest")
            for (r, c), v in np.ndenumerate(regions):     # each region's probability at its centre
                ax.text((c + 0.5) * w / g, (r + 0.5) * h / g, f"{v:.2f}", ha="center", va="center",
                        fontsize=6 if g <= 3 else 4.5, color="black")
            ax.set_title(f"{g}x{g} regions", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(path)


def run_text_evaluation(args: Any, out: Path | None) -> int:
    """The text branch of ``python -m runtime.evaluate``: load, score, print, write. Exit status 0; ValueError /
    RuntimeError for the caller's one-line error."""
    from runtime.classifier import load_classifier
    from runtime.textdata import TextFolder
    folder = text_folder(args.data or "text", args.data_root)
    dataset = TextFolder(folder)
    backend = "openvino" if args.provider == "openvino" else "auto"
    with load_classifier(args.model, backend=backend, device=args.device,
                         accept_modified=args.accept_modified) as clf:
        clf.batch_size = max(1, int(args.batch_size))
        metrics = evaluate_classifier(clf, dataset, max_images=args.max_images)
        name, grids = clf.name, clf.grids
    examples = metrics.pop("_examples")
    print(format_text_table(metrics, f"{name} on text:{folder}: {metrics['images']} images, "
                                     f"{metrics['ms_per_image']:.2f} ms per image"))
    if out is not None:
        write_json_atomic(out, {"model": str(args.model), "backend": name, "data": f"text:{folder}", "task": "text",
                                **metrics})
        print(f"wrote {out}")
        picture = write_region_maps(examples, grids, out.parent / "region_maps.png")
        print(f"wrote {picture}" if picture else "note: install matplotlib for region_maps.png")
    return 0
