"""``load_detector``: open a model file with the backend its suffix calls for.

::

    det = load_detector("exports/kd/model_nms.onnx")           # ONNX Runtime, CPU
    det = load_detector("runs/kd/best.pt", device="cuda")       # PyTorch
    det = load_detector("exports/kd/model_fp16.engine")         # TensorRT

Backends are rows of one table (:func:`register_backend`): file suffixes, the ``provider=``
values they take, and the module that opens them. A backend module is imported when a file of
its kind is opened, never before, so importing this module imports neither torch nor
onnxruntime nor tensorrt. Each backend module defines
``open_model(path, *, device, provider, fp16, **kwargs) -> Detector``; backends import
:mod:`runtime.detector` (the interface) and never this module.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.classifier import refuse_text_export
from runtime.detector import Detector
from runtime.errors import check_choice
from runtime.integrity import check_file_hash

__all__ = ["BackendEntry", "backend_for", "load_detector", "providers", "register_backend", "registered_backends"]


@dataclass(frozen=True)
class BackendEntry:
    """One row of the backend table.

    ``name``: short name ("onnxruntime"); ``what``: the file kind in words, for messages
    ("an ONNX graph"); ``module``: dotted module defining ``open_model``; ``suffixes``: lower-case
    file suffixes with the dot; ``providers``: the ``provider=`` values it accepts besides None;
    ``folders``: it also opens a folder (a training run) and reports missing files itself.
    """

    name: str
    what: str
    module: str
    suffixes: tuple[str, ...]
    providers: tuple[str, ...] = ()
    folders: bool = False

    def open(self, path: Path, **kwargs: Any) -> Detector:
        """Import the backend module and call its ``open_model(path, **kwargs)``."""
        return importlib.import_module(self.module).open_model(path, **kwargs)


_TABLE: list[BackendEntry] = []


def register_backend(entry: BackendEntry) -> BackendEntry:
    """Add a backend row; ValueError if one of its suffixes (or the folder role) is taken."""
    for other in _TABLE:
        taken = sorted(set(entry.suffixes) & set(other.suffixes))
        if taken or (entry.folders and other.folders):
            what = f"suffixes {taken}" if taken else "folders"
            raise ValueError(f"backend {entry.name!r}: {what} already opened by backend {other.name!r}")
    _TABLE.append(entry)
    return entry


def registered_backends() -> tuple[BackendEntry, ...]:
    """The backend table, in registration order."""
    return tuple(_TABLE)


def providers() -> tuple[str, ...]:
    """Every ``provider=`` value some backend accepts (besides None), in table order."""
    return tuple(dict.fromkeys(p for e in _TABLE for p in e.providers))


def backend_for(path: str | os.PathLike[str]) -> BackendEntry | None:
    """The row that opens ``path`` (a folder: the row with ``folders``; a file: by suffix), or None."""
    p = Path(path)
    for entry in _TABLE:
        if (entry.folders and p.is_dir()) or p.suffix.lower() in entry.suffixes:
            return entry
    return None


def _known_kinds() -> str:
    return "; ".join(f"{', '.join(e.suffixes)}{' or a run folder' if e.folders else ''} ({e.what})" for e in _TABLE)


def load_detector(
    path: str | os.PathLike[str],
    device: str = "cpu",
    provider: str | None = None,
    fp16: bool = False,
    accept_modified: bool = False,
    **kwargs: Any,
) -> Detector:
    """Open a model file with the backend its kind calls for.

    * ``.pt`` / ``.pth`` checkpoint, or a run folder: PyTorch (``device`` "cpu" / "cuda[:N]",
      ``fp16`` on CUDA only). Imports torch and distill here, not before.
    * ``.onnx`` with graph ``raw`` / ``nms`` / ``int8`` in its sidecar: ONNX Runtime.
      ``provider``: None or "cpu" (default), "cuda", "tensorrt" (execution providers; must be
      installed). ``fp16`` is not an ONNX Runtime option: the precision is the graph's.
    * ``.onnx`` with graph ``trt`` (EfficientNMS_TRT plugin node): ONNX Runtime cannot run the
      plugin; ``provider="reference"`` runs the CPU reference (ORT up to the plugin inputs +
      numpy EfficientNMS), ``provider="tensorrt"`` the ORT TensorRT execution provider.
    * ``.engine`` / ``.plan`` / ``.trt``: TensorRT (needs the ``tensorrt`` package and a CUDA device).
    * ``.xml`` (an IR of ``python -m export.openvino``), or ``.onnx`` with ``provider="openvino"``:
      OpenVINO's CPU plugin (needs the ``openvino`` package; ``threads=``, ``hint="throughput"``).

    An ``.onnx`` is first compared with the sha256 its sidecar records
    (:func:`runtime.integrity.check_file_hash`): a file changed after export raises ValueError,
    unless ``accept_modified`` (then a warning).

    Extra keyword arguments go to the backend (e.g. ``threads=`` for ONNX Runtime,
    ``cuda_graph=True`` for TensorRT). Raises ValueError for bad arguments and
    :class:`~runtime.errors.BackendUnavailable` (one line) when the needed runtime is not
    available on this machine.
    """
    p = Path(path)
    if provider is not None:
        check_choice("provider", provider, providers())
    entry = backend_for(p)
    if (entry is None or not entry.folders) and not p.is_file():
        raise ValueError(f"model file not found: {p}")
    if entry is None:
        raise ValueError(f"cannot tell the backend of {p}: expected {_known_kinds()}")
    if provider is not None and provider not in entry.providers:
        raise ValueError(f"provider={provider!r} does not apply to {entry.what} ({p.name}); it takes "
                         f"provider= {list(entry.providers)} or None")
    refuse_text_export(p)
    check_file_hash(p, accept_modified=accept_modified)
    return entry.open(p, device=device, provider=provider, fp16=fp16, **kwargs)


register_backend(BackendEntry("pytorch", "a PyTorch checkpoint", "runtime.backends.torch_backend",
                              (".pt", ".pth"), providers=("cpu", "cuda"), folders=True))
register_backend(BackendEntry("onnxruntime", "an ONNX graph", "runtime.backends.ort_backend",
                              (".onnx",), providers=("cpu", "cuda", "tensorrt", "reference", "openvino")))
register_backend(BackendEntry("tensorrt", "a TensorRT engine", "runtime.backends.trt_backend",
                              (".engine", ".plan", ".trt"), providers=("tensorrt",)))
register_backend(BackendEntry("openvino", "an OpenVINO IR", "runtime.backends.openvino_backend",
                              (".xml",), providers=("openvino",)))
