"""Detection datasets and the SSD augmentation.

Dataset specs (``--data`` / ``--val-data``)::

    shapes                            embedded synthetic dataset (split from ``split``)
    shapes:train | shapes:val         ... with the split named in the spec (it wins over ``split``)
    shapes-small[:train|:val]         its small-objects variant (512 px images, most objects < 32^2 px at 256 px)
    coco:ANNOTATIONS.json:IMAGE_DIR   a COCO instances json and its image folder
    voc:ROOT:SPLIT                    ROOT/{Annotations, JPEGImages, ImageSets/Main/SPLIT.txt}

Items, box formats and label conventions: see :mod:`distill.data.dataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from distill.data.collate import collate_eval, collate_train
from distill.data.dataset import BadSampleReporter, DetectionDataset, ImageRecord, check_training_sets, describe
from runtime.datasets import SHAPES_VARIANTS, SPEC_FORMS, default_val_spec, parse_spec
from runtime.voc import split_file

__all__ = [
    "build_dataset", "default_val_spec", "parse_spec", "describe", "DetectionDataset",
    "ImageRecord", "collate_train", "collate_eval", "SPEC_FORMS", "check_training_sets",
]

def build_dataset(spec: str, split: str, *, img_size: int | Sequence[int], mean: Sequence[float],
                  std: Sequence[float], train: bool, augment: bool | str = True,
                  on_bad_sample: str = "error", data_root: str = "data",
                  shapes_kwargs: dict[str, Any] | None = None,
                  zoom_out_max: float = 4.0, resize_mode: str = "stretch") -> DetectionDataset:
    """Build a :class:`DetectionDataset` from a spec (module docstring).

    ``split``: "train"/"val" for a bare ``shapes`` spec; coco/voc specs name their split
    themselves and ignore it. ``img_size`` S or (H, W), ``mean``/``std`` (RGB, [0, 1] units) and
    ``augment`` (True/"ssd", "light", False/"none"; see transforms.AUGMENT_POLICIES) matter for ``train=True`` only. ``on_bad_sample``: "error" (ValueError naming the
    file and annotation) or "skip" (warn + count in ``dataset.bad_samples``). ``data_root`` and
    ``shapes_kwargs`` (num_train, num_val, seed, size_range) locate/parameterise the generated
    shapes dataset, which is created on first use. ``zoom_out_max``: largest RandomZoomOut side
    factor of the "ssd" policy (SSD's recipe: 4). ``resize_mode``: "stretch" or "letterbox", the training
    resize and the dataset's ``resize_mode`` that evaluation preprocesses with.
    """
    kind, args = parse_spec(spec)
    report = BadSampleReporter(on_bad_sample)
    if kind in SHAPES_VARIANTS:
        from distill.data import shapes

        sp = args[0] or split
        if sp not in shapes.SPLITS:
            raise ValueError(f"split for the shapes dataset must be one of {list(shapes.SPLITS)}, "
                             f"got {split!r}")
        root = shapes.ensure_shapes_dataset(data_root, variant=kind, **(shapes_kwargs or {}))
        ann, img_dir = shapes.split_paths(root, sp)
        from distill.data.coco import load_coco

        records, names, cids = load_coco(ann, img_dir, report)
        name, source = f"{kind}:{sp} ({root.name})", ann
    elif kind == "coco":
        from distill.data.coco import load_coco

        records, names, cids = load_coco(args[0], args[1], report)
        name, source = f"coco:{Path(args[0]).name}", Path(args[0])
    else:
        from distill.data.voc import load_voc

        records, names, cids = load_voc(args[0], args[1], report)
        name, source = f"voc:{Path(args[0]).name}:{args[1]}", split_file(Path(args[0]), args[1])
    dataset = DetectionDataset(records, names, cids, train=train, img_size=img_size, mean=mean,
                               std=std, augment=augment, on_bad_sample=on_bad_sample, name=name,
                               bad_samples=report.counts, zoom_out_max=zoom_out_max, resize_mode=resize_mode)
    dataset.source = source
    return dataset
