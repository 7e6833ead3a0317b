"""ONNX Runtime backend: raw, ONNX-NMS and INT8 graphs on CPU (CUDA / TensorRT EPs when installed).

Lean by construction: full graph optimisation, one intra-op thread per core, sequential
execution, outputs fetched by name. Imports onnxruntime when a detector is built; never torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import cpu_cores
from runtime.detector import Detector
from runtime.errors import BackendUnavailable, check_choice, import_optional
from runtime.integrity import check_io_shapes
from runtime.metadata import ModelMeta, graph_label, read_model_meta
from runtime.outputs import INPUT_NAME, output_kind

_EP = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def import_ort() -> Any:
    """The ``onnxruntime`` module, or a one-line :class:`BackendUnavailable` saying how to install it."""
    return import_optional("onnxruntime", "ONNX Runtime", "pip install onnxruntime (or onnxruntime-gpu)")


def session_options(ort: Any, threads: int | None = None) -> Any:
    """SessionOptions: ORT_ENABLE_ALL, intra-op threads = cores (or ``threads``), sequential."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads) if threads else cpu_cores()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
    return so


def providers_for(ort: Any, provider: str | None, device: str) -> list[Any]:
    """Execution-provider list for ``provider`` (None: from ``device``); BackendUnavailable if missing."""
    name = provider or ("cuda" if str(device).startswith("cuda") else "cpu")
    check_choice("ONNX Runtime provider", name, _EP)
    if str(device) not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    ep = _EP[name]
    available = ort.get_available_providers()
    if ep not in available:
        raise BackendUnavailable(f"ONNX Runtime provider {name!r} ({ep}) is not available here; installed: "
                                 f"{', '.join(available)}")
    if name == "cpu":
        return [ep]
    device_id = int(str(device).split(":")[1]) if ":" in str(device) else 0
    opts: dict[str, Any] = {"device_id": device_id}
    chain: list[Any] = [(ep, opts)]
    if name == "tensorrt":
        opts.update({"trt_fp16_enable": False, "trt_engine_cache_enable": True})
        if "CUDAExecutionProvider" in available:
            chain.append(("CUDAExecutionProvider", {"device_id": device_id}))
    return chain + ["CPUExecutionProvider"]


# The graph input each sidecar input_format declares: ORT type, dtype, shape in words, (H, W) axes.
_INPUT_CONTRACT = {"float_nchw": ("tensor(float)", np.float32, "float32 [B, 3, H, W]", (2, 3)),
                   "uint8_nhwc": ("tensor(uint8)", np.uint8, "uint8 [B, H, W, 3]", (1, 2))}


def input_contract(name: str, meta: ModelMeta, ort_type: str, shape: list[Any]) -> tuple[Any, tuple[int, int]]:
    """(numpy dtype the graph input takes, its (H, W) axes) for the sidecar's ``input_format``;
    ValueError when the graph's input does not have that type and rank."""
    want_type, dtype, words, hw_axes = _INPUT_CONTRACT[meta.input_format]
    channels = shape[3 if meta.input_format == "uint8_nhwc" else 1] if len(shape) == 4 else None
    if ort_type != want_type or len(shape) != 4 or (isinstance(channels, int) and channels != 3):
        raise ValueError(f"{name}: the sidecar's input_format {meta.input_format!r} needs a {words} input, "
                         f"the graph takes {ort_type} {shape}")
    return dtype, hw_axes


class ORTDetector(Detector):
    """An exported ``.onnx`` graph (with its sidecar) on ONNX Runtime.

    ``provider``: None / "cpu", "cuda", "tensorrt". ``threads``: intra-op threads (default: the
    cores this process may use). The graph's output names decide raw vs NMS outputs.
    """

    def __init__(self, path: Any, meta: ModelMeta | None = None, provider: str | None = None,
                 device: str = "cpu", threads: int | None = None) -> None:
        ort = import_ort()
        path = Path(path)
        meta = meta or read_model_meta(path)
        super().__init__(meta)
        self.path = path
        chain = providers_for(ort, provider, device)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options(ort, threads),
                                                providers=chain)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"ONNX Runtime cannot load {path.name}: {first}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ValueError(f"{path.name}: expected one input named {INPUT_NAME!r}, got "
                             f"{[i.name for i in inputs]}")
        shape = inputs[0].shape
        self.input_dtype, hw_axes = input_contract(path.name, meta, inputs[0].type, shape)
        h, w = meta.input_size
        gh, gw = (shape[a] for a in hw_axes)
        if isinstance(gh, int) and isinstance(gw, int) and (gh, gw) != (h, w):
            raise ValueError(f"{path.name}: graph input is {gh}x{gw} but the sidecar says "
                             f"input_size {h}x{w}")
        if isinstance(shape[0], int):
            self.fixed_batch = shape[0]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.kind = output_kind(self.output_names)
        check_io_shapes(path.name, meta, shape, {o.name: o.shape for o in self.session.get_outputs()},
                        sidecar=f"its sidecar {path.with_suffix('.json').name}")
        used = self.session.get_providers()[0]
        short = {v: k for k, v in _EP.items()}.get(used, used)
        self.provider = short
        self.name = f"onnxruntime-{short}-{graph_label(meta)}"

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.dtype != self.input_dtype or not batch.flags.c_contiguous:
            batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        values = self.session.run(self.output_names, {INPUT_NAME: batch})
        return dict(zip(self.output_names, values))

    def close(self) -> None:
        self.session = None


def open_model(path: Path, *, device: str = "cpu", provider: str | None = None, fp16: bool = False,
               **kwargs: Any) -> Detector:
    """An ``.onnx`` graph: ONNX Runtime, or for the TensorRT plugin graph (sidecar graph ``trt``) its
    CPU reference (``provider="reference"``) or ORT's TensorRT execution provider."""
    if provider == "openvino":  # the same graph on OpenVINO's CPU plugin
        from runtime.backends.openvino_backend import open_model as open_openvino

        return open_openvino(path, device=device, fp16=fp16, **kwargs)
    meta = read_model_meta(path)
    if fp16:
        raise ValueError(
            f"fp16 is not an ONNX Runtime option ({path.name} runs in the precision it was exported "
            f"with, {meta.precision}); use an fp16 TensorRT engine or the PyTorch backend on CUDA"
        )
    if meta.graph == "trt":
        if provider == "reference":
            from runtime.backends.trt_reference_backend import TRTReferenceDetector

            return TRTReferenceDetector(path, meta=meta, **kwargs)
        if provider != "tensorrt":
            raise RuntimeError(
                f"{path.name} is the TensorRT plugin graph (EfficientNMS_TRT), which ONNX Runtime's "
                f"{provider or 'cpu'} provider cannot run: build an engine (python -m export.trt), "
                f"or pass provider='reference' for its CPU reference"
            )
    elif provider == "reference":
        raise ValueError(f"provider='reference' is for the TensorRT plugin graph only; {path.name} is graph "
                         f"{meta.graph!r}")
    return ORTDetector(path, meta=meta, provider=provider, device=device, **kwargs)
