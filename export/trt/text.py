"""TensorRT engine of the text / non-text classifier graph (``model.onnx`` of :mod:`export.text`): no NMS, no plugin.

    python -m export.trt --onnx exports/text_kd/model.onnx --fp16     # the sidecar's task "text" leads here

The graph's H x W may be dynamic; the engine's optimisation profile fixes them at the sidecar's input size
(what the runtime resizes every image to) and spans ``--batch`` MIN / OPT / MAX on the batch. FP32 and FP16
(builder flag, TensorRT < 11); INT8 is ``model_int8.onnx`` on ONNX Runtime (its uint8 activations are not
TensorRT's symmetric INT8), and TensorRT >= 11's strongly typed FP16 needs an FP16 graph the text export does
not write: both are refused with one line. The engine's sidecar: the graph's, graph "engine", the precision
built, the ONNX file's sha256, the GPU and TensorRT version, and ``tf32`` (an FP32 engine clears TensorRT's
default ``BuilderFlag.TF32`` unless ``--tf32``: see :mod:`export.trt.builder`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from export.trt.settings import BuildSettings, engine_meta, tf32_request, uses_int8

Log = Callable[[str], None]


def check_text_build(s: BuildSettings, strongly_typed: bool | None = None) -> None:
    """ValueError (one line) for a precision this path does not build."""
    if uses_int8(s.precision):
        raise ValueError(f"{s.onnx.name}: a text classifier engine is built in fp32 or fp16; its INT8 graph "
                         f"model_int8.onnx runs on ONNX Runtime (python -m export.onnx --int8)")
    if strongly_typed and s.precision != "fp32":
        raise ValueError(f"{s.onnx.name}: TensorRT >= 11 builds {s.precision} only from a graph in that precision, "
                         f"which the text export does not write; build fp32 (no precision flag)")


def _profile(b: Any, batch: tuple[int, int, int], size_hw: tuple[int, int]) -> None:
    """One optimisation profile: batch MIN / OPT / MAX, H x W fixed at ``size_hw``."""
    h, w = size_hw
    prof = b.builder.create_optimization_profile()
    name = b.network.get_input(0).name
    prof.set_shape(name, (batch[0], 3, h, w), (batch[1], 3, h, w), (batch[2], 3, h, w))
    b.config.add_optimization_profile(prof)


def build_text_engine(s: BuildSettings, log: Log = print) -> dict[str, Any]:
    """Build ``s.engine`` from the text graph ``s.onnx``; returns the build report. Raises BackendUnavailable
    (no TensorRT / GPU), ValueError (precision), BuildError (parse / build failed)."""
    from export.trt.builder import EngineBuilder, check_environment
    from export.trt.dispatch import choose_build_path
    from export.trt.env import fast_precisions
    from runtime.atomic import write_bytes_atomic
    from runtime.metadata import read_sidecar, sha256_file, write_sidecar
    meta = read_sidecar(s.onnx)
    if meta.input_format != "float_nchw":
        raise ValueError(f"{s.onnx.name} takes {meta.input_format} input (--uint8-input); build the engine from its "
                         f"float-input source {meta.extra.get('uint8_source', 'model.onnx')}")
    check_text_build(s)
    trt, _cuda, gpu, cc = check_environment()
    path = choose_build_path(str(trt.__version__), s.typing)
    check_text_build(s, path.strongly_typed)
    log(f"export.trt: building {s.engine} ({s.precision}, text classifier {meta.model_name}, input "
        f"{meta.input_size[0]}x{meta.input_size[1]}, batch {s.batch}, TensorRT {trt.__version__}, {gpu})")
    b = EngineBuilder(trt, path=path, verbose=s.verbose, workspace_mb=s.workspace_mb, log=log)
    b.parse(s.onnx)
    _profile(b, s.batch, tuple(meta.input_size))
    if not path.strongly_typed:
        fast_fp16 = fast_precisions(cc)[0] if cc is not None else bool(getattr(b.builder, "platform_has_fast_fp16",
                                                                               False))
        b.set_precision(s.precision, fast_fp16=fast_fp16, fast_int8=False)
    tf32 = b.set_tf32(tf32_request(s.precision, s.tf32))
    b.load_timing_cache(s.timing_cache)
    t0 = time.perf_counter()
    plan = b.build()
    seconds = time.perf_counter() - t0
    b.save_timing_cache(s.timing_cache)
    write_bytes_atomic(s.engine, plan)
    sha = sha256_file(s.onnx)
    key = {"onnx_sha256": sha, "precision": s.precision, "batch": list(s.batch), "tensorrt": str(trt.__version__),
           "gpu": gpu, "tf32": tf32}
    extra = {"tf32": tf32, "source_onnx": str(s.onnx), "gpu": gpu, "compute_capability": list(cc) if cc else None,
             "build_path": path.sidecar(), "batch_profile": {"min": s.batch[0], "opt": s.batch[1], "max": s.batch[2]},
             "build_seconds": round(seconds, 1)}
    sidecar = write_sidecar(s.engine, engine_meta(meta, precision=s.precision, onnx_sha256=sha, key=key, extra=extra))
    log(f"export.trt: wrote {s.engine} ({len(plan) / 2**20:.1f} MB, {seconds:.1f} s) and {sidecar}")
    return {"status": "built", "task": "text", "onnx": str(s.onnx), "engine": str(s.engine), "precision": s.precision,
            "tf32": tf32, "sidecar": str(sidecar), "seconds": seconds, "tensorrt": str(trt.__version__), "gpu": gpu}
