"""Detection datasets and the SSD augmentation.

Dataset specs (``--data`` / ``--val-data``)::

    shapes                            embedded synthetic dataset (split from ``split``)
    shapes:train | shapes:val         ... with the split named in the spec (it wins over ``split``)
    coco:ANNOTATIONS.json:IMAGE_DIR   a COCO instances json and its image folder
    voc:ROOT:SPLIT                    ROOT/{Annotations, JPEGImages, ImageSets/Main/SPLIT.txt}

Items, box formats and label conventions: see :mod:`distill.data.dataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from distill.data.collate import collate_eval, collate_train
from distill.data.dataset import BadSampleReporter, DetectionDataset, ImageRecord, describe

__all__ = [
    "build_dataset", "default_val_spec", "parse_spec", "describe", "DetectionDataset",
    "ImageRecord", "collate_train", "collate_eval", "SPEC_FORMS",
]

SPEC_FORMS = ("shapes", "coco:ANNOTATIONS.json:IMAGE_DIR", "voc:ROOT:SPLIT")


def _spec_error(spec: Any, why: str = "") -> ValueError:
    return ValueError(
        f"malformed dataset spec {spec!r}{': ' + why if why else ''}; expected one of "
        f"'shapes' (embedded synthetic dataset; 'shapes:train' / 'shapes:val' name the split), "
        f"'coco:ANNOTATIONS.json:IMAGE_DIR', 'voc:ROOT:SPLIT'")


def parse_spec(spec: str) -> Tuple[str, Tuple[str, ...]]:
    """``spec -> (kind, args)``: ``("shapes", (split or "",))``, ``("coco", (ann, img_dir))`` or
    ``("voc", (root, split))``. Raises ValueError listing the accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise _spec_error(spec, "empty")
    parts = spec.strip().split(":")
    kind = parts[0].lower()
    if kind == "shapes":
        if len(parts) == 1:
            return "shapes", ("",)
        if len(parts) == 2 and parts[1] in ("train", "val"):
            return "shapes", (parts[1],)
        raise _spec_error(spec, "the shapes split must be 'train' or 'val'")
    if kind in ("coco", "voc"):
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise _spec_error(spec, f"'{kind}:' needs exactly two non-empty fields")
        return kind, (parts[1], parts[2])
    raise _spec_error(spec, f"unknown kind {parts[0]!r}")


def build_dataset(spec: str, split: str, *, img_size: int, mean: Sequence[float],
                  std: Sequence[float], train: bool, augment: bool | str = True,
                  on_bad_sample: str = "error", data_root: str = "data",
                  shapes_kwargs: Optional[Dict[str, Any]] = None,
                  zoom_out_max: float = 4.0) -> DetectionDataset:
    """Build a :class:`DetectionDataset` from a spec (module docstring).

    ``split``: "train"/"val" for a bare ``shapes`` spec; coco/voc specs name their split
    themselves and ignore it. ``img_size`` S, ``mean``/``std`` (RGB, [0, 1] units) and
    ``augment`` (True/"ssd", "light", False/"none"; see transforms.AUGMENT_POLICIES) matter for ``train=True`` only. ``on_bad_sample``: "error" (ValueError naming the
    file and annotation) or "skip" (warn + count in ``dataset.bad_samples``). ``data_root`` and
    ``shapes_kwargs`` (num_train, num_val, seed, size_range) locate/parameterise the generated
    shapes dataset, which is created on first use. ``zoom_out_max``: largest RandomZoomOut side
    factor of the "ssd" policy (SSD's recipe: 4).
    """
    kind, args = parse_spec(spec)
    report = BadSampleReporter(on_bad_sample)
    if kind == "shapes":
        from distill.data import shapes

        sp = args[0] or split
        if sp not in shapes.SPLITS:
            raise ValueError(f"split for the shapes dataset must be one of {list(shapes.SPLITS)}, "
                             f"got {split!r}")
        root = shapes.ensure_shapes_dataset(data_root, **(shapes_kwargs or {}))
        ann, img_dir = shapes.split_paths(root, sp)
        from distill.data.coco import load_coco

        records, names, cids = load_coco(ann, img_dir, report)
        name = f"shapes:{sp} ({root.name})"
    elif kind == "coco":
        from distill.data.coco import load_coco

        records, names, cids = load_coco(args[0], args[1], report)
        name = f"coco:{Path(args[0]).name}"
    else:
        from distill.data.voc import load_voc

        records, names, cids = load_voc(args[0], args[1], report)
        name = f"voc:{Path(args[0]).name}:{args[1]}"
    return DetectionDataset(records, names, cids, train=train, img_size=img_size, mean=mean,
                            std=std, augment=augment, on_bad_sample=on_bad_sample, name=name,
                            bad_samples=report.counts, zoom_out_max=zoom_out_max)


def default_val_spec(train_spec: str) -> str:
    """The validation spec that goes with a training spec.

    shapes -> ``shapes:val``; ``voc:ROOT:trainval`` -> ``voc:ROOT:test`` if that split file
    exists, else ``voc:ROOT:val``; ``voc:ROOT:train`` -> ``voc:ROOT:val``;
    ``coco:.../instances_train2017.json:.../train2017`` -> the ``val2017`` counterparts when both
    exist. Otherwise ValueError asking for ``--val-data``.
    """
    kind, args = parse_spec(train_spec)
    if kind == "shapes":
        return "shapes:val"
    if kind == "voc":
        from distill.data.voc import split_file

        root, split = args
        candidates = {"trainval": ("test", "val"), "train": ("val",)}.get(split, ())
        for cand in candidates:
            if split_file(Path(root), cand).is_file():
                return f"voc:{root}:{cand}"
        why = (f"none of {[str(split_file(Path(root), c)) for c in candidates]} exists"
               if candidates else f"no validation split is known for split {split!r}")
    else:
        ann, img_dir = args
        ann_p, img_p = Path(ann), Path(img_dir)
        if "train" in ann_p.name and "train" in img_p.name:
            v_ann = ann_p.with_name(ann_p.name.replace("train", "val"))
            v_img = img_p.with_name(img_p.name.replace("train", "val"))
            if v_ann.is_file() and v_img.is_dir():
                return f"coco:{v_ann}:{v_img}"
            why = f"{v_ann} and/or {v_img} do not exist"
        else:
            why = "the annotation file and image folder names do not contain 'train'"
    raise ValueError(f"cannot derive a validation dataset from {train_spec!r} ({why}); "
                     f"pass one with --val-data")
