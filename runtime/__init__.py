"""Deployable core: sidecar metadata, preprocessing, NMS reference, metrics and the backends.

``from runtime import load_detector`` is lazy: importing ``runtime`` imports neither torch nor
onnxruntime nor tensorrt; each backend imports its library when a model is opened.
"""

from typing import Any

__all__ = ["load_detector", "Detector"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from runtime import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
