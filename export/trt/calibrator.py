"""INT8 calibration for TensorRT: fixed-size batches through runtime.preprocess, a cache file tied
to the ONNX it was made for, and an ``IInt8EntropyCalibrator2`` feeding one device buffer.

The cache ``calib.cache`` is used only next to ``calib.cache.json`` naming the same ONNX sha256,
so a calibration of an older export is never applied to a newer one.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.trt.settings import BuildSettings


class CalibrationBatches:
    """Fixed-size float32 [b, 3, H, W] batches through runtime.preprocess for the TensorRT
    calibrator (its buffer has one shape, so a last partial batch is dropped; with fewer images
    than ``batch_size`` the batch shrinks to the number of images)."""

    def __init__(self, images: Sequence[Any], meta: Any, batch_size: int = 8):
        if not images:
            raise ValueError("calibration needs at least one image")
        self.images, self.meta = list(images), meta
        self.batch_size = min(int(batch_size), len(self.images))
        h, w = meta.input_size
        self.shape = (self.batch_size, 3, int(h), int(w))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __iter__(self) -> Iterator[np.ndarray]:
        from runtime.preprocess import preprocess_batch
        m = self.meta
        for i in range(len(self)):
            chunk = self.images[i * self.batch_size:(i + 1) * self.batch_size]
            yield np.ascontiguousarray(preprocess_batch(chunk, m.input_size, m.mean, m.std, m.resize_mode)[0])


def _cache_key_path(cache: Path) -> Path:
    return Path(str(cache) + ".json")


def calibration_cache_valid(cache: Path | None, onnx_sha256: str) -> tuple[bool, str]:
    """A calibration cache is used only next to ``<cache>.json`` naming the same ONNX sha256."""
    if cache is None or not Path(cache).is_file():
        return False, "no calibration cache"
    key = _cache_key_path(cache)
    try:
        info = json.loads(key.read_text())
    except (OSError, ValueError):
        return False, f"{key.name} missing: the cache's ONNX is unknown, recalibrating"
    if info.get("onnx_sha256") != onnx_sha256:
        return False, "calibration cache was made for another ONNX file (sha256 differs), recalibrating"
    return True, "calibration cache matches the ONNX"


def write_calibration_cache(cache: Path, data: bytes, onnx_sha256: str) -> None:
    """Write the cache bytes, then ``<cache>.json`` naming the ONNX they belong to (both atomic)."""
    from runtime.atomic import write_bytes_atomic, write_json_atomic
    write_bytes_atomic(cache, bytes(data))
    write_json_atomic(_cache_key_path(cache), {"onnx_sha256": onnx_sha256, "bytes": len(data)})


def calibration_images(s: BuildSettings, onnx_meta: Any) -> tuple[list[Any], str]:
    """Images for INT8 calibration: --calib-images, else the training images of the checkpoint
    the ONNX was exported from (when on disk). ValueError if neither."""
    from export import data as xdata
    if s.calib_images is not None:
        return xdata.calibration_images(s.calib_count, folder=s.calib_images)
    ckpt_path = onnx_meta.extra.get("checkpoint")
    why = "the ONNX sidecar names no checkpoint"
    if ckpt_path and Path(ckpt_path).is_file():
        from distill.checkpoint import load_checkpoint
        images, why = xdata.calibration_images(s.calib_count, cfg=load_checkpoint(ckpt_path).get("config") or {})
        if images is not None:
            return images, why
    elif ckpt_path:
        why = f"checkpoint {ckpt_path} not found"
    raise ValueError(f"--int8 needs --calib-images DIR, a valid --calib-cache, or a checkpoint whose dataset is "
                     f"available ({why})")


def make_entropy_calibrator(trt: Any, cuda: Any, batches: CalibrationBatches | None, cache: Path,
                            onnx_sha256: str, log: Callable[[str], None] = print) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` through one device buffer; reads and
    writes ``cache`` (only if it belongs to this ONNX, see :func:`calibration_cache_valid`).
    ``batches`` None: calibrate from the cache alone (CUDA is then never touched)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches, self._it, self._dev, self.seen = batches, None, None, 0

        def get_batch_size(self) -> int:
            return batches.batch_size if batches is not None else 1

        def get_batch(self, names):  # noqa: ARG002 - one input
            if self.batches is None:
                return None
            if self._it is None:
                self._it = iter(self.batches)
                self._dev = cuda.malloc(self.batches.nbytes)
            batch = next(self._it, None)
            if batch is None:
                return None
            cuda.htod(self._dev, batch)
            self.seen += len(batch)
            log(f"  calibration batch {self.seen // len(batch)}/{len(self.batches)}")
            return [cuda.pointer(self._dev)]

        def read_calibration_cache(self):
            ok, why = calibration_cache_valid(cache, onnx_sha256)
            log(f"  {why}")
            return Path(cache).read_bytes() if ok else None

        def write_calibration_cache(self, data):
            write_calibration_cache(Path(cache), bytes(data), onnx_sha256)
            log(f"  wrote calibration cache {cache}")

        def free(self):
            if self._dev is not None:
                cuda.free(self._dev)
                self._dev = None

    return EntropyCalibrator()
