"""Where export finds images: a folder given on the command line, the checkpoint's own datasets
(only if they are already on disk: export never generates a dataset as a side effect), or
synthetic images when nothing real is available. Also the one "latest run" lookup of the CLIs
(:func:`find_latest_checkpoint`, :func:`run_name`), used by export and benchmarks alike.
Preprocessing is not here: it is ``runtime.preprocess``, the one implementation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, so the selection is reproducible)."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files[:limit] if limit else files


def synthetic_images(n: int, seed: int = 0, size_range: tuple[int, int] = (48, 160)) -> list[np.ndarray]:
    """``n`` uint8 [h, w, 3] RGB images of various sizes with overlapping filled rectangles and
    discs on a smooth background, plus noise: detector-like input when no real image is available."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 256, size=3)
        img = (base + 40 * np.sin(xx[..., None] / (5 + 10 * rng.random()) + rng.random(3) * 6)).clip(0, 255)
        for _ in range(int(rng.integers(3, 9))):
            colour = rng.integers(0, 256, size=3)
            x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
            bw, bh = rng.integers(8, max(9, w // 2)), rng.integers(8, max(9, h // 2))
            if rng.random() < 0.5:
                img[y0:y0 + bh, x0:x0 + bw] = colour
            else:
                cy, cx = y0 + bh / 2, x0 + bw / 2
                mask = ((yy - cy) / (bh / 2)) ** 2 + ((xx - cx) / (bw / 2)) ** 2 <= 1
                img[mask] = colour
        # Sensor-like noise: without it, flat regions give exactly tied scores at many anchors.
        img = img + rng.normal(0.0, 3.0, size=img.shape)
        out.append(img.clip(0, 255).astype(np.uint8))
    return out


def _shapes_on_disk(cfg: dict, variant: str = "shapes") -> tuple[bool, str]:
    from distill.data import shapes
    params = shapes.resolve_params(variant, num_train=cfg.get("shapes_train"), num_val=cfg.get("shapes_val"),
                                   seed=cfg.get("shapes_seed"))
    root = Path(cfg.get("data_root", "data")) / shapes.dataset_name(params)
    return root.is_dir(), str(root)


def checkpoint_dataset(cfg: dict, split: str = "val", *, allow_generate: bool = False) -> tuple[Any | None, str]:
    """The checkpoint config's eval-mode dataset of ``split`` ("val": ``val_data`` or the default
    validation spec of ``data``; "train": ``data``), or (None, why not).

    Items are (uint8 HWC RGB, {"image_id", "orig_size"}); the dataset has ``coco_gt()``,
    ``category_ids``, ``class_names``. The embedded shapes dataset is used only if already
    generated, unless ``allow_generate``.
    """
    try:
        from distill.data import build_dataset, default_val_spec, parse_spec
    except Exception as e:  # noqa: BLE001 - the data package is optional for export
        return None, f"distill.data unavailable ({e.__class__.__name__}: {e})"
    try:
        spec = cfg.get("data") or "shapes"
        if split == "val":
            spec = cfg.get("val_data") or default_val_spec(spec)
        kind, _ = parse_spec(spec)
        if kind in ("shapes", "shapes-small") and not allow_generate:
            ok, where = _shapes_on_disk(cfg, kind)
            if not ok:
                return None, (f"dataset {spec!r} is not generated yet ({where} missing; python -m "
                              f"distill.data.shapes --out {cfg.get('data_root', 'data')} makes it)")
        shapes_kwargs = {"num_train": cfg.get("shapes_train"), "num_val": cfg.get("shapes_val"),
                         "seed": cfg.get("shapes_seed")}
        ds = build_dataset(spec, split, img_size=cfg["img_size"], mean=cfg["mean"], std=cfg["std"], train=False,
                           on_bad_sample=cfg.get("on_bad_sample", "error"), data_root=cfg.get("data_root", "data"),
                           resize_mode=cfg.get("resize_mode", "stretch"),
                           shapes_kwargs={k: v for k, v in shapes_kwargs.items() if v is not None})
        if len(ds) == 0:
            return None, f"dataset {spec!r} has no images"
        return ds, f"{spec} ({split}, {len(ds)} images)"
    except Exception as e:  # noqa: BLE001 - missing files, malformed specs: "not available", said why
        return None, f"dataset not available ({e.__class__.__name__}: {e})"


def dataset_images(dataset: Any, n: int) -> list[np.ndarray]:
    """The first ``n`` images (uint8 HWC RGB) of an eval-mode dataset."""
    return [dataset[i][0] for i in range(min(n, len(dataset)))]


def calibration_images(count: int, folder: str | Path | None = None, cfg: dict | None = None
                       ) -> tuple[list[Any] | None, str]:
    """Up to ``count`` INT8 calibration images and where they come from: the image files of
    ``folder`` (paths, sorted), else every n-th training image (uint8 HWC RGB) of the checkpoint
    config ``cfg``, spread over the whole set, when that dataset is on disk. (None, why not) when
    neither is available; ValueError when ``folder`` holds no images."""
    if count < 1:
        raise ValueError(f"the calibration image count must be >= 1, got {count}")
    if folder is not None:
        files = [str(p) for p in list_images(folder, limit=count)]
        return files, f"{folder} ({len(files)} images)"
    if cfg is None:
        return None, "no checkpoint config"
    ds, why = checkpoint_dataset(cfg, "train")
    if ds is None:
        return None, why
    step = max(1, len(ds) // count)
    images = [ds[i][0] for i in range(0, len(ds), step)][:count]
    return images, f"checkpoint training data {why} ({len(images)} images, {every_nth(step)})"


def every_nth(step: int) -> str:
    """``1 -> "all of them"``, ``2 -> "every 2nd"``, ``3 -> "every 3rd"``, ``11 -> "every 11th"``."""
    if step <= 1:
        return "all of them"
    suffix = "th" if step % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(step % 10, "th")
    return f"every {step}{suffix}"


# --------------------------------------------------------------------------- runs and exports
def find_latest_checkpoint(runs_dir: str | Path = "runs", hint: str = "pass --checkpoint") -> Path:
    """The newest ``best.pt`` (by mtime) anywhere under ``runs_dir``."""
    root = Path(runs_dir)
    found = sorted(root.rglob("best.pt"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise ValueError(f"no best.pt under {root}/ (train first: python -m distill.train, or {hint})")
    return found[-1]


def run_name(checkpoint: str | Path, runs_dir: str | Path = "runs") -> str:
    """``runs/kd/best.pt`` (or the folder ``runs/kd``) -> ``kd``; ``runs/a/b/best.pt`` -> ``a/b``;
    elsewhere: the name of the checkpoint's folder."""
    p = Path(checkpoint).resolve()
    parent = p if p.is_dir() else p.parent
    try:
        return parent.relative_to(Path(runs_dir).resolve()).as_posix() or parent.name
    except ValueError:
        return parent.name


def default_export_dir(checkpoint: str | Path, runs_dir: str | Path = "runs",
                       exports_dir: str | Path = "exports") -> Path:
    return Path(exports_dir) / run_name(checkpoint, runs_dir)

