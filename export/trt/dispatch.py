"""Which way an engine is built, decided in one place from the TensorRT version (and ``--typing``):

    path             TensorRT        precision comes from            INT8 scales from
    strongly-typed   >= 11 (and      the ONNX: model_trt_fp16.onnx   the Q/DQ graph model_trt_int8.onnx
                     10.12+ on         (mixed precision), the Q/DQ     (export.qdq_trt), calibrated when
                     request)          graph model_trt_int8.onnx       the graph is written
    builder-flags    8.6 - 10.x      BuilderFlag.FP16 / INT8 on       IInt8EntropyCalibrator2 + calib.cache
                     (Jetson:          model_trt.onnx (weak typing)
                     JetPack's 10.x)

TensorRT 11 removed weak typing (``BuilderFlag.FP16`` / ``INT8``, ``int8_calibrator``, the
calibrators, ``platform_has_fast_*``): every network is strongly typed and the
``STRONGLY_TYPED`` creation flag is accepted and ignored. TensorRT 11.4 does not support JetPack,
so Jetson stays on 10.x and the builder-flags path. Strong typing exists from 10.12 on as an
explicit network flag (NVIDIA's migration guide), so ``--typing strongly-typed`` can be asked
for there. The engine's sidecar records the path (:meth:`BuildPath.sidecar`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.trt.env import parse_version
from runtime.errors import BackendUnavailable, check_choice

TYPINGS = ("auto", "strongly-typed", "builder-flags")
OLDEST = (8, 6)
STRONG_FROM = (10, 12)   # STRONGLY_TYPED usable on request
ONLY_STRONG_FROM = (11,)  # weak typing removed
STRONG_GRAPHS = {"fp32": "model_trt.onnx", "fp16": "model_trt_fp16.onnx", "int8": "model_trt_int8.onnx"}


@dataclass(frozen=True)
class BuildPath:
    """One of the two build paths, for one TensorRT version; ``reason`` says why it was chosen."""

    name: str
    tensorrt: str
    reason: str

    @property
    def strongly_typed(self) -> bool:
        return self.name == "strongly-typed"

    def network_flags(self, trt: Any) -> int:
        """``create_network`` flags: STRONGLY_TYPED on the strongly typed path (ignored by 11.x,
        required by 10.x), EXPLICIT_BATCH before TensorRT 10 (implicit since), else 0."""
        flag = trt.NetworkDefinitionCreationFlag
        if self.strongly_typed:
            return 1 << int(flag.STRONGLY_TYPED) if hasattr(flag, "STRONGLY_TYPED") else 0
        major = (parse_version(self.tensorrt) or (0,))[0]
        return 0 if major >= 10 else 1 << int(flag.EXPLICIT_BATCH)

    def graph_for(self, precision: str) -> str:
        """The file name of the plugin graph this path parses for ``precision``."""
        if not self.strongly_typed:
            return STRONG_GRAPHS["fp32"]
        if precision not in STRONG_GRAPHS:
            raise ValueError(f"--{precision} has no strongly typed engine: the ONNX states every layer's type, so "
                             f"build --fp16 (mixed precision graph) or --int8 (Q/DQ graph) (TensorRT {self.tensorrt}"
                             f", path {self.name})")
        return STRONG_GRAPHS[precision]

    def sidecar(self) -> dict[str, Any]:
        return {"name": self.name, "tensorrt": self.tensorrt, "reason": self.reason}


def choose_build_path(trt_version: str, typing: str = "auto") -> BuildPath:
    """The build path for TensorRT ``trt_version`` and the ``--typing`` request. BackendUnavailable
    for a TensorRT older than 8.6 (or unreadable version), ValueError for a path it cannot take."""
    check_choice("--typing", typing, TYPINGS)
    v = parse_version(trt_version)
    if v is None or v < OLDEST:
        raise BackendUnavailable(f"TensorRT {trt_version} is older than 8.6 (or its version is unreadable): this "
                                 f"export needs TensorRT 8.6 - 10.x (builder flags) or >= 11 (strongly typed)")
    if typing == "builder-flags" and v >= ONLY_STRONG_FROM:
        raise ValueError(f"TensorRT {trt_version} has no builder-flags path (BuilderFlag.FP16/INT8 and the INT8 "
                         f"calibrators were removed in 11): use --typing auto")
    if typing == "strongly-typed" and v < STRONG_FROM:
        raise ValueError(f"TensorRT {trt_version} predates strongly typed builds of this export (10.12+): use "
                         f"--typing auto (builder flags)")
    if v >= ONLY_STRONG_FROM:
        return BuildPath("strongly-typed", trt_version, "TensorRT >= 11: every network is strongly typed")
    if typing == "strongly-typed":
        return BuildPath("strongly-typed", trt_version, "requested with --typing strongly-typed (TensorRT 10.12+)")
    return BuildPath("builder-flags", trt_version, "TensorRT 8.6 - 10.x: builder flags (FP16/INT8) and the "
                                                   "INT8 entropy calibrator")


def network_types(network: Any, trt: Any) -> dict[str, Any]:
    """What a parsed network computes in: FP16 tensors and Q/DQ layers counted over its layers,
    and its I/O tensor types (name -> numpy dtype name, as in the ONNX sidecars)."""
    half, qdq = 0, 0
    qdq_types = {getattr(trt.LayerType, n, None) for n in ("QUANTIZE", "DEQUANTIZE")} - {None}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        qdq += int(layer.type in qdq_types)
        half += sum(int(layer.get_output(j).dtype == trt.DataType.HALF) for j in range(layer.num_outputs))
    io = {t.name: str(np.dtype(trt.nptype(t.dtype))) for t in
          [network.get_input(i) for i in range(network.num_inputs)] +
          [network.get_output(i) for i in range(network.num_outputs)]}
    return {"fp16_tensors": half, "qdq_layers": qdq, "io_types": io}


def check_typed_network(precision: str, types: dict[str, Any], onnx: Path) -> str | None:
    """Why a strongly typed network parsed from ``onnx`` would build something other than
    ``precision`` (an FP16 / INT8 name over an FP32 build), or None."""
    if precision == "fp16" and not types["fp16_tensors"]:
        return f"{onnx.name} parsed into a network without one FP16 tensor: refusing an FP32 engine under an FP16 name"
    if precision == "int8" and not types["qdq_layers"]:
        return f"{onnx.name} parsed into a network without Q/DQ layers: refusing an FP32 engine under an INT8 name"
    if precision == "fp32" and (types["fp16_tensors"] or types["qdq_layers"]):
        return f"{onnx.name} holds FP16 or Q/DQ layers: build it with --fp16 / --int8, not as FP32"
    return None
