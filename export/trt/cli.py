"""``python -m export.trt``: ONNX (model_trt.onnx, EfficientNMS_TRT inside) -> TensorRT engine + sidecar.

    python -m export.trt --onnx exports/kd/model_trt.onnx --fp16 --out exports/kd/model_fp16.engine
    python -m export.trt --onnx exports/kd/model_trt.onnx --int8 --calib-images DIR --calib-cache exports/kd/calib.cache
    python -m export.trt --fp16          # the newest runs/**/best.pt's export: exports/<run>/model_trt.onnx

Precision is chosen explicitly: ``--fp16``, ``--int8`` or ``--best`` (FP16 + INT8), none of them
= FP32. How it is realised depends on the TensorRT version (:mod:`export.trt.dispatch`):

* TensorRT >= 11 (strongly typed; ``--typing strongly-typed`` on 10.12+): the ONNX states the
  precision. ``--fp16`` parses ``model_trt_fp16.onnx`` (mixed precision, export.fp16), ``--int8``
  ``model_trt_int8.onnx`` (Q/DQ, export.qdq_trt, calibrated on the same images as below); both are
  written beside ``model_trt.onnx`` when missing or stale (as ``python -m export.onnx --fp16 --trt-int8``
  writes them). ``--best`` does not exist there. The parsed network must hold FP16 tensors / Q/DQ
  layers, or the build fails.
* TensorRT 8.6 - 10.x (builder flags; Jetson): ``model_trt.onnx`` with ``BuilderFlag.FP16`` /
  ``INT8``; INT8 uses an IInt8EntropyCalibrator2 over ``runtime.preprocess`` with a calibration
  cache (tied to the ONNX sha256 by ``<cache>.json``).

If the GPU has no fast FP16 / INT8 the build fails loudly; it never falls back to FP32.
An FP32 engine computes in FP32: TensorRT's default TF32 for FP32 layers (Ampere and newer) is cleared
unless ``--tf32``; FP16 / INT8 engines keep it.
NMS: ``--nms plugin`` fuses EfficientNMS_TRT (model_trt.onnx), ``--nms builtin`` parses the
ONNX-NMS graph model_nms.onnx, whose NonMaxSuppression TensorRT builds with its INMSLayer (same
four outputs; :mod:`export.trt.nms`); ``--nms auto`` takes the plugin when TensorRT's plugin
registry has it. A TensorRT without the plugin is detected before parsing.
The engine's sidecar records the NMS route, the precision really built, the build path, TensorRT version, GPU
name and compute capability, and the sha256 of the ONNX file parsed: an existing engine is reused
only when that and the other build settings match (``--force`` rebuilds anyway).
The engine is then run (runtime's TensorRT backend) and its detections compared with the CPU
reference of the same ONNX graph (runtime.trt_reference); too little agreement is a failed build.

Without TensorRT or without a GPU: exit status 2, one line saying how to get them, and no file written.
Everything before the TensorRT calls (arguments, cache keys, sidecars, calibration batches) runs
and is tested on a CPU-only machine.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from export.trt.builder import BuildError, build_engine, write_build_report
from export.trt.settings import read_onnx_meta, resolve_settings
from runtime.cli import command, ProductParser
from runtime.errors import BackendUnavailable

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 2


DESCRIPTION = ("Build a TensorRT engine from model_trt.onnx (EfficientNMS_TRT fused) with an explicit precision: "
               "TensorRT >= 11 parses the precision's own graph (model_trt_fp16.onnx, model_trt_int8.onnx, written "
               "when missing), TensorRT 8.6-10.x sets builder flags and (INT8) an entropy calibrator; a batch "
               "optimisation profile and a timing cache. Writes the engine, "
               "its sidecar <name>.json and a report <name>.build.json (a build refused for want of TensorRT or a GPU "
               "writes nothing). Exit status: 0 built or up to date, 1 parse/build failed, 2 usage error or no "
               "TensorRT/GPU.")


def build_parser() -> argparse.ArgumentParser:
    """The command line's arguments (``python -m export.trt --help``)."""
    p = ProductParser(prog="python -m export.trt", description=DESCRIPTION, allow_abbrev=False,
                                epilog="Without --onnx: exports/<run name>/model_trt.onnx of the newest best.pt "
                                       "under --runs.")
    p.add_argument("--onnx", help="model_trt.onnx written by python -m export.onnx (its sidecar must be next to it)")
    p.add_argument("--out", help="output folder for model_<precision>.engine (default: the ONNX's folder); "
                                 "a path ending in .engine names the engine file itself")
    p.add_argument("--runs", default="runs", help="where runs are searched when --onnx is not given")
    g = p.add_argument_group("precision (one of; none = FP32)")
    g.add_argument("--fp16", action="store_true", help="FP16 kernels allowed (fails if the GPU has no fast FP16)")
    g.add_argument("--int8", action="store_true", help="INT8 kernels allowed, calibrated (fails without fast INT8)")
    g.add_argument("--best", action="store_true", help="FP16 and INT8 kernels allowed")
    g.add_argument("--tf32", action="store_true",
                   help="let FP32 layers run as TF32 (inputs rounded to 10-bit mantissas) on Ampere and newer GPUs. "
                        "Default: off for an FP32 engine (no precision flag gives FP32 math), TensorRT's default "
                        "(on) for --fp16/--int8/--best; the sidecar records it as tf32")
    p.add_argument("--typing", default="auto", choices=["auto", "strongly-typed", "builder-flags"],
                   help="build path: auto = strongly typed on TensorRT >= 11, builder flags on 8.6-10.x; "
                        "strongly-typed is also available on 10.12+")
    p.add_argument("--nms", default="auto", choices=["auto", "plugin", "builtin"],
                   help="NMS inside the engine: plugin = EfficientNMS_TRT (model_trt.onnx; deprecated, not removed, "
                        "in TensorRT 10.12/11), builtin = TensorRT's INMSLayer (model_nms.onnx, same four outputs; "
                        "FP32 only on TensorRT >= 11); auto = the plugin when TensorRT registers it, else builtin")
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


@command("python -m export.trt")
def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 built or up to date, 1 build or check failed, 2 usage error or no TensorRT/GPU."""
    args = build_parser().parse_args(argv)
    settings = None
    try:
        settings = resolve_settings(args)
        if read_onnx_meta(settings.onnx).task == "text":  # the text / non-text classifier: no NMS (export.trt.text)
            from export.trt.text import build_text_engine
            report = build_text_engine(settings)
        else:
            report = build_engine(settings, verify=not args.no_verify,
                                  verify_images=Path(args.verify_images) if args.verify_images else None)
        write_build_report(settings.engine, report)
        return EXIT_OK
    except BackendUnavailable as e:  # refused before building: nothing is written
        print(f"export.trt: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ValueError as e:
        print(f"export.trt: error: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BuildError as e:
        print(f"export.trt: build failed: {e}", file=sys.stderr)
        write_build_report(settings.engine if settings else None, {"status": "failed", "reason": str(e)})
        return EXIT_FAILED
