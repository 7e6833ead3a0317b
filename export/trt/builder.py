"""The TensorRT engine build: :class:`EngineBuilder` (every choice explicit, TensorRT's Python
samples style) and :func:`build_engine`, which builds or reuses the engine a
:class:`~export.trt.settings.BuildSettings` describes and checks it against the CPU reference.

Two build paths, chosen from the TensorRT version in :mod:`export.trt.dispatch`:

* strongly typed (TensorRT >= 11; 10.12+ on request): the parsed ONNX states every type --
  ``model_trt_fp16.onnx`` / ``model_trt_int8.onnx`` (:mod:`export.trt.sources` writes them when
  missing) -- no precision flag is set, and the parsed network must really hold FP16 tensors /
  Q/DQ layers for an FP16 / INT8 engine;
* builder flags (TensorRT 8.6 - 10.x, Jetson): ``model_trt.onnx`` with ``BuilderFlag.FP16`` /
  ``INT8`` and the entropy calibrator, refused when the GPU lacks the fast path.

Two NMS routes, chosen before anything is parsed in :mod:`export.trt.nms`: the EfficientNMS_TRT
plugin (the graphs above) or TensorRT's built-in INMSLayer (the ONNX-NMS graph ``model_nms.onnx``,
checked against ONNX Runtime running that graph, and on CPU against the plugin's reference).

TF32: TensorRT runs FP32 layers as TF32 on Ampere and newer GPUs unless ``BuilderFlag.TF32`` is cleared
(the flag exists in TensorRT 10 and 11, on both paths). An FP32 engine clears it (FP32 math, as its name
says) unless ``--tf32``; FP16 / INT8 engines keep TensorRT's default. The sidecar's ``tf32`` records it.

Missing TensorRT, CUDA binding or GPU raises :class:`runtime.errors.BackendUnavailable`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export.trt.calibrator import (CalibrationBatches, calibration_cache_valid, calibration_images,
                                   make_entropy_calibrator)
from export.trt.dispatch import BuildPath, check_typed_network, choose_build_path, network_types
from export.trt.nms import builtin_source, detect_nms_route
from export.trt.settings import (BuildSettings, build_key, engine_is_fresh, engine_meta, read_onnx_meta, tf32_request,
                                 uses_int8)
from export.trt.sources import EngineSource, prepare_source
from runtime.errors import BackendUnavailable

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """The ONNX did not parse, TensorRT could not build it, or the engine failed its check: exit 1."""


class EngineBuilder:
    """TensorRT engine builder with every choice explicit (TensorRT's Python samples style).

    ``trt``: the tensorrt module; ``path``: the build path (default: the one of ``trt.__version__``);
    ``log``: where messages go (every parser error included).
    """

    def __init__(self, trt: Any, *, path: BuildPath | None = None, verbose: bool = False, workspace_mb: int = 1024,
                 log: Log = print):
        self.trt, self.log = trt, log
        self.path = path or choose_build_path(str(trt.__version__))
        self.logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")  # registers EfficientNMS_TRT and the other standard plugins
        try:
            self.builder = trt.Builder(self.logger)
        except Exception as e:  # noqa: BLE001 - no driver / no device
            raise BackendUnavailable(f"TensorRT cannot create a builder (no usable NVIDIA GPU/driver?): {e}") from None
        if self.builder is None:
            raise BackendUnavailable("TensorRT cannot create a builder (no usable NVIDIA GPU/driver?)")
        self.config = self.builder.create_builder_config()
        self.config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        self.network = None
        self.parser = None
        self._timing_cache = None

    def parse(self, onnx_path: Path) -> None:
        """Parse the ONNX into a network with the path's flags; print every parser error and raise
        BuildError if any."""
        trt = self.trt
        self.network = self.builder.create_network(self.path.network_flags(trt))
        self.parser = trt.OnnxParser(self.network, self.logger)
        if not self.parser.parse_from_file(str(onnx_path)):
            errors = [str(self.parser.get_error(i)) for i in range(self.parser.num_errors)]
            for e in errors:
                self.log(f"  ONNX parser error: {e}")
            raise BuildError(f"TensorRT could not parse {onnx_path} ({len(errors)} error(s) above)")
        for i in range(self.network.num_inputs):
            t = self.network.get_input(i)
            self.log(f"  input  {t.name} {tuple(t.shape)} {t.dtype}")
        for i in range(self.network.num_outputs):
            t = self.network.get_output(i)
            self.log(f"  output {t.name} {tuple(t.shape)} {t.dtype}")

    def _shapes(self, batch: int) -> list[tuple[str, list[int]]]:
        out = []
        for i in range(self.network.num_inputs):
            t = self.network.get_input(i)
            dims = list(t.shape)
            if any(d < 0 for d in dims[1:]):
                raise BuildError(f"input {t.name} has dynamic non-batch dims {dims}; export with a fixed size")
            out.append((t.name, [batch] + dims[1:]))
        return out

    def set_profile(self, batch: tuple[int, int, int]) -> Any:
        """One optimisation profile: batch MIN/OPT/MAX on every input's first dimension."""
        profile = self.builder.create_optimization_profile()
        for (name, mn), (_, op), (_, mx) in zip(self._shapes(batch[0]), self._shapes(batch[1]), self._shapes(batch[2])):
            profile.set_shape(name, mn, op, mx)
        self.config.add_optimization_profile(profile)
        return profile

    def set_precision(self, precision: str, *, fast_fp16: bool, fast_int8: bool, calibrator: Any = None,
                      calib_batch: int = 1) -> None:
        """Builder-flags path: FP32 / FP16 / INT8 / best, chosen explicitly; raises if the GPU lacks
        the fast path. (The strongly typed path sets no precision: :meth:`check_typed`.)"""
        trt = self.trt
        if self.path.strongly_typed:
            raise BuildError("the strongly typed path sets no precision flag: the parsed ONNX states the types")
        if precision == "fp32":
            return
        if not (hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")):
            raise BuildError(f"TensorRT {trt.__version__} has no BuilderFlag.FP16/INT8 (weak typing was removed in "
                             f"TensorRT 11): its engines are built on the strongly typed path (--typing auto)")
        if precision in ("fp16", "best") and not fast_fp16:
            raise BuildError("this GPU has no fast FP16: refusing to build an FP32 engine under an FP16 name "
                             "(drop --fp16/--best to build FP32 on purpose)")
        if uses_int8(precision) and not fast_int8:
            raise BuildError("this GPU has no fast INT8 (needs compute capability >= 6.1): refusing to fall back "
                             "(drop --int8/--best to build FP32 on purpose)")
        if precision in ("fp16", "best"):
            self.config.set_flag(trt.BuilderFlag.FP16)
        if uses_int8(precision):
            self.config.set_flag(trt.BuilderFlag.INT8)
            if calibrator is not None:
                self.config.int8_calibrator = calibrator
                # The calibrator's buffer has one shape: calibrate with a fixed-batch profile.
                prof = self.builder.create_optimization_profile()
                for name, shape in self._shapes(calib_batch):
                    prof.set_shape(name, shape, shape, shape)
                self.config.set_calibration_profile(prof)

    def set_tf32(self, allow: bool | None) -> bool | None:
        """Whether FP32 layers may run as TF32 (inputs rounded to 10-bit mantissas; TensorRT allows it by default
        on Ampere and newer GPUs, on both build paths): True sets ``BuilderFlag.TF32``, False clears it, None
        keeps TensorRT's default. Returns what the engine is built with (True: TF32 allowed), None when this
        TensorRT has no TF32 flag."""
        flag = getattr(self.trt.BuilderFlag, "TF32", None)
        if flag is None:
            return None
        if allow is True:
            self.config.set_flag(flag)
        elif allow is False:
            self.config.clear_flag(flag)
        return allow is not False

    def check_typed(self, precision: str, onnx: Path, fast: tuple[bool, bool] | None) -> dict[str, Any]:
        """Strongly typed path: the parsed network must compute what the engine's name says
        (FP16 tensors for fp16, Q/DQ layers for int8, neither for fp32), on a GPU with that fast
        path when its compute capability is known (``fast``: (FP16, INT8) or None). Returns the
        network's types (:func:`export.trt.dispatch.network_types`)."""
        types = network_types(self.network, self.trt)
        why = check_typed_network(precision, types, onnx)
        if why:
            raise BuildError(why)
        if fast is not None and ((precision == "fp16" and not fast[0]) or (precision == "int8" and not fast[1])):
            raise BuildError(f"this GPU has no fast {precision.upper()}: refusing a slow {precision} engine (build "
                             f"without --{precision} for FP32 on purpose)")
        self.log(f"  strongly typed network: {types['fp16_tensors']} FP16 tensors, {types['qdq_layers']} Q/DQ layers")
        return types

    def load_timing_cache(self, path: Path | None) -> None:
        blob = Path(path).read_bytes() if path and Path(path).is_file() else b""
        self._timing_cache = self.config.create_timing_cache(blob)
        self.config.set_timing_cache(self._timing_cache, ignore_mismatch=False)
        if blob:
            self.log(f"  timing cache: {path} ({len(blob)} bytes)")

    def save_timing_cache(self, path: Path | None) -> None:
        if path and self._timing_cache is not None:
            from runtime.atomic import write_bytes_atomic
            data = self.config.get_timing_cache().serialize()
            write_bytes_atomic(Path(path), bytes(data))

    def build(self) -> bytes:
        plan = self.builder.build_serialized_network(self.network, self.config)
        if plan is None:
            raise BuildError("TensorRT failed to build the engine (see its messages above)")
        return bytes(plan)


# --------------------------------------------------------------------------- the build
def check_environment() -> tuple[Any, Any, str, tuple[int, int] | None]:
    """(trt, cuda backend or None, GPU name, compute capability) or BackendUnavailable (one line)."""
    from export.trt.env import import_cuda, import_tensorrt, install_hint
    trt, why = import_tensorrt()
    if trt is None:
        raise BackendUnavailable(f"{why}; to build engines: {install_hint()}")
    cuda, _ = import_cuda()
    if cuda is None:
        return trt, None, "unknown (no CUDA Python binding)", None
    try:
        if cuda.device_count() < 1:
            raise BackendUnavailable(f"no NVIDIA GPU visible (TensorRT {trt.__version__} is installed); check the "
                                     f"driver and CUDA_VISIBLE_DEVICES")
        name, cc = cuda.device_info()
    except BackendUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - driver missing / too old
        raise BackendUnavailable(f"no usable NVIDIA GPU ({e.__class__.__name__}: {e}); TensorRT needs an NVIDIA GPU "
                                 f"and driver ({install_hint()})") from None
    return trt, cuda, name, cc


def _fast_precisions(b: EngineBuilder, cc: tuple[int, int] | None) -> tuple[bool, bool]:
    from export.trt.env import fast_precisions
    if cc is None:  # no CUDA binding: ask TensorRT itself (deprecated in 10.5, still answers)
        return (bool(getattr(b.builder, "platform_has_fast_fp16", False)),
                bool(getattr(b.builder, "platform_has_fast_int8", False)))
    return fast_precisions(cc)


def _calibrator(s: BuildSettings, trt: Any, cuda: Any, onnx_meta: Any, onnx_sha: str, log: Log
                ) -> tuple[Any, dict[str, Any]]:
    """The entropy calibrator of an INT8 build and what it calibrates on (for the report)."""
    cache_ok, cache_why = calibration_cache_valid(s.calib_cache, onnx_sha)
    batches = None
    if s.calib_images is not None or not cache_ok:
        images, src = calibration_images(s, onnx_meta)
        batches = CalibrationBatches(images, onnx_meta, s.calib_batch)
        info = {"source": src, "images": len(batches) * batches.batch_size, "batch": batches.batch_size}
    else:
        info = {"source": f"cache {s.calib_cache}", "reason": cache_why}
    if batches is not None and cuda is None:
        raise BackendUnavailable("INT8 calibration needs a CUDA Python binding for its device buffer: "
                                 "pip install cuda-python (or pycuda on Jetson)")
    calibrator = make_entropy_calibrator(trt, cuda, batches, s.calib_cache, onnx_sha, log=log)
    return calibrator, {**info, "cache": str(s.calib_cache)}


def _configure(b: EngineBuilder, s: BuildSettings, src: EngineSource, trt: Any, cuda: Any,
               cc: tuple[int, int] | None, log: Log) -> tuple[Any, dict[str, Any]]:
    """Set the precision of the path: check the typed network (strongly typed) or set the flags and
    the calibrator (builder flags). Returns (calibrator or None, what the report records)."""
    from export.trt.env import fast_precisions
    if b.path.strongly_typed:
        types = b.check_typed(s.precision, src.onnx, fast_precisions(cc) if cc is not None else None)
        return None, {"network": types, "calibration": (src.meta.extra.get("calibration_source")
                                                         if s.precision == "int8" else None)}
    fast_fp16, fast_int8 = _fast_precisions(b, cc)
    calibrator, calib_info = None, None
    if uses_int8(s.precision):
        calibrator, calib_info = _calibrator(s, trt, cuda, src.meta, src.sha256, log)
    b.set_precision(s.precision, fast_fp16=fast_fp16, fast_int8=fast_int8, calibrator=calibrator,
                    calib_batch=calibrator.get_batch_size() if calibrator is not None else 1)
    flags = [f for f, on in (("FP16", s.precision in ("fp16", "best")), ("INT8", uses_int8(s.precision))) if on]
    return calibrator, {"builder_flags": flags, "calibration": calib_info}


def _build_plan(s: BuildSettings, path: BuildPath, src: EngineSource, trt: Any, cuda: Any,
                cc: tuple[int, int] | None, log: Log) -> tuple[bytes, dict[str, Any]]:
    """Parse ``src``, configure the path's precision and build: (serialized engine, what was set)."""
    b = EngineBuilder(trt, path=path, verbose=s.verbose, workspace_mb=s.workspace_mb, log=log)
    b.parse(src.onnx)
    b.set_profile(s.batch)
    calibrator, info = _configure(b, s, src, trt, cuda, cc, log)
    info["tf32"] = b.set_tf32(tf32_request(s.precision, s.tf32))
    b.load_timing_cache(s.timing_cache)
    try:
        plan = b.build()
    finally:
        if calibrator is not None:
            calibrator.free()
    b.save_timing_cache(s.timing_cache)
    return plan, {**info, "network_flags": path.network_flags(trt)}


def _engine_extra(s: BuildSettings, path: BuildPath, src: EngineSource, gpu: str, cc: tuple[int, int] | None,
                  seconds: float, info: dict[str, Any]) -> dict[str, Any]:
    return {"source_onnx": str(src.onnx), "source_graph": src.meta.graph, "source_precision": src.meta.precision,
            "source_how": src.how, "build_path": {**path.sidecar(), "network_flags": info.get("network_flags"),
                                                  "builder_flags": info.get("builder_flags", [])},
            "gpu": gpu, "compute_capability": list(cc) if cc else None, "tensorrt": path.tensorrt,
            "batch_profile": {"min": s.batch[0], "opt": s.batch[1], "max": s.batch[2]},
            "workspace_mb": s.workspace_mb, "build_seconds": round(seconds, 1), "tf32": info.get("tf32"),
            "timing_cache": str(s.timing_cache) if s.timing_cache else None, "calibration": info.get("calibration"),
            "io_types": (info.get("network") or {}).get("io_types") or src.meta.extra.get("io_types")}


def build_engine(s: BuildSettings, log: Log = print, verify: bool = True, verify_images: Path | None = None
                 ) -> dict[str, Any]:
    """Build (or reuse) the engine described by ``s``; returns the report dict. Raises
    BackendUnavailable (no TensorRT/GPU), BuildError (parse/build/check failed), ValueError (inputs)."""
    from runtime.atomic import write_bytes_atomic
    from runtime.metadata import write_sidecar
    read_onnx_meta(s.onnx)
    trt, cuda, gpu, cc = check_environment()
    path = choose_build_path(str(trt.__version__), s.typing)
    route = detect_nms_route(trt, s, log)  # before parsing: a TensorRT without the plugin stops here
    src = prepare_source(s, path, log) if route.plugin else builtin_source(s, path, cc, log)
    key = build_key(src.sha256, s, trt.__version__, gpu, cc, build_path=path.name, nms=route.name)
    report: dict[str, Any] = {"onnx": str(s.onnx), "parsed_onnx": str(src.onnx), "engine": str(s.engine),
                              "precision": s.precision, "build_path": path.sidecar(), "batch": list(s.batch),
                              "tensorrt": trt.__version__, "gpu": gpu, "compute_capability": list(cc) if cc else None,
                              "onnx_sha256": src.sha256, "nms": {**route.sidecar(), "graph": src.onnx.name}}
    reference = s.onnx if route.plugin else src.onnx  # what the engine's detections are checked against
    fresh, why = engine_is_fresh(s.engine, key)
    if fresh and not s.force:
        log(f"export.trt: {why}: {s.engine} (--force rebuilds)")
        return _with_verification({**report, "status": "cached", "reason": why}, s, reference, verify,
                                  verify_images, log)
    log(f"export.trt: building {s.engine} ({s.precision}, {path.name} from {src.onnx.name}, NMS {route.name}, "
        f"batch {s.batch}, "
        f"TensorRT {trt.__version__}, {gpu}{f' sm_{cc[0]}{cc[1]}' if cc else ''}) because: "
        f"{why if not s.force else '--force'}")
    t0 = time.perf_counter()
    plan, info = _build_plan(s, path, src, trt, cuda, cc, log)
    seconds = time.perf_counter() - t0
    write_bytes_atomic(s.engine, plan)
    extra = {**_engine_extra(s, path, src, gpu, cc, seconds, info), "nms_route": report["nms"]}
    sidecar = write_sidecar(s.engine, engine_meta(src.meta, precision=s.precision, onnx_sha256=src.sha256, key=key,
                                                  extra=extra))
    log(f"export.trt: wrote {s.engine} ({len(plan) / 2**20:.1f} MB, {seconds:.1f} s) and {sidecar}")
    report = {**report, "status": "built", "seconds": seconds, "sidecar": str(sidecar), "tf32": info.get("tf32"),
              "calibration": info.get("calibration"), "engine_mb": len(plan) / 2**20}
    return _with_verification(report, s, reference, verify, verify_images, log)


def _with_verification(report: dict[str, Any], s: BuildSettings, reference: Path, verify: bool,
                       verify_images: Path | None, log: Log) -> dict[str, Any]:
    """The engine against the CPU reference of ``reference`` (:func:`export.trt.verify.verify_engine`);
    on the built-in NMS route also that graph against the plugin's CPU reference (reported only)."""
    if not verify:
        return {**report, "verification": "skipped (--no-verify)"}
    from export import data as xdata
    from export.trt.verify import verify_engine
    from runtime.metadata import read_sidecar
    images = ([str(p) for p in xdata.list_images(verify_images, limit=3)] if verify_images
              else xdata.synthetic_images(3, seed=0))
    try:
        v = verify_engine(s.engine, reference, read_sidecar(s.engine), s.batch, images, log=log)
    except Exception as e:  # noqa: BLE001 - an engine that cannot run is a failed build
        raise BuildError(f"the engine was written but does not run: {e.__class__.__name__}: {e}") from None
    report = {**report, "verification": v}
    if reference != s.onnx and read_onnx_meta(s.onnx).graph == "trt":
        report["nms"] = {**report["nms"], "cpu_parity_with_plugin": _route_parity(s.onnx, reference, images, log)}
    if not v["ok"]:
        write_build_report(s.engine, {**report, "status": "failed"})
        raise BuildError(f"engine detections agree {v['agreement']:.3f} with the CPU reference, below "
                         f"{v['min_agreement']} for {s.precision}")
    return report


def _route_parity(trt_onnx: Path, nms_onnx: Path, images: list[Any], log: Log) -> dict[str, Any]:
    from export.trt.nms import route_parity
    p = route_parity(trt_onnx, nms_onnx, images)
    log(f"export.trt: on CPU, {nms_onnx.name} (ONNX Runtime) vs the {trt_onnx.name} plugin reference: agreement "
        f"{p['agreement']:.3f}, detections {p['detections']['builtin']} vs {p['detections']['plugin']}")
    return p


def build_report_path(engine: Path) -> Path:
    """``model_fp16.engine`` -> ``model_fp16.build.json``."""
    return engine.with_name(engine.stem + ".build.json")


def write_build_report(engine: Path | None, report: dict[str, Any]) -> None:
    """The build report next to the engine; best effort (a report must never hide the build's outcome)."""
    if engine is None:
        return
    from runtime.atomic import write_json_atomic
    try:
        write_json_atomic(build_report_path(engine), report)
    except OSError:
        pass
