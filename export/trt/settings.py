"""What an engine build is asked for, validated, and when an existing engine still answers it.

* :class:`BuildSettings` and :func:`resolve_settings` (command line -> validated settings);
* :func:`build_key` / :func:`engine_is_fresh`: everything an engine depends on, compared with
  what its sidecar recorded, so an engine is rebuilt exactly when something changed;
* :func:`engine_meta`: the engine's sidecar (the ONNX sidecar plus what was really built).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "fp16", "int8", "best")


def parse_batch(text: str) -> tuple[int, int, int]:
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
    """One of :data:`PRECISIONS` from the command line's precision flags (none = "fp32")."""
    chosen = [name for name, on in (("fp16", fp16), ("int8", int8), ("best", best)) if on]
    if len(chosen) > 1:
        raise ValueError(f"choose one precision flag, got {', '.join('--' + c for c in chosen)} "
                         f"(--best already means FP16 + INT8)")
    return chosen[0] if chosen else "fp32"


def uses_int8(precision: str) -> bool:
    return precision in ("int8", "best")


def tf32_request(precision: str, tf32: bool) -> bool | None:
    """What the build asks of ``BuilderFlag.TF32`` (FP32 layers as TF32 on Ampere and newer GPUs, TensorRT's
    default): True (``--tf32``: set it), False (an FP32 engine without ``--tf32``: cleared, FP32 math as
    asked) or None (an FP16 / INT8 / best engine: TensorRT's default, on, kept for its FP32 layers)."""
    return True if tf32 else (False if precision == "fp32" else None)


@dataclass
class BuildSettings:
    """One engine build. ``batch``: the optimisation profile's (MIN, OPT, MAX) batch; ``typing``:
    the build path asked for ("auto", "strongly-typed", "builder-flags"; :mod:`export.trt.dispatch`);
    ``nms``: the NMS route asked for ("auto", "plugin", "builtin"; :mod:`export.trt.nms`); ``tf32``: FP32
    layers may run as TF32 (:func:`tf32_request`)."""

    onnx: Path
    engine: Path
    precision: str = "fp32"
    batch: tuple[int, int, int] = (1, 1, 16)
    workspace_mb: int = 1024
    timing_cache: Path | None = None
    calib_images: Path | None = None
    calib_cache: Path | None = None
    calib_batch: int = 8
    calib_count: int = 256
    typing: str = "auto"
    nms: str = "auto"
    force: bool = False
    verbose: bool = False
    tf32: bool = False
    notes: list[str] = field(default_factory=list)


def default_engine_path(onnx: Path, precision: str) -> Path:
    return Path(onnx).with_name(f"model_{precision}.engine")


def engine_path(out: str | None, onnx: Path, precision: str) -> Path:
    """``--out``: a folder (``model_<precision>.engine`` inside it), or a path ending in ``.engine``;
    none: beside the ONNX."""
    if not out:
        return default_engine_path(onnx, precision)
    p = Path(out)
    if p.suffix == ".engine" and not p.is_dir():
        return p
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is a file; --out names a folder (or an engine path ending in .engine)")
    if p.suffix.lower() in (".plan", ".trt", ".onnx", ".json") and not p.exists():
        raise ValueError(f"--out {p}: expected a folder or a path ending in .engine (its sidecar is <name>.json)")
    return p / default_engine_path(onnx, precision).name


def _onnx_path(args: argparse.Namespace) -> Path:
    from export import data as xdata
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
    return onnx


def resolve_settings(args: argparse.Namespace) -> BuildSettings:
    """Command line -> validated BuildSettings (ValueError with what was given and expected)."""
    from export import data as xdata
    precision = precision_from_flags(args.fp16, args.int8, args.best)
    onnx = _onnx_path(args)
    engine = engine_path(args.out, onnx, precision)
    if args.workspace_mb < 16:
        raise ValueError(f"--workspace-mb must be >= 16, got {args.workspace_mb}")
    if not uses_int8(precision) and (args.calib_images or args.calib_cache):
        raise ValueError("--calib-images / --calib-cache are only used with --int8 or --best")
    s = BuildSettings(onnx=onnx, engine=engine, precision=precision, batch=parse_batch(args.batch),
                      workspace_mb=args.workspace_mb, force=args.force, verbose=args.verbose,
                      tf32=bool(getattr(args, "tf32", False)),
                      typing=getattr(args, "typing", "auto"), nms=getattr(args, "nms", "auto"),
                      timing_cache=Path(args.timing_cache) if args.timing_cache else engine.with_name("timing.cache"),
                      calib_batch=args.calib_batch, calib_count=args.calib_count)
    if args.calib_batch < 1 or args.calib_count < 1:
        raise ValueError("--calib-batch and --calib-count must be >= 1")
    if uses_int8(precision):
        s.calib_cache = Path(args.calib_cache) if args.calib_cache else engine.with_name("calib.cache")
        if args.calib_images:
            s.calib_images = Path(args.calib_images)
            xdata.list_images(s.calib_images, limit=1)  # raises if missing or empty
    if getattr(args, "verify_images", None):
        xdata.list_images(args.verify_images, limit=1)
    check_graph_precision(onnx, read_onnx_meta(onnx), precision)  # the sidecar must exist: nothing is guessed
    return s


def check_graph_precision(onnx: Path, meta: Any, precision: str) -> None:
    """ValueError when ``onnx`` already states a precision (an FP16 / Q/DQ plugin graph) other than
    the one asked for: its engine name would not say what it computes."""
    if meta.precision != "fp32" and meta.precision != precision:
        flag = "no precision flag" if precision == "fp32" else f"--{precision}"
        raise ValueError(f"{onnx.name} is a {meta.precision} graph but {flag} was given: pass --{meta.precision}, "
                         f"or --onnx model_trt.onnx to build {precision} from the FP32 graph")


def read_onnx_meta(onnx: Path) -> Any:
    """The ONNX file's sidecar (runtime.metadata.ModelMeta); ValueError saying how to get one."""
    from runtime.metadata import read_sidecar
    try:
        return read_sidecar(onnx)
    except ValueError as e:
        raise ValueError(f"{e}; export the ONNX with python -m export.onnx, which writes it") from None


# --------------------------------------------------------------------------- engine freshness
def build_key(onnx_sha256: str, s: BuildSettings, trt_version: str, gpu: str,
              compute_capability: tuple[int, int] | None, build_path: str = "builder-flags",
              nms: str = "plugin") -> dict[str, Any]:
    """Everything an engine depends on; an engine is reused only when all of it matches.
    ``onnx_sha256``: of the ONNX really parsed; ``build_path``: :class:`export.trt.dispatch.BuildPath` name;
    ``nms``: the NMS route (:class:`export.trt.nms.NmsRoute` name); ``tf32``: FP32 layers may run as TF32."""
    return {"onnx_sha256": onnx_sha256, "precision": s.precision, "batch": list(s.batch),
            "tf32": tf32_request(s.precision, s.tf32) is not False,
            "workspace_mb": int(s.workspace_mb), "tensorrt": str(trt_version), "gpu": str(gpu),
            "compute_capability": list(compute_capability) if compute_capability else None,
            "build_path": build_path, "nms": nms}


def engine_is_fresh(engine: Path, key: dict[str, Any]) -> tuple[bool, str]:
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


def engine_meta(onnx_meta: Any, *, precision: str, onnx_sha256: str, key: dict[str, Any],
                extra: dict[str, Any]) -> Any:
    """The engine's sidecar: the ONNX's metadata with what was really built."""
    from runtime.metadata import library_versions
    versions = {**library_versions(), "tensorrt": key["tensorrt"]}
    return dataclasses.replace(onnx_meta, graph="engine", precision=precision, onnx_sha256=onnx_sha256,
                               versions=versions, extra={**onnx_meta.extra, **extra, "build_key": key})
