"""Backends of :class:`runtime.detector.Detector`, one file each, imported on use by
:func:`runtime.load.load_detector` (the suffix table lives in :mod:`runtime.load`):

* ``torch_backend``          PyTorch checkpoint (CPU / CUDA, optional FP16); imports distill
* ``ort_backend``            ONNX Runtime (CPU; CUDA and TensorRT execution providers)
* ``trt_reference_backend``  CPU reference of the TensorRT plugin graph (no GPU needed)
* ``trt_backend``            native TensorRT engine (cuda-python or pycuda buffers, CUDA graphs)
* ``openvino_backend``       OpenVINO CPU plugin: the same ONNX graphs, or an IR of ``export.openvino``

Each backend module defines ``open_model(path, *, device, provider, fp16, **kwargs) -> Detector``.
"""

from __future__ import annotations

import os

__all__ = ["cpu_cores"]


def cpu_cores() -> int:
    """CPU cores this process may run on (affinity-aware): the default thread count of the CPU backends."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
