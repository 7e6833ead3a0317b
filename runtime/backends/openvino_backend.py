"""OpenVINO backend: the exported ONNX graphs (raw, ONNX-NMS, INT8 Q/DQ) or an OpenVINO IR
(``.xml`` + ``.bin``, written by ``python -m export.openvino``) on the CPU.

::

    det = load_detector("exports/kd/model_nms.onnx", provider="openvino")   # the ONNX file itself
    det = load_detector("exports/kd/openvino/model_nms.xml", threads=1)     # its IR
    det = OVDetector(path, hint="throughput", streams=2)                    # parallel requests

OpenVINO reads the ONNX graphs as they are: the ONNX ``NonMaxSuppression`` tail of the NMS graph,
and the Q/DQ pairs of the INT8 graph, which its CPU plugin runs as INT8 convolutions. Inference
precision is the graph's (``precision="f32"``) unless ``precision=None`` lets OpenVINO pick its
CPU default (bf16 on CPUs with AVX512-BF16 / AMX), as a user who only sets a performance hint gets.
Imports openvino when a detector is built; never torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.detector import Detector
from runtime.errors import BackendUnavailable, check_choice, import_optional
from runtime.integrity import check_io_shapes
from runtime.metadata import ModelMeta, graph_label, read_model_meta
from runtime.outputs import INPUT_NAME, NMS_OUTPUTS, RAW_OUTPUTS, output_kind

__all__ = ["HINTS", "OVDetector", "compile_config", "import_openvino", "open_model"]

HINTS = ("latency", "throughput")
SUFFIXES = (".onnx", ".xml")


def import_openvino() -> Any:
    """The ``openvino`` module, or a one-line :class:`BackendUnavailable` saying how to install it."""
    return import_optional("openvino", "OpenVINO", "pip install openvino (or pip install 'fdet[openvino]')")


_CORE: list[Any] = []


def _dims(shape: Any) -> list[int | None]:
    """An OpenVINO partial shape as ints, None where a dimension is dynamic (rank must be static)."""
    if shape.rank.is_dynamic:
        return []
    return [d.get_length() if d.is_static else None for d in shape]


def shared_core() -> Any:
    """The process's one ``openvino.Core`` (OpenVINO's advice: a Core is heavy). Also a fix: compiled
    models of two Cores released one after the other left the process to die (SIGSEGV) on its next
    signal, e.g. Ctrl-C (measured with openvino 2025.x on this project's graphs)."""
    if not _CORE:
        _CORE.append(import_openvino().Core())
    return _CORE[0]


# OpenVINO's inference precisions below f32 -> the product's precision names (parity tolerances).
LOWERED = {"bf16": "bf16", "f16": "fp16"}


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can infer in bf16 on this CPU (AVX512-BF16 / AMX)."""
    return "BF16" in shared_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_config(hint: str = "latency", threads: int | None = None, streams: int | None = None,
                   precision: str | None = "f32") -> dict[str, Any]:
    """CPU plugin properties: performance hint, inference threads (None: OpenVINO's choice, every
    core), streams (parallel requests; None: what the hint picks) and inference precision (None:
    OpenVINO's CPU default)."""
    check_choice("OpenVINO performance hint", hint, HINTS)
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper()}
    for key, value in (("INFERENCE_NUM_THREADS", threads), ("NUM_STREAMS", streams)):
        if value is not None:
            if int(value) < 1:
                raise ValueError(f"OpenVINO {key.lower()} must be >= 1, got {value!r}")
            cfg[key] = int(value)
    if precision is not None:
        check_choice("OpenVINO inference precision", precision, ("f32", "bf16", "f16"))
        cfg["INFERENCE_PRECISION_HINT"] = precision
    return cfg


def _contract_name(names: set[str]) -> str | None:
    """The graph-contract name among an output tensor's names (OpenVINO keeps every name a tensor had,
    e.g. an internal one beside ``num_detections``), or None."""
    known = [n for n in sorted(names) if n in NMS_OUTPUTS + RAW_OUTPUTS]
    return known[0] if known else None


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[0] if lines else type(e).__name__


class OVDetector(Detector):
    """An exported ``.onnx`` graph or its IR ``.xml`` (with the sidecar ``<stem>.json``) on OpenVINO's CPU plugin.

    ``hint``: "latency" (one stream, every thread on one request) or "throughput" (several streams,
    see :meth:`fork` and :meth:`infer_queue`); ``threads``: inference threads (default: every core
    OpenVINO may use); ``streams``: parallel streams; ``precision``: "f32" (default) or None for
    OpenVINO's own CPU choice. The graph's output names decide raw vs NMS outputs.
    """

    def __init__(self, path: Any, meta: ModelMeta | None = None, threads: int | None = None,
                 hint: str = "latency", streams: int | None = None, precision: str | None = "f32",
                 device: str = "cpu") -> None:
        if str(device) != "cpu":
            raise ValueError(f"the OpenVINO backend runs on device 'cpu' here, got {device!r}")
        ov = import_openvino()
        self._ov = ov
        path = Path(path)
        meta = meta or read_model_meta(path)
        super().__init__(meta)
        self.path, self.hint, self.threads = path, hint, threads
        config = compile_config(hint, threads, streams, precision)
        try:
            core = shared_core()
            model = core.read_model(str(path))
            self._check_input(model)
            self._model, self._config = model, config
            self._compiled: dict[int, Any] = {}     # batch size -> compiled model (shared by forks)
            self._requests: dict[int, Any] = {}     # batch size -> this detector's infer request
            self.compiled = self._compiled_for(getattr(self, "fixed_batch", None) or 1)
        except (ValueError, BackendUnavailable):
            raise
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own RuntimeError subclasses
            raise RuntimeError(f"OpenVINO cannot load {path.name}: {_first_line(e)}") from None
        self.output_names = [_contract_name(o.get_names()) or o.get_any_name() for o in self.compiled.outputs]
        self.kind = output_kind(self.output_names)
        self.precision_run = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "f32", "bf16"
        self.name = f"openvino-cpu-{graph_label(meta)}" + ("-throughput" if hint == "throughput" else "")
        if self.precision_run in LOWERED and meta.precision == "fp32":
            self.name = self.name.replace("openvino-cpu-", f"openvino-cpu-{self.precision_run}-", 1)

    @property
    def eval_precision(self) -> str:
        """The precision parity holds this detector to: the graph's, or the one OpenVINO lowered it to."""
        return LOWERED.get(self.precision_run, self.meta.precision) if self.meta.precision == "fp32" \
            else self.meta.precision

    def _check_input(self, model: Any) -> None:
        """One input named ``images``, rank 4, H and W as the sidecar says; a fixed batch is noted."""
        names = [sorted(i.get_names()) for i in model.inputs]
        if len(names) != 1 or INPUT_NAME not in names[0]:
            raise ValueError(f"{self.path.name}: expected one input named {INPUT_NAME!r}, got {names}")
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4:
            raise ValueError(f"{self.path.name}: input must be rank 4 ([B, 3, H, W] or [B, H, W, 3]), got {shape}")
        check_io_shapes(self.path.name, self.meta, _dims(shape),
                        {_contract_name(o.get_names()) or o.get_any_name(): _dims(o.get_partial_shape())
                         for o in model.outputs}, sidecar=f"its sidecar {self.path.with_suffix('.json').name}")
        if shape[0].is_static:
            self.fixed_batch = shape[0].get_length()
        self.input_dtype = np.dtype(model.inputs[0].get_element_type().to_dtype())

    def _compiled_for(self, n: int) -> Any:
        """The model compiled for a static batch of ``n`` (cached). Every graph is compiled for the input
        shape it runs: OpenVINO (2026.4) computes the INT8 body of ``model_int8_nms.onnx`` wrongly when the
        NMS tail leaves the graph's shapes dynamic (class scores before the tail off by up to 9, mAP 7.79 vs
        ONNX Runtime's 28.35 on a trained student) and within one quantization step of ONNX Runtime once the
        input shape is static, as it is for ``model_int8.onnx``."""
        if n not in self._compiled:
            model = self._model
            shape = model.inputs[0].get_partial_shape()
            if shape.is_dynamic:
                h, w = self.meta.input_size
                nhwc = getattr(self.meta, "input_format", "float_nchw") == "uint8_nhwc"
                dims = [n, h, w, 3] if nhwc else [n, shape[1].get_length() if shape[1].is_static else 3, h, w]
                model = model.clone()
                model.reshape({model.inputs[0]: self._ov.PartialShape(dims)})
            self._compiled[n] = shared_core().compile_model(model, "CPU", self._config)
        return self._compiled[n]

    def _request_for(self, n: int) -> tuple[Any, Any]:
        compiled = self._compiled_for(n)
        if n not in self._requests:
            self._requests[n] = compiled.create_infer_request()
        return compiled, self._requests[n]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.dtype != self.input_dtype or not batch.flags.c_contiguous:
            batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        compiled, request = self._request_for(int(batch.shape[0]))
        res = request.infer({0: batch}, share_inputs=True, share_outputs=False)
        return {name: res[port] for name, port in zip(self.output_names, compiled.outputs)}

    # -- throughput mode ------------------------------------------------------------------
    def optimal_requests(self) -> int:
        """How many requests in flight keep every stream busy (OpenVINO's own figure)."""
        return int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def infer_queue(self, jobs: int | None = None) -> Any:
        """An ``openvino.AsyncInferQueue`` of ``jobs`` requests (default :meth:`optimal_requests`)."""
        return self._ov.AsyncInferQueue(self.compiled, int(jobs or self.optimal_requests()))

    def fork(self) -> OVDetector:
        """A detector for another thread: the same compiled model (its streams are shared), its own
        infer request and input buffer."""
        other = object.__new__(OVDetector)
        other.__dict__.update(self.__dict__)
        Detector.__init__(other, self.meta)
        other._requests = {}
        return other

    def close(self) -> None:
        self._requests, self._compiled = {}, {}
        self.compiled = None


def open_model(path: Path, *, device: str = "cpu", provider: str | None = None, fp16: bool = False,
               **kwargs: Any) -> Detector:
    """An ``.onnx`` graph (``provider="openvino"``) or an OpenVINO IR ``.xml`` on OpenVINO's CPU plugin."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"OpenVINO opens {' or '.join(SUFFIXES)} files, got {path.name}")
    if fp16:
        raise ValueError(f"fp16 is not an option of the OpenVINO backend ({path.name} runs in the precision it "
                         f"was exported with); pass precision='bf16' or 'f16' to let OpenVINO lower it")
    meta = read_model_meta(path)
    if meta.graph == "trt":
        raise RuntimeError(f"{path.name} is the TensorRT plugin graph (EfficientNMS_TRT), which OpenVINO cannot "
                           f"run; use model_nms.onnx (ONNX NonMaxSuppression) or model_raw.onnx")
    return OVDetector(path, meta=meta, device=device, **kwargs)
