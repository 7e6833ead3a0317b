"""ONNX (model_trt.onnx, EfficientNMS_TRT inside) -> TensorRT engine + sidecar, one module per stage:

* :mod:`export.trt.dispatch`   the build path of a TensorRT version (strongly typed >= 11, builder flags 8.6-10.x)
* :mod:`export.trt.sources`    the plugin graph a build parses (FP16 / Q/DQ variants written when missing)
* :mod:`export.trt.nms`        the NMS route: EfficientNMS_TRT plugin or TensorRT's INMSLayer (model_nms.onnx)
* :mod:`export.trt.settings`   BuildSettings, argument validation, engine freshness (build key)
* :mod:`export.trt.calibrator` INT8 calibration batches, cache, IInt8EntropyCalibrator2
* :mod:`export.trt.builder`    EngineBuilder, build_engine
* :mod:`export.trt.verify`     the built engine against the plugin graph's CPU reference
* :mod:`export.trt.cli`        ``python -m export.trt``
* :mod:`export.trt.env`        what TensorRT / CUDA this machine has (never crashes asking)

Nothing here imports tensorrt or a CUDA binding at import time.
"""
from __future__ import annotations

from export.trt.builder import BuildError, EngineBuilder, build_engine, check_environment
from export.trt.calibrator import (CalibrationBatches, calibration_cache_valid, calibration_images,
                                   make_entropy_calibrator, write_calibration_cache)
from export.trt.cli import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, build_parser, main
from export.trt.dispatch import BuildPath, choose_build_path
from export.trt.nms import NmsRoute, choose_nms_route
from export.trt.settings import (PRECISIONS, BuildSettings, build_key, default_engine_path, engine_is_fresh,
                                 engine_meta, parse_batch, precision_from_flags, read_onnx_meta, resolve_settings)
from export.trt.verify import verify_engine

__all__ = ["PRECISIONS", "EXIT_OK", "EXIT_FAILED", "EXIT_UNAVAILABLE", "BuildError", "BuildPath", "BuildSettings",
           "CalibrationBatches", "EngineBuilder", "NmsRoute", "build_engine", "build_key", "build_parser",
           "calibration_cache_valid", "calibration_images", "check_environment", "choose_build_path", "choose_nms_route",
           "default_engine_path",
           "engine_is_fresh", "engine_meta", "main", "make_entropy_calibrator", "parse_batch",
           "precision_from_flags", "read_onnx_meta", "resolve_settings", "verify_engine", "write_calibration_cache"]
