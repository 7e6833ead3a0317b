"""Evaluation datasets on disk, read without torch: dataset specs and eval-mode readers.

Dataset specs (``--data`` / ``--val-data`` of every command)::

    shapes                            the generated synthetic dataset (split from ``split``)
    shapes:train | shapes:val         ... with the split named in the spec (it wins over ``split``)
    shapes-small[:train|:val]         its small-objects variant (512 px images, most objects < 32^2 px at 256 px)
    coco:ANNOTATIONS.json:IMAGE_DIR   a COCO instances json and its image folder
    voc:ROOT:SPLIT                    ROOT/{Annotations, JPEGImages, ImageSets/Main/SPLIT.txt}

:func:`open_eval_dataset` returns an :class:`EvalDataset`: ``dataset[i] -> (image uint8 [H, W, 3] RGB,
{"image_id": int, "orig_size": (H, W)})``, ``coco_gt()``, ``image_ids``, ``class_names``,
``category_ids`` and ``image_path(i)`` -- what :func:`runtime.evaluation.inference_on_dataset`
and the benchmark need. The training datasets (``distill.data``) parse specs with
:func:`parse_spec`, place the generated shapes set by the layout defined here and read VOC with
:mod:`runtime.voc`.

COCO ground truth is handed to pycocotools as the json gives it (boxes as given, crowd flags
honoured); VOC follows :mod:`runtime.voc` (difficult objects are crowd regions).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.annotations import ImageRecord, records_coco_gt
from runtime.voc import load_voc, split_file

SPEC_FORMS = ("shapes", "shapes-small", "coco:ANNOTATIONS.json:IMAGE_DIR", "voc:ROOT:SPLIT")


# --------------------------------------------------------------------------------------------
# Specs.
# --------------------------------------------------------------------------------------------
def _spec_error(spec: Any, why: str = "") -> ValueError:
    return ValueError(
        f"malformed dataset spec {spec!r}{': ' + why if why else ''}; expected one of "
        f"'shapes' (embedded synthetic dataset; 'shapes:train' / 'shapes:val' name the split), 'shapes-small' "
        f"(its small-objects variant, same split forms), 'coco:ANNOTATIONS.json:IMAGE_DIR', 'voc:ROOT:SPLIT'")


def parse_spec(spec: str) -> tuple[str, tuple[str, ...]]:
    """``spec -> (kind, args)``: ``("shapes", (split or "",))`` (``"shapes-small"`` likewise),
    ``("coco", (ann, img_dir))`` or ``("voc", (root, split))``. Raises ValueError listing the accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise _spec_error(spec, "empty")
    parts = spec.strip().split(":")
    kind = parts[0].lower()
    if kind in SHAPES_VARIANTS:
        if len(parts) == 1:
            return kind, ("",)
        if len(parts) == 2 and parts[1] in ("train", "val"):
            return kind, (parts[1],)
        raise _spec_error(spec, f"the {kind} split must be 'train' or 'val'")
    if kind in ("coco", "voc"):
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise _spec_error(spec, f"'{kind}:' needs exactly two non-empty fields")
        return kind, (parts[1], parts[2])
    raise _spec_error(spec, f"unknown kind {parts[0]!r}")


def _default_voc_val(root: str, split: str) -> tuple[str | None, str]:
    candidates = {"trainval": ("test", "val"), "train": ("val",)}.get(split, ())
    for cand in candidates:
        if split_file(Path(root), cand).is_file():
            return f"voc:{root}:{cand}", ""
    return None, (f"none of {[str(split_file(Path(root), c)) for c in candidates]} exists"
                  if candidates else f"no validation split is known for split {split!r}")


def _default_coco_val(ann: str, img_dir: str) -> tuple[str | None, str]:
    ann_p, img_p = Path(ann), Path(img_dir)
    if "train" not in ann_p.name or "train" not in img_p.name:
        return None, "the annotation file and image folder names do not contain 'train'"
    v_ann = ann_p.with_name(ann_p.name.replace("train", "val"))
    v_img = img_p.with_name(img_p.name.replace("train", "val"))
    if v_ann.is_file() and v_img.is_dir():
        return f"coco:{v_ann}:{v_img}", ""
    return None, f"{v_ann} and/or {v_img} do not exist"


def default_val_spec(train_spec: str) -> str:
    """The validation spec that goes with a training spec.

    shapes -> ``shapes:val``; ``voc:ROOT:trainval`` -> ``voc:ROOT:test`` if that split file
    exists, else ``voc:ROOT:val``; ``voc:ROOT:train`` -> ``voc:ROOT:val``;
    ``coco:.../instances_train2017.json:.../train2017`` -> the ``val2017`` counterparts when both
    exist. Otherwise ValueError asking for ``--val-data``.
    """
    kind, args = parse_spec(train_spec)
    if kind in SHAPES_VARIANTS:
        return f"{kind}:val"
    spec, why = _default_voc_val(*args) if kind == "voc" else _default_coco_val(*args)
    if spec is None:
        raise ValueError(f"cannot derive a validation dataset from {train_spec!r} ({why}); "
                         f"pass one with --val-data")
    return spec


# --------------------------------------------------------------------------------------------
# The generated shapes set on disk (drawn by distill.data.shapes).
# --------------------------------------------------------------------------------------------
#: Bumped whenever distill.data.shapes draws something else for a given seed (part of the folder name).
SHAPES_VERSION = 2

DEFAULT_PARAMS: dict[str, Any] = {
    "num_train": 1500,
    "num_val": 300,
    "seed": 0,
    "size_range": (160, 256),
}

SPLITS = ("train", "val")

#: The embedded dataset's variants, by spec kind: the parameters where each differs from DEFAULT_PARAMS.
#: ``objects: "small"``: most objects below 32^2 px at a 256 px input (distill.data.shapes draws them).
SHAPES_VARIANTS: dict[str, dict[str, Any]] = {
    "shapes": {},
    "shapes-small": {"objects": "small", "size_range": (512, 512)},
}


def resolve_params(variant: str = "shapes", **kwargs: Any) -> dict[str, Any]:
    """Shapes parameters of a variant (:data:`SHAPES_VARIANTS`): its defaults overridden by ``kwargs``
    (``None`` values ignored); unknown keys are an error."""
    if variant not in SHAPES_VARIANTS:
        raise ValueError(f"unknown shapes variant {variant!r}; expected one of {list(SHAPES_VARIANTS)}")
    defaults = {**DEFAULT_PARAMS, **SHAPES_VARIANTS[variant]}
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ValueError(f"unknown shapes parameter(s) {unknown}; expected a subset of "
                         f"{sorted(defaults)}")
    p = dict(defaults)
    p.update({k: v for k, v in kwargs.items() if v is not None})
    p["num_train"], p["num_val"], p["seed"] = int(p["num_train"]), int(p["num_val"]), int(p["seed"])
    sr = tuple(int(v) for v in p["size_range"])
    if len(sr) != 2 or not (32 <= sr[0] <= sr[1]):
        raise ValueError(f"size_range must be (min, max) with 32 <= min <= max, got {p['size_range']!r}")
    p["size_range"] = sr
    if p.get("objects", "small") != "small":
        raise ValueError(f"objects must be 'small' (or left out: COCO's three size buckets), got {p['objects']!r}")
    if p["num_train"] < 0 or p["num_val"] < 0:
        raise ValueError(f"num_train/num_val must be >= 0, got {p['num_train']}/{p['num_val']}")
    return p


def dataset_name(params: dict[str, Any]) -> str:
    """``shapes-v<VERSION>-<10 hex digits of sha1(params)>`` (``shapes-small-v...`` for the small-objects
    variant): the folder of one parameter set."""
    blob = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in sorted(params.items())},
                      sort_keys=True)
    prefix = "shapes-small" if params.get("objects") == "small" else "shapes"
    return f"{prefix}-v{SHAPES_VERSION}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(annotation json, image folder) of ``split`` inside a generated dataset ``root``."""
    if split not in SPLITS:
        raise ValueError(f"shapes split must be one of {list(SPLITS)}, got {split!r}")
    return root / "annotations" / f"instances_{split}.json", root / split


def shapes_root(data_root: str | Path, shapes_kwargs: dict[str, Any] | None = None, variant: str = "shapes") -> Path:
    """The folder of the generated shapes dataset (``variant``: a :data:`SHAPES_VARIANTS` kind) with these
    parameters; ValueError naming the command that generates it when it is not there."""
    params = resolve_params(variant, **(shapes_kwargs or {}))
    root = Path(data_root) / dataset_name(params)
    if not all(split_paths(root, s)[0].is_file() for s in SPLITS):
        size = "" if params["size_range"] == resolve_params(variant)["size_range"] else \
            " --size-range {} {}".format(*params["size_range"])
        size += "" if variant == "shapes" else f" --variant {variant}"
        raise ValueError(f"the shapes dataset {root} is not generated yet; generate it with: python -m "
                         f"distill.data.shapes --out {data_root} --num-train {params['num_train']} "
                         f"--num-val {params['num_val']} --seed {params['seed']}{size}")
    return root


# --------------------------------------------------------------------------------------------
# Eval-mode readers.
# --------------------------------------------------------------------------------------------
class EvalDataset:
    """Image files and their COCO ground truth, eval items only (see the module docstring).

    ``paths[i]``: the file of item ``i``; ``image_ids[i]``: its COCO image id; ``gt``: COCO dict
    (``images``, ``annotations`` with xywh boxes in original pixels, ``categories``).
    """

    def __init__(self, name: str, paths: Sequence[Path], image_ids: Sequence[int], gt: dict[str, Any],
                 class_names: Sequence[str], category_ids: Sequence[int]) -> None:
        if len(paths) != len(image_ids):
            raise ValueError(f"{name}: {len(paths)} image files but {len(image_ids)} image ids")
        self.name = name
        self.paths = [Path(p) for p in paths]
        self.image_ids = [int(i) for i in image_ids]
        self.class_names = list(class_names)
        self.category_ids = [int(c) for c in category_ids]
        self._gt = gt

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        from runtime.preprocess import load_image

        img = load_image(self.paths[i])
        return img, {"image_id": self.image_ids[i], "orig_size": (int(img.shape[0]), int(img.shape[1]))}

    def image_path(self, i: int) -> Path:
        return self.paths[i]

    def coco_gt(self) -> dict[str, Any]:
        return self._gt

    def __repr__(self) -> str:
        return f"EvalDataset({self.name}: {len(self)} images, {len(self.class_names)} classes)"


def read_coco_json(path: Path) -> dict[str, Any]:
    """A COCO instances json: an object with ``images`` and ``categories`` lists (and optionally an
    ``annotations`` list). ValueError naming the file otherwise."""
    if not path.is_file():
        raise ValueError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images', 'annotations' and "
                         f"'categories', got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: expected a list under '{key}', got "
                             f"{type(data.get(key)).__name__}")
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"{path}: expected a list under 'annotations', got "
                         f"{type(data['annotations']).__name__}")
    return data


def coco_folder(ann: str | Path, img_dir: str | Path, name: str | None = None) -> EvalDataset:
    """A COCO instances json and its image folder. Categories sorted by id (label ``L`` <->
    ``category_ids[L - 1]``); annotations get ``iscrowd`` 0 and ``area`` w*h when they lack them."""
    ann_p = Path(ann)
    d = read_coco_json(ann_p)
    try:
        cats = sorted(d["categories"], key=lambda c: int(c["id"]))
        anns = []
        for a in d.get("annotations", []):
            a = dict(a)
            a.setdefault("iscrowd", 0)
            a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
            anns.append(a)
        images = list(d["images"])
        paths, ids = [Path(img_dir) / im["file_name"] for im in images], [int(im["id"]) for im in images]
        names, cids = [str(c.get("name", c["id"])) for c in cats], [int(c["id"]) for c in cats]
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ValueError(f"{ann_p}: malformed COCO entry ({type(e).__name__}: {e}); expected images {{id, "
                         f"file_name}}, annotations {{image_id, category_id, bbox: [x, y, w, h]}}, categories "
                         f"{{id, name}}") from None
    return EvalDataset(name or f"coco:{ann_p.name}", paths, ids,
                       {"images": images, "annotations": anns, "categories": cats}, names, cids)


def records_dataset(name: str, records: Sequence[ImageRecord], class_names: Sequence[str],
                    category_ids: Sequence[int]) -> EvalDataset:
    """Validated records (e.g. :func:`runtime.voc.load_voc`) as an eval dataset."""
    return EvalDataset(name, [r.path for r in records], [r.image_id for r in records],
                       records_coco_gt(records, category_ids, class_names), class_names, category_ids)


def _raise(reason: str, message: str) -> None:
    raise ValueError(message)


def open_eval_dataset(spec: str, split: str = "val", *, data_root: str | Path = "data",
                 shapes_kwargs: dict[str, Any] | None = None) -> EvalDataset:
    """The eval-mode dataset of a spec (module docstring). ``split`` is used by a bare ``shapes``
    spec only; ``data_root`` and ``shapes_kwargs`` (num_train, num_val, seed, size_range) locate the
    generated shapes dataset, which must exist (the error says how to generate it). Bad files and
    annotations are errors (ValueError naming them)."""
    kind, args = parse_spec(spec)
    if kind in SHAPES_VARIANTS:
        sp = args[0] or split
        root = shapes_root(data_root, shapes_kwargs, kind)
        ann, img_dir = split_paths(root, sp)
        ds = coco_folder(ann, img_dir, name=f"{kind}:{sp} ({root.name})")
    elif kind == "coco":
        ann, ds = Path(args[0]), coco_folder(*args)
    else:
        records, names, cids = load_voc(args[0], args[1], _raise)
        ds = records_dataset(f"voc:{Path(args[0]).name}:{args[1]}", records, names, cids)
    if len(ds) == 0:  # a VOC split file without ids is refused by load_voc
        raise ValueError(f"dataset {ds.name} has no image: {ann} lists none; expected at least one")
    return ds
