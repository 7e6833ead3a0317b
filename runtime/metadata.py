"""The sidecar schema: everything a runtime needs to run an exported model, nothing guessed.

Every exported artefact (``model.onnx``, ``model.engine``) has a ``model.json`` sidecar next to
it holding a :class:`ModelMeta`. Export writes it, every runtime backend reads it.

Conventions recorded here (see DESIGN.md):

* labels: contiguous ``L`` in ``1..C``; ``L`` maps to the dataset id ``category_ids[L - 1]``.
* pixels: the network input is ``(pixel / 255 - mean) / std`` in RGB, NCHW, float32.
* ``input_size`` is ``(H, W)``; ``resize_mode="stretch"`` warps the whole image to ``H x W``,
  ``"letterbox"`` fits it with its aspect ratio kept and pads the rest (runtime.preprocess).

Every ``.onnx`` of an export also carries the sidecar in its ``metadata_props`` under
:data:`META_KEY`: :func:`read_model_meta` falls back on that copy (with a warning) when the
``.json`` is missing.

This module imports only the standard library and :mod:`runtime.atomic`, :mod:`runtime.errors`,
:mod:`runtime.onnx_props` (no numpy, no torch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.atomic import write_json_atomic
from runtime.errors import check_choice
from runtime.onnx_props import read_metadata_props

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
LAYOUTS = ("NCHW",)
COLORS = ("RGB",)
RESIZE_MODES = ("stretch", "letterbox")
GRAPHS = ("raw", "nms", "trt", "int8", "engine", "checkpoint")
PRECISIONS = ("fp32", "fp16", "int8", "best")
META_KEY = "fdet_meta"  # the sidecar's copy in an ONNX file's metadata_props
# What the graph input ``images`` takes: "float_nchw" float32 [B, 3, H, W] already normalised by the
# host; "uint8_nhwc" uint8 [B, H, W, 3] RGB pixels after the resize, the graph itself casts,
# normalises with mean / std and transposes to NCHW.
INPUT_FORMATS = ("float_nchw", "uint8_nhwc")
# What the model does: "detect" (boxes, the graph contract of runtime.outputs) or "text" (the text / non-text
# image classifier: text_prob [B] and region_prob_<g> [B, g, g], runtime.classifier).
TASKS = ("detect", "text")
# Sidecar keys added after format version 1 was frozen: optional when reading (older sidecars lack them).
OPTIONAL_KEYS = ("input_format", "task")

def _check_threshold(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be an int > 0, got {value!r}")


def _check_keys(where: str, given: dict[str, Any], required: set[str], allowed: set[str]) -> None:
    missing = sorted(required - set(given))
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected only {sorted(allowed)}")


@dataclass
class NMSConfig:
    """Postprocessing settings, with the semantics of TensorRT's EfficientNMS_TRT plugin.

    ``score_threshold``: keep (box, class) pairs with score >= this (see runtime.nms_reference).
    ``iou_threshold``: a box is suppressed when IoU >= this with a kept box of its class.
    ``max_detections``: K, the fixed number of output rows per image.
    ``pre_nms_top_k``: candidates kept per image, by score, before NMS.
    ``class_agnostic``: NMS across classes instead of per class.
    """

    score_threshold: float = 0.01
    iou_threshold: float = 0.45
    max_detections: int = 100
    pre_nms_top_k: int = 4096
    class_agnostic: bool = False

    def validate(self) -> "NMSConfig":
        """Raise ValueError naming the first bad field; return self so calls can be chained."""
        _check_threshold("nms.score_threshold", self.score_threshold)
        _check_threshold("nms.iou_threshold", self.iou_threshold)
        _check_positive_int("nms.max_detections", self.max_detections)
        _check_positive_int("nms.pre_nms_top_k", self.pre_nms_top_k)
        if not isinstance(self.class_agnostic, bool):
            raise ValueError(f"nms.class_agnostic must be a bool, got {self.class_agnostic!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NMSConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict):
            raise ValueError(f"nms must be a dict, got {type(d).__name__}")
        _check_keys("nms", d, required=names, allowed=names)
        return cls(**d).validate()


@dataclass
class ModelMeta:
    """Everything needed to feed a model and read its outputs; serialised as the sidecar JSON.

    Required: ``model_name``, ``class_names`` (C names, label order), ``category_ids`` (C dataset
    ids, same order), ``input_size`` ``(H, W)``, ``mean``/``std`` (3 floats each, RGB, on the
    0..1 pixel scale). The rest has defaults; ``precision`` is the precision actually built.
    Validated on construction; call :meth:`validate` again after mutating fields.
    """

    model_name: str
    class_names: list[str]
    category_ids: list[int]
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    format_version: int = FORMAT_VERSION
    layout: str = "NCHW"
    color: str = "RGB"
    resize_mode: str = "stretch"
    nms: NMSConfig = field(default_factory=NMSConfig)
    graph: str = "raw"
    precision: str = "fp32"
    onnx_sha256: str | None = None
    nms_plugin: dict[str, str] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    input_format: str = "float_nchw"
    task: str = "detect"

    def __post_init__(self) -> None:
        # Normalise JSON lists back to the declared tuple/list types.
        self.class_names = list(self.class_names)
        self.category_ids = list(self.category_ids)
        self.input_size = tuple(self.input_size)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if isinstance(self.nms, dict):
            self.nms = NMSConfig.from_dict(self.nms)
        self.validate()

    @property
    def num_classes(self) -> int:
        """C, the number of object classes (background excluded)."""
        return len(self.class_names)

    def validate(self) -> "ModelMeta":
        """Raise ValueError naming the first bad field; return self."""
        if self.format_version not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(
                f"format_version {self.format_version!r} is not supported; "
                f"expected one of {list(SUPPORTED_FORMAT_VERSIONS)}"
            )
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"model_name must be a non-empty str, got {self.model_name!r}")
        if not self.class_names or not all(isinstance(n, str) for n in self.class_names):
            raise ValueError(f"class_names must be a non-empty list of str, got {self.class_names!r}")
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(
                f"category_ids has {len(self.category_ids)} entries but class_names has "
                f"{len(self.class_names)}; they must match one to one"
            )
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in self.category_ids):
            raise ValueError(f"category_ids must be ints, got {self.category_ids!r}")
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category_ids must be unique, got {self.category_ids!r}")
        if len(self.input_size) != 2:
            raise ValueError(f"input_size must be (H, W), got {self.input_size!r}")
        for name, v in zip(("input_size[0] (H)", "input_size[1] (W)"), self.input_size):
            _check_positive_int(name, v)
        for name in ("mean", "std"):
            vals = getattr(self, name)
            if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
                raise ValueError(f"{name} must be 3 finite floats (RGB, 0..1 scale), got {vals!r}")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std must be > 0, got {self.std!r}")
        check_choice("layout", self.layout, LAYOUTS)
        check_choice("color", self.color, COLORS)
        check_choice("resize_mode", self.resize_mode, RESIZE_MODES)
        check_choice("graph", self.graph, GRAPHS)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("input_format", self.input_format, INPUT_FORMATS)
        check_choice("task", self.task, TASKS)
        if not isinstance(self.nms, NMSConfig):
            raise ValueError(f"nms must be an NMSConfig, got {type(self.nms).__name__}")
        self.nms.validate()
        if self.onnx_sha256 is not None and (
            not isinstance(self.onnx_sha256, str) or len(self.onnx_sha256) != 64
        ):
            raise ValueError(f"onnx_sha256 must be None or 64 hex chars, got {self.onnx_sha256!r}")
        if self.nms_plugin is not None and not isinstance(self.nms_plugin, dict):
            raise ValueError(f"nms_plugin must be None or a dict, got {self.nms_plugin!r}")
        for name in ("versions", "extra"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {getattr(self, name)!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists, ``nms`` a nested dict)."""
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMeta":
        """Inverse of :meth:`to_dict`; rejects unknown format versions, missing or unknown keys."""
        if not isinstance(d, dict):
            raise ValueError(f"sidecar must be a JSON object, got {type(d).__name__}")
        if "format_version" not in d:
            raise ValueError("sidecar: missing key 'format_version'")
        if d["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(
                f"sidecar format_version {d['format_version']!r} is not supported; "
                f"expected one of {list(SUPPORTED_FORMAT_VERSIONS)}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        _check_keys("sidecar", d, required=names - set(OPTIONAL_KEYS), allowed=names)
        return cls(**d)


def graph_label(meta: ModelMeta) -> str:
    """The graph part of a detector's name: ``raw``, ``nms``, ``int8`` ... and ``int8-nms`` for the INT8 model
    with NMS fused (graph "nms", precision "int8"), so it is not taken for the FP32 NMS graph."""
    if meta.precision == "int8" and meta.graph != "int8":
        return f"int8-{meta.graph}"
    return meta.graph


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """``x.onnx`` -> ``x.json``, ``x.engine`` -> ``x.json`` (same folder, same stem)."""
    p = Path(model_path)
    if p.suffix == ".json":
        raise ValueError(f"expected a model file (.onnx, .engine, ...), got the sidecar itself: {p}")
    return p.with_suffix(".json")


def write_sidecar(model_path: str | os.PathLike[str], meta: ModelMeta) -> Path:
    """Validate ``meta`` and write it next to ``model_path``; return the sidecar path."""
    if not isinstance(meta, ModelMeta):
        raise ValueError(f"meta must be a ModelMeta, got {type(meta).__name__}")
    return write_json_atomic(sidecar_path(model_path), meta.validate().to_dict())


def read_sidecar(model_path: str | os.PathLike[str]) -> ModelMeta:
    """Read the sidecar of ``model_path`` (or a ``.json`` sidecar path given directly)."""
    p = Path(model_path)
    path = p if p.suffix == ".json" else sidecar_path(p)
    if not path.is_file():
        raise ValueError(f"sidecar not found: {path} (expected next to {p.name})")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"sidecar {path} is not valid JSON: {e}") from e
    try:
        return ModelMeta.from_dict(d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"sidecar {path} is malformed: {e}") from e


def read_onnx_mirror(onnx_path: str | os.PathLike[str]) -> ModelMeta:
    """The sidecar copy in an ONNX file's ``metadata_props`` (:data:`META_KEY`); its ``onnx_sha256``
    is None (a file cannot hold its own hash). ValueError when the file has no valid copy."""
    p = Path(onnx_path)
    text = read_metadata_props(p).get(META_KEY)
    if text is None:
        raise ValueError(f"{p.name} carries no copy of its sidecar (metadata_props key {META_KEY!r})")
    try:
        return ModelMeta.from_dict(json.loads(text))
    except (ValueError, TypeError) as e:
        raise ValueError(f"the sidecar copy in {p.name}'s metadata_props is malformed: {e}") from None


def read_model_meta(model_path: str | os.PathLike[str]) -> ModelMeta:
    """The metadata of a model file: its sidecar ``<stem>.json``; for an ``.onnx`` without one, the
    copy in its ``metadata_props``, with a warning saying so. ValueError naming what is missing."""
    p = Path(model_path)
    if p.suffix.lower() != ".onnx" or sidecar_path(p).is_file():
        return read_sidecar(p)
    try:
        meta = read_onnx_mirror(p)
    except ValueError as e:
        raise ValueError(f"sidecar not found: {sidecar_path(p)} (expected next to {p.name}), and {e}") from None
    warnings.warn(f"{p.name}: no sidecar {sidecar_path(p).name} beside it; using the copy in the ONNX "
                  f"metadata_props (write the sidecar back with python -m export.onnx)", UserWarning, stacklevel=2)
    return meta


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


# Key -> distribution names to try, first found wins. Reading distribution metadata never imports
# the package (importing torch would take seconds and is forbidden on deployment hosts).
_VERSIONED = {
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt-cu12-bindings"),
}


def library_versions() -> dict[str, str]:
    """Installed versions of python, numpy, onnx, onnxruntime, torch, torchvision, tensorrt.

    Libraries that are not installed are left out. Uses importlib.metadata only.
    """
    out = {"python": platform.python_version()}
    for key, dists in _VERSIONED.items():
        for dist in dists:
            try:
                out[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out
