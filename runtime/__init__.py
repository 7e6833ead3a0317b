"""Deployable core: sidecar metadata, preprocessing, NMS reference, metrics and the backends.

``from runtime import load_detector`` is lazy: importing ``runtime`` imports neither torch nor
onnxruntime nor tensorrt; each backend imports its library when a model is opened.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it, imported on first access.
_LAZY = {
    "load_detector": "runtime.load",
    "load_classifier": "runtime.classifier",
    "Detector": "runtime.detector",
    "BackendUnavailable": "runtime.errors",
    "Results": "runtime.results",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
