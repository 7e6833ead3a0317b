"""ONNX (model_trt.onnx, EfficientNMS_TRT inside) -> TensorRT engine + sidecar.

    python -m export.trt --onnx exports/kd/model_trt.onnx --fp16 --out exports/kd/model_fp16.engine
    python -m export.trt --onnx exports/kd/model_trt.onnx --int8 --calib-images DIR --calib-cache exports/kd/calib.cache
    python -m export.trt --fp16          # the newest runs/**/best.pt's export: exports/<run>/model_trt.onnx

Precision is chosen explicitly: ``--fp16``, ``--int8`` or ``--best`` (FP16 + INT8), none of them
= FP32. If the GPU has no fast FP16 / INT8 the build fails loudly; it never falls back to FP32.
The engine's sidecar records the precision really built, TensorRT version, GPU name and compute
capability, and the sha256 of the ONNX file: an existing engine is reused only when that and the
other build settings match (``--force`` rebuilds anyway). INT8 uses an IInt8EntropyCalibrator2
over ``runtime.preprocess`` with a calibration cache (tied to the ONNX sha256 by ``<cache>.json``).
The engine is then run (runtime's TensorRT backend) and its detections compared with the CPU
reference of the same ONNX graph (runtime.trt_reference); too little agreement is a failed build.

Targets TensorRT 8.6-10.x (the calibrator API and BuilderFlag.FP16/INT8 were removed in 11).
Without TensorRT or without a GPU: exit status 2 and one line saying how to get them.
Everything before the TensorRT calls (arguments, cache keys, sidecars, calibration batches) runs
and is tested on a CPU-only machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8", "best")
EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 2


class Unavailable(RuntimeError):
    """TensorRT, a CUDA binding or a GPU is missing: exit 2 with this one-line message."""


class BuildError(RuntimeError):
    """The ONNX did not parse or TensorRT could not build it: exit 1."""


# --------------------------------------------------------------------------- settings + validation
def parse_batch(text: str) -> Tuple[int, int, int]:
    """``"1,4,16"`` -> (1, 4, 16); one number N means (N, N, N). Needs 1 <= MIN <= OPT <= MAX."""
    try:
        vals = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--batch must be MIN,OPT,MAX integers (e.g. 1,4,16), got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not 1 <= vals[0] <= vals[1] <= vals[2]:
        raise ValueError(f"--batch must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
    return vals[0], vals[1], vals[2]


def precision_from_flags(fp16: bool = False, int8: bool = False, best: bool = False) -> str:
    chosen = [name for name, on in (("fp16", fp16), ("int8", int8), ("best", best)) if on]
    if len(chosen) > 1:
        raise ValueError(f"choose one precision flag, got {', '.join('--' + c for c in chosen)} "
                         f"(--best already means FP16 + INT8)")
    return chosen[0] if chosen else "fp32"


@dataclass
class BuildSettings:
    onnx: Path
    engine: Path
    precision: str = "fp32"
    batch: Tuple[int, int, int] = (1, 1, 16)
    workspace_mb: int = 1024
    timing_cache: Optional[Path] = None
    calib_images: Optional[Path] = None
    calib_cache: Optional[Path] = None
    calib_batch: int = 8
    calib_count: int = 256
    force: bool = False
    verbose: bool = False
    notes: List[str] = field(default_factory=list)


def default_engine_path(onnx: Path, precision: str) -> Path:
    return Path(onnx).with_name(f"model_{precision}.engine")


def resolve_settings(args: argparse.Namespace) -> BuildSettings:
    """Command line -> validated BuildSettings (ValueError with what was given and expected)."""
    from export import data as xdata
    precision = precision_from_flags(args.fp16, args.int8, args.best)
    if args.onnx:
        onnx = Path(args.onnx)
    else:
        ckpt = xdata.find_latest_checkpoint(args.runs, hint="pass --onnx")
        onnx = xdata.default_export_dir(ckpt, args.runs) / "model_trt.onnx"
        if not onnx.is_file():
            raise ValueError(f"the latest run {ckpt} has no {onnx} yet: run python -m export.onnx first")
    if not onnx.is_file():
        raise ValueError(f"ONNX file not found: {onnx}")
    if onnx.suffix != ".onnx":
        raise ValueError(f"--onnx must be an .onnx file, got {onnx}")
    engine = Path(args.out) if args.out else default_engine_path(onnx, precision)
    if engine.suffix != ".engine":
        raise ValueError(f"--out must end in .engine (its sidecar is <name>.json), got {engine}")
    if args.workspace_mb < 16:
        raise ValueError(f"--workspace-mb must be >= 16, got {args.workspace_mb}")
    uses_int8 = precision in ("int8", "best")
    if not uses_int8 and (args.calib_images or args.calib_cache):
        raise ValueError("--calib-images / --calib-cache are only used with --int8 or --best")
    s = BuildSettings(onnx=onnx, engine=engine, precision=precision, batch=parse_batch(args.batch),
                      workspace_mb=args.workspace_mb, force=args.force, verbose=args.verbose,
                      timing_cache=Path(args.timing_cache) if args.timing_cache else engine.with_name("timing.cache"),
                      calib_batch=args.calib_batch, calib_count=args.calib_count)
    if args.calib_batch < 1 or args.calib_count < 1:
        raise ValueError("--calib-batch and --calib-count must be >= 1")
    if uses_int8:
        s.calib_cache = Path(args.calib_cache) if args.calib_cache else engine.with_name("calib.cache")
        if args.calib_images:
            s.calib_images = Path(args.calib_images)
            xdata.list_images(s.calib_images, limit=1)  # raises if missing or empty
    if getattr(args, "verify_images", None):
        xdata.list_images(args.verify_images, limit=1)
    read_onnx_meta(onnx)  # the sidecar must exist: nothing is guessed
    return s


def read_onnx_meta(onnx: Path):
    from runtime.metadata import read_sidecar
    try:
        return read_sidecar(onnx)
    except ValueError as e:
        raise ValueError(f"{e}; export the ONNX with python -m export.onnx, which writes it") from None


# --------------------------------------------------------------------------- engine cache
def build_key(onnx_sha256: str, s: BuildSettings, trt_version: str, gpu: str,
              compute_capability: Optional[Tuple[int, int]]) -> Dict[str, Any]:
    """Everything an engine depends on; an engine is reused only when all of it matches."""
    return {"onnx_sha256": onnx_sha256, "precision": s.precision, "batch": list(s.batch),
            "workspace_mb": int(s.workspace_mb), "tensorrt": str(trt_version), "gpu": str(gpu),
            "compute_capability": list(compute_capability) if compute_capability else None}


def engine_is_fresh(engine: Path, key: Dict[str, Any]) -> Tuple[bool, str]:
    """(True, why) if ``engine`` and its sidecar exist and were built with exactly ``key``."""
    from runtime.metadata import read_sidecar
    if not Path(engine).is_file():
        return False, "no engine yet"
    try:
        meta = read_sidecar(engine)
    except ValueError as e:
        return False, f"engine sidecar unreadable ({e})"
    old = meta.extra.get("build_key") or {}
    if meta.onnx_sha256 != key["onnx_sha256"]:
        return False, "the ONNX file changed since the engine was built (sha256 differs)"
    diff = sorted(k for k in key if old.get(k) != key[k])
    if diff:
        return False, f"build settings changed: {', '.join(diff)}"
    return True, "engine up to date (same ONNX sha256 and build settings)"


def engine_meta(onnx_meta, *, precision: str, onnx_sha256: str, key: Dict[str, Any], extra: Dict[str, Any]):
    """The engine's sidecar: the ONNX's metadata with what was really built."""
    from runtime.metadata import library_versions
    versions = {**library_versions(), "tensorrt": key["tensorrt"]}
    return dataclasses.replace(onnx_meta, graph="engine", precision=precision, onnx_sha256=onnx_sha256,
                               versions=versions, extra={**onnx_meta.extra, **extra, "build_key": key})


# --------------------------------------------------------------------------- INT8 calibration data
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


def calibration_cache_valid(cache: Optional[Path], onnx_sha256: str) -> Tuple[bool, str]:
    """A calibration cache is used only next to ``<cache>.json`` naming the same ONNX sha256."""
    if cache is None or not Path(cache).is_file():
        return False, "no calibration cache"
    key = Path(str(cache) + ".json")
    try:
        info = json.loads(key.read_text())
    except (OSError, ValueError):
        return False, f"{key.name} missing: the cache's ONNX is unknown, recalibrating"
    if info.get("onnx_sha256") != onnx_sha256:
        return False, "calibration cache was made for another ONNX file (sha256 differs), recalibrating"
    return True, "calibration cache matches the ONNX"


def write_calibration_cache(cache: Path, data: bytes, onnx_sha256: str) -> None:
    from runtime.metadata import write_json_atomic
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(bytes(data))
    write_json_atomic(Path(str(cache) + ".json"), {"onnx_sha256": onnx_sha256, "bytes": len(data)})


def calibration_images(s: BuildSettings, onnx_meta) -> Tuple[List[Any], str]:
    """Images for INT8 calibration: --calib-images, else the training images of the checkpoint
    the ONNX was exported from (when on disk). ValueError if neither."""
    from export import data as xdata
    if s.calib_images is not None:
        files = [str(p) for p in xdata.list_images(s.calib_images, limit=s.calib_count)]
        return files, f"{s.calib_images} ({len(files)} images)"
    ckpt_path = onnx_meta.extra.get("checkpoint")
    why = "the ONNX sidecar names no checkpoint"
    if ckpt_path and Path(ckpt_path).is_file():
        from distill.checkpoint import load_checkpoint
        ds, why = xdata.checkpoint_dataset(load_checkpoint(ckpt_path).get("config") or {}, "train")
        if ds is not None:
            step = max(1, len(ds) // s.calib_count)
            return [ds[i][0] for i in range(0, len(ds), step)][: s.calib_count], f"{why}, every {step}th image"
    elif ckpt_path:
        why = f"checkpoint {ckpt_path} not found"
    raise ValueError(f"--int8 needs --calib-images DIR, a valid --calib-cache, or a checkpoint whose dataset is "
                     f"available ({why})")


def make_entropy_calibrator(trt: Any, cuda: Any, batches: Optional[CalibrationBatches], cache: Path,
                            onnx_sha256: str, log=print):
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` through one device buffer; reads and
    writes ``cache`` (only if it belongs to this ONNX, see :func:`calibration_cache_valid`)."""

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


# --------------------------------------------------------------------------- the builder
class EngineBuilder:
    """TensorRT 10 engine builder with every choice explicit (TensorRT's Python samples style).

    ``trt``: the tensorrt module; ``log``: where messages go (every parser error included).
    """

    def __init__(self, trt: Any, *, verbose: bool = False, workspace_mb: int = 1024, log=print):
        self.trt, self.log = trt, log
        self.logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")  # registers EfficientNMS_TRT and the other standard plugins
        try:
            self.builder = trt.Builder(self.logger)
        except Exception as e:  # noqa: BLE001 - no driver / no device
            raise Unavailable(f"TensorRT cannot create a builder (no usable NVIDIA GPU/driver?): {e}") from None
        if self.builder is None:
            raise Unavailable("TensorRT cannot create a builder (no usable NVIDIA GPU/driver?)")
        self.config = self.builder.create_builder_config()
        self.config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        self.network = None
        self.parser = None
        self._timing_cache = None

    @property
    def major(self) -> int:
        return int(str(self.trt.__version__).split(".")[0])

    def parse(self, onnx_path: Path) -> None:
        """Parse the ONNX; print every parser error and raise BuildError if any."""
        trt = self.trt
        flags = 0 if self.major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        self.network = self.builder.create_network(flags)
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

    def _shapes(self, batch: int):
        out = []
        for i in range(self.network.num_inputs):
            t = self.network.get_input(i)
            dims = list(t.shape)
            if any(d < 0 for d in dims[1:]):
                raise BuildError(f"input {t.name} has dynamic non-batch dims {dims}; export with a fixed size")
            out.append((t.name, [batch] + dims[1:]))
        return out

    def set_profile(self, batch: Tuple[int, int, int]):
        """One optimisation profile: batch MIN/OPT/MAX on every input's first dimension."""
        profile = self.builder.create_optimization_profile()
        for (name, mn), (_, op), (_, mx) in zip(self._shapes(batch[0]), self._shapes(batch[1]), self._shapes(batch[2])):
            profile.set_shape(name, mn, op, mx)
        self.config.add_optimization_profile(profile)
        return profile

    def set_precision(self, precision: str, *, fast_fp16: bool, fast_int8: bool, calibrator=None,
                      calib_batch: int = 1) -> None:
        """FP32 / FP16 / INT8 / best, chosen explicitly; raises if the GPU lacks the fast path."""
        trt = self.trt
        if precision == "fp32":
            return
        if not (hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")):
            raise BuildError(f"TensorRT {trt.__version__} has no BuilderFlag.FP16/INT8 (weak typing was removed in "
                             f"TensorRT 11): build FP32, or pip install 'tensorrt<11' for --{precision}")
        if precision in ("fp16", "best") and not fast_fp16:
            raise BuildError("this GPU has no fast FP16: refusing to build an FP32 engine under an FP16 name "
                             "(drop --fp16/--best to build FP32 on purpose)")
        if precision in ("int8", "best") and not fast_int8:
            raise BuildError("this GPU has no fast INT8 (needs compute capability >= 6.1): refusing to fall back "
                             "(drop --int8/--best to build FP32 on purpose)")
        if precision in ("fp16", "best"):
            self.config.set_flag(trt.BuilderFlag.FP16)
        if precision in ("int8", "best"):
            self.config.set_flag(trt.BuilderFlag.INT8)
            if calibrator is not None:
                self.config.int8_calibrator = calibrator
                # The calibrator's buffer has one shape: calibrate with a fixed-batch profile.
                prof = self.builder.create_optimization_profile()
                for name, shape in self._shapes(calib_batch):
                    prof.set_shape(name, shape, shape, shape)
                self.config.set_calibration_profile(prof)

    def load_timing_cache(self, path: Optional[Path]) -> None:
        blob = Path(path).read_bytes() if path and Path(path).is_file() else b""
        self._timing_cache = self.config.create_timing_cache(blob)
        self.config.set_timing_cache(self._timing_cache, ignore_mismatch=False)
        if blob:
            self.log(f"  timing cache: {path} ({len(blob)} bytes)")

    def save_timing_cache(self, path: Optional[Path]) -> None:
        if path and self._timing_cache is not None:
            data = self.config.get_timing_cache().serialize()
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(bytes(data))

    def build(self) -> bytes:
        plan = self.builder.build_serialized_network(self.network, self.config)
        if plan is None:
            raise BuildError("TensorRT failed to build the engine (see its messages above)")
        return bytes(plan)


# --------------------------------------------------------------------------- parity of the built engine
def verify_engine(engine: Path, onnx: Path, meta: Any, batch: Tuple[int, int, int], images: Sequence[Any],
                  detector_factory=None, log=print) -> Dict[str, Any]:
    """The engine against the CPU reference of the plugin graph it was built from
    (runtime.trt_reference), on ``images`` at the profile's smallest batch and at 3 (clamped to
    the profile). Detection agreement (same class, IoU >= 0.95, runtime.parity) must reach the
    precision's bound (fp32 0.95, fp16 0.80; INT8 is only reported: it moves boxes by design)."""
    from export.data import preprocess
    from runtime.detector import NMS_OUTPUTS, detections_from_nms
    from runtime.parity import MIN_AGREEMENT, agreement
    from runtime.trt_reference import TrtGraphReference
    if detector_factory is None:
        from runtime.backends.trt_backend import TRTDetector as detector_factory
    x = preprocess(images, meta)
    sizes = sorted({batch[0], min(max(batch[0], 3), batch[2])})
    det, ref = detector_factory(engine), TrtGraphReference(onnx)
    h, w = meta.input_size
    rows, worst = {}, 1.0
    try:
        for bs in sizes:
            xb = np.ascontiguousarray(np.resize(x, (bs,) + x.shape[1:]))
            got = det.infer(xb)
            want = dict(zip(NMS_OUTPUTS, ref(xb)))
            hw = np.tile(np.array([[h, w]]), (bs, 1))
            convert = [detections_from_nms(*(o[k] for k in NMS_OUTPUTS), hw, meta.num_classes, meta.resize_mode)
                       for o in (want, got)]
            rows[str(bs)] = agreement(*convert)
            worst = min(worst, rows[str(bs)]["agreement"])
    finally:
        if hasattr(det, "close"):
            det.close()
    bound = MIN_AGREEMENT.get(meta.precision)
    ok = bound is None or worst >= bound
    log(f"export.trt: engine vs CPU reference of {onnx.name}: agreement {worst:.3f} at batch "
        f"{', '.join(map(str, sizes))} (needs {bound if bound is not None else 'n/a for ' + meta.precision})"
        f" -> {'ok' if ok else 'FAILED'}")
    return {"ok": ok, "agreement": worst, "min_agreement": bound, "batches": rows}


# --------------------------------------------------------------------------- the build
def check_environment() -> Tuple[Any, Any, str, Optional[Tuple[int, int]]]:
    """(trt, cuda backend or None, GPU name, compute capability) or Unavailable with one line."""
    from export.trt_env import import_cuda, import_tensorrt, install_hint
    trt, why = import_tensorrt()
    if trt is None:
        raise Unavailable(f"{why}; to build engines: {install_hint()}")
    cuda, cuda_why = import_cuda()
    if cuda is None:
        return trt, None, "unknown (no CUDA Python binding)", None
    try:
        if cuda.device_count() < 1:
            raise Unavailable(f"no NVIDIA GPU visible (TensorRT {trt.__version__} is installed); check the driver "
                              f"and CUDA_VISIBLE_DEVICES")
        name, cc = cuda.device_info()
    except Unavailable:
        raise
    except Exception as e:  # noqa: BLE001 - driver missing / too old
        raise Unavailable(f"no usable NVIDIA GPU ({e.__class__.__name__}: {e}); TensorRT needs an NVIDIA GPU and "
                          f"driver ({install_hint()})") from None
    return trt, cuda, name, cc


def build_engine(s: BuildSettings, log=print, verify: bool = True, verify_images: Optional[Path] = None
                 ) -> Dict[str, Any]:
    """Build (or reuse) the engine described by ``s``; returns the report dict.
    Raises Unavailable (no TensorRT/GPU), BuildError (parse/build failed), ValueError (inputs)."""
    from export.trt_env import fast_precisions
    from runtime.metadata import sha256_file, write_sidecar
    onnx_meta = read_onnx_meta(s.onnx)
    trt, cuda, gpu, cc = check_environment()
    onnx_sha = sha256_file(s.onnx)
    key = build_key(onnx_sha, s, trt.__version__, gpu, cc)
    report: Dict[str, Any] = {"onnx": str(s.onnx), "engine": str(s.engine), "precision": s.precision,
                              "batch": list(s.batch), "tensorrt": trt.__version__, "gpu": gpu,
                              "compute_capability": list(cc) if cc else None, "onnx_sha256": onnx_sha}
    fresh, why = engine_is_fresh(s.engine, key)
    if fresh and not s.force:
        log(f"export.trt: {why}: {s.engine} (--force rebuilds)")
        report = {**report, "status": "cached", "reason": why}
        return _with_verification(report, s, verify, verify_images, log)
    log(f"export.trt: building {s.engine} ({s.precision}, batch {s.batch}, TensorRT {trt.__version__}, {gpu}"
        f"{f' sm_{cc[0]}{cc[1]}' if cc else ''}) because: {why if not s.force else '--force'}")

    t0 = time.perf_counter()
    b = EngineBuilder(trt, verbose=s.verbose, workspace_mb=s.workspace_mb, log=log)
    b.parse(s.onnx)
    b.set_profile(s.batch)
    fast_fp16, fast_int8 = fast_precisions(cc)
    if cc is None:  # no CUDA binding: ask TensorRT itself (deprecated in 10.5, still answers)
        fast_fp16 = bool(getattr(b.builder, "platform_has_fast_fp16", False))
        fast_int8 = bool(getattr(b.builder, "platform_has_fast_int8", False))
    calibrator, calib_info = None, None
    if s.precision in ("int8", "best"):
        cache_ok, cache_why = calibration_cache_valid(s.calib_cache, onnx_sha)
        batches = None
        if s.calib_images is not None or not cache_ok:
            images, src = calibration_images(s, onnx_meta)
            batches = CalibrationBatches(images, onnx_meta, s.calib_batch)
            calib_info = {"source": src, "images": len(batches) * batches.batch_size, "batch": batches.batch_size}
        else:
            calib_info = {"source": f"cache {s.calib_cache}", "reason": cache_why}
        if batches is not None and cuda is None:
            raise Unavailable("INT8 calibration needs a CUDA Python binding for its device buffer: "
                              "pip install cuda-python (or pycuda on Jetson)")
        calibrator = make_entropy_calibrator(trt, cuda, batches, s.calib_cache, onnx_sha, log=log)
        calib_info["cache"] = str(s.calib_cache)
    b.set_precision(s.precision, fast_fp16=fast_fp16, fast_int8=fast_int8, calibrator=calibrator,
                    calib_batch=calibrator.get_batch_size() if calibrator is not None else 1)
    b.load_timing_cache(s.timing_cache)
    try:
        plan = b.build()
    finally:
        if calibrator is not None:
            calibrator.free()
    b.save_timing_cache(s.timing_cache)
    seconds = time.perf_counter() - t0
    s.engine.parent.mkdir(parents=True, exist_ok=True)
    tmp = s.engine.with_name(f".{s.engine.name}.tmp")
    tmp.write_bytes(plan)
    tmp.replace(s.engine)
    extra = {"source_onnx": str(s.onnx), "source_graph": onnx_meta.graph, "gpu": gpu,
             "compute_capability": list(cc) if cc else None, "tensorrt": trt.__version__,
             "batch_profile": {"min": s.batch[0], "opt": s.batch[1], "max": s.batch[2]},
             "workspace_mb": s.workspace_mb, "build_seconds": round(seconds, 1),
             "timing_cache": str(s.timing_cache) if s.timing_cache else None, "calibration": calib_info}
    sidecar = write_sidecar(s.engine, engine_meta(onnx_meta, precision=s.precision, onnx_sha256=onnx_sha, key=key,
                                                  extra=extra))
    log(f"export.trt: wrote {s.engine} ({len(plan) / 2**20:.1f} MB, {seconds:.1f} s) and {sidecar}")
    report = {**report, "status": "built", "seconds": seconds, "sidecar": str(sidecar), "calibration": calib_info,
              "engine_mb": len(plan) / 2**20}
    return _with_verification(report, s, verify, verify_images, log)


def _with_verification(report: Dict[str, Any], s: BuildSettings, verify: bool, verify_images: Optional[Path],
                       log) -> Dict[str, Any]:
    if not verify:
        return {**report, "verification": "skipped (--no-verify)"}
    from export import data as xdata
    from runtime.metadata import read_sidecar
    images = ([str(p) for p in xdata.list_images(verify_images, limit=3)] if verify_images
              else xdata.synthetic_images(3, seed=0))
    try:
        v = verify_engine(s.engine, s.onnx, read_sidecar(s.engine), s.batch, images, log=log)
    except Exception as e:  # noqa: BLE001 - an engine that cannot run is a failed build
        raise BuildError(f"the engine was written but does not run: {e.__class__.__name__}: {e}") from None
    report = {**report, "verification": v}
    if not v["ok"]:
        _write_report(s.engine, {**report, "status": "failed"})
        raise BuildError(f"engine detections agree {v['agreement']:.3f} with the CPU reference, below "
                         f"{v['min_agreement']} for {s.precision}")
    return report


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.trt", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a TensorRT engine from model_trt.onnx (EfficientNMS_TRT fused) with an explicit "
                    "precision, a batch optimisation profile, a timing cache and (INT8) an entropy calibrator. "
                    "Writes the engine, its sidecar <name>.json and a report <name>.build.json. "
                    "Exit status: 0 built or up to date, 1 parse/build failed, 2 usage error or no TensorRT/GPU.",
        epilog="Without --onnx: exports/<run name>/model_trt.onnx of the newest best.pt under --runs.")
    p.add_argument("--onnx", help="model_trt.onnx written by python -m export.onnx (its sidecar must be next to it)")
    p.add_argument("--out", help="engine path (default: model_<precision>.engine next to the ONNX)")
    p.add_argument("--runs", default="runs", help="where runs are searched when --onnx is not given")
    g = p.add_argument_group("precision (one of; none = FP32)")
    g.add_argument("--fp16", action="store_true", help="FP16 kernels allowed (fails if the GPU has no fast FP16)")
    g.add_argument("--int8", action="store_true", help="INT8 kernels allowed, calibrated (fails without fast INT8)")
    g.add_argument("--best", action="store_true", help="FP16 and INT8 kernels allowed")
    p.add_argument("--batch", default="1,1,16", metavar="MIN,OPT,MAX", help="batch optimisation profile")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace memory limit in MiB")
    p.add_argument("--timing-cache", help="timing cache file, read and updated (default: timing.cache next to the engine)")
    p.add_argument("--calib-images", metavar="DIR", help="INT8 calibration images (default: the checkpoint's "
                                                         "training images, if on disk)")
    p.add_argument("--calib-cache", metavar="FILE", help="INT8 calibration cache (default: calib.cache next to the "
                                                         "engine); reused only for the same ONNX sha256")
    p.add_argument("--calib-batch", type=int, default=8, help="images per calibration batch")
    p.add_argument("--calib-count", type=int, default=256, help="calibration images used at most")
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date engine exists")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the check of the engine's detections against the CPU reference of the ONNX graph")
    p.add_argument("--verify-images", metavar="DIR", help="images for that check (default: synthetic)")
    p.add_argument("--verbose", action="store_true", help="TensorRT verbose logging")
    return p


def _write_report(engine: Optional[Path], report: Dict[str, Any]) -> None:
    if engine is None:
        return
    from runtime.metadata import write_json_atomic
    try:
        write_json_atomic(engine.with_name(engine.stem + ".build.json"), report)
    except OSError:
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    settings = None
    try:
        settings = resolve_settings(args)
        report = build_engine(settings, verify=not args.no_verify,
                              verify_images=Path(args.verify_images) if args.verify_images else None)
        _write_report(settings.engine, report)
        return EXIT_OK
    except Unavailable as e:
        print(f"export.trt: {e}", file=sys.stderr)
        _write_report(settings.engine if settings else None, {"status": "unavailable", "reason": str(e)})
        return EXIT_UNAVAILABLE
    except ValueError as e:
        print(f"export.trt: error: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BuildError as e:
        print(f"export.trt: build failed: {e}", file=sys.stderr)
        _write_report(settings.engine if settings else None, {"status": "failed", "reason": str(e)})
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
