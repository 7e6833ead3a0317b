"""The plugin graph an engine is parsed from, for its build path and precision.

The builder-flags path (TensorRT 8.6 - 10.x) parses the FP32 ``model_trt.onnx`` for every
precision. The strongly typed path parses the graph that states the precision, beside the FP32 one:
``model_trt_fp16.onnx`` (:func:`export.fp16.convert_fp16`) or ``model_trt_int8.onnx``
(:func:`export.qdq_trt.quantize_trt_int8`). An existing variant is reused when its sidecar names
the current ``model_trt.onnx`` (sha256) -- and, for INT8, the asked-for calibration images -- else
it is written again, exactly as ``python -m export.onnx --fp16 / --int8`` writes it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.trt.dispatch import BuildPath
from export.trt.settings import BuildSettings, read_onnx_meta

Log = Callable[[str], None]


@dataclass
class EngineSource:
    """The ONNX an engine is parsed from: path, sidecar, sha256, and how it came to be."""

    onnx: Path
    meta: Any
    sha256: str
    how: str


def _given(s: BuildSettings, path: BuildPath, meta: Any) -> EngineSource | None:
    """The ``--onnx`` file itself when it is what the path parses for ``s.precision``, else None."""
    from runtime.metadata import sha256_file
    if not path.strongly_typed:
        if meta.precision != "fp32":
            raise ValueError(f"{s.onnx.name} is a {meta.precision} graph, made for the strongly typed path; TensorRT "
                             f"{path.tensorrt} builds {s.precision} from the FP32 model_trt.onnx with builder flags "
                             f"(or pass --typing strongly-typed on TensorRT 10.12+)")
        return EngineSource(s.onnx, meta, sha256_file(s.onnx), "given")
    path.graph_for(s.precision)  # ValueError for a precision this path cannot build
    if meta.precision == s.precision:
        return EngineSource(s.onnx, meta, sha256_file(s.onnx), "given")
    if meta.precision != "fp32":
        raise ValueError(f"{s.onnx.name} is a {meta.precision} graph; --{s.precision} starts from model_trt.onnx")
    return None


def _fp16_reference_images(s: BuildSettings, meta: Any, log: Log) -> list[Any]:
    from export import data as xdata
    from export.fp16 import REFERENCE_IMAGES
    from export.trt.calibrator import calibration_images
    try:
        images, where = calibration_images(dataclasses.replace(s, calib_count=REFERENCE_IMAGES), meta)
    except ValueError as e:
        log(f"  FP16 data-range rule on synthetic images ({e})")
        return xdata.synthetic_images(8, seed=0)
    log(f"  FP16 data-range rule on {where}")
    return images


def variant_sidecar(target: Path) -> tuple[Any, str]:
    """(sidecar, "") of a graph written beside model_trt.onnx, or (None, why it is missing or unreadable)."""
    from runtime.metadata import read_sidecar
    if not target.is_file():
        return None, f"no {target.name} yet"
    try:
        return read_sidecar(target), ""
    except ValueError as e:
        return None, f"{target.name}: {e}"


def _variant(s: BuildSettings, sha: str, target: Path) -> tuple[bool, str]:
    """(True, why) when ``target`` can be reused for ``s``."""
    from export.qdq_trt import qdq_graph_fresh
    if s.force:
        return False, "--force"
    if s.precision == "int8":
        calib = None
        if s.calib_images is not None:
            from export import data as xdata
            calib = xdata.calibration_images(s.calib_count, folder=s.calib_images)[1]
        return qdq_graph_fresh(target, sha, calib)
    old, why = variant_sidecar(target)
    if old is None:
        return False, why
    if old.precision != "fp16" or old.extra.get("source_sha256") != sha:
        return False, f"{target.name} was converted from another model_trt.onnx (sha256 differs)"
    return True, f"{target.name} matches model_trt.onnx (sha256)"


def prepare_source(s: BuildSettings, path: BuildPath, log: Log = print) -> EngineSource:
    """The ONNX the engine of ``s`` is parsed from on ``path`` (written beside ``s.onnx`` if needed).
    ValueError for a graph / precision / path that do not go together, or without calibration
    images for a new Q/DQ graph."""
    from runtime.metadata import read_sidecar, sha256_file
    meta = read_onnx_meta(s.onnx)
    given = _given(s, path, meta)
    if given is not None:
        return given
    sha = sha256_file(s.onnx)
    target = s.onnx.with_name(path.graph_for(s.precision))
    fresh, why = _variant(s, sha, target)
    if fresh:
        log(f"export.trt: {why}: reusing it")
        return EngineSource(target, read_sidecar(target), sha256_file(target), f"reused ({why})")
    log(f"export.trt: writing {target.name} for the strongly typed build ({why})")
    if s.precision == "fp16":
        from export.fp16 import convert_fp16
        written, _ = convert_fp16(s.onnx, _fp16_reference_images(s, meta, log), out=target)
    else:
        from export.qdq_trt import quantize_trt_int8
        from export.trt.calibrator import calibration_images
        images, where = calibration_images(s, meta)
        log(f"  calibrating the Q/DQ graph on {where}")
        written, _ = quantize_trt_int8(s.onnx, images, calibration_source=where, out=target)
    return EngineSource(written.onnx, written.meta, sha256_file(written.onnx), f"written ({why})")
