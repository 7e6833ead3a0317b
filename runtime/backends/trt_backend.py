"""Native TensorRT backend: a serialized engine (``.engine``) and its sidecar JSON.

TensorRT 10 / 11 name-based I/O (the runtime API is the same in both; only the build differs,
see export.trt.dispatch): the engine's tensors are discovered with ``num_io_tensors`` /
``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_shape`` / ``get_tensor_dtype`` (and the
optimisation profile for a dynamic batch); per batch size the input shape is set with
``set_input_shape``, the output shapes read back from the context, buffers are bound with
``set_tensor_address`` and the engine runs with ``execute_async_v3`` on our own stream.
Optionally the copy-in, the enqueue and the copies-out are captured once per batch size into a
CUDA graph and replayed.

Device memory comes from cuda-python (``cuda.bindings.runtime``, or the older ``cuda.cudart``)
or, where that is what the image ships (Jetson), pycuda. Host buffers are page-locked.

Nothing here needs a GPU at import; without TensorRT or a CUDA device the detector fails to build
with a one-line :class:`~runtime.errors.BackendUnavailable`. :func:`discover_io`, :func:`plan_io`
and the output parsing (shared with every backend, :func:`runtime.detector.detections_from_nms`)
are plain code tested with mocks.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.detector import Detector
from runtime.errors import BackendUnavailable
from runtime.integrity import check_io_shapes
from runtime.metadata import ModelMeta, read_sidecar
from runtime.outputs import INPUT_NAME, output_kind


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a one-line :class:`BackendUnavailable` saying why the backend cannot run."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(
            "TensorRT backend unavailable: the 'tensorrt' Python package is not installed on this machine "
            "(it needs an NVIDIA GPU host: pip install tensorrt, or JetPack's python3-libnvinfer on Jetson)"
        ) from None
    except Exception as e:  # noqa: BLE001 - a broken install (missing libnvinfer.so) raises OSError etc.
        raise BackendUnavailable(f"TensorRT backend unavailable: 'import tensorrt' failed: {str(e).splitlines()[0]}") from None
    return trt


# --------------------------------------------------------------------------------------------
# I/O discovery (mock-testable: needs only the engine's and the trt module's attributes).
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor. ``shape`` has -1 for dynamic dims; ``profile`` is the
    (min, opt, max) shapes of optimisation profile 0 for a dynamic input, else None."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None


def discover_io(engine: Any, trt: Any) -> list[TensorSpec]:
    """Every I/O tensor of a TensorRT 10 engine, in engine order."""
    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        profile = None
        if is_input and any(d < 0 for d in shape):
            profile = tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
        specs.append(TensorSpec(name, is_input, shape, dtype, profile))
    return specs


@dataclass(frozen=True)
class IOPlan:
    """What the detector needs from the discovered I/O: the input, output names and kind, and
    the batch sizes the engine takes (``fixed_batch`` for a static batch dim, else ``max_batch``
    from the profile)."""

    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    kind: str
    fixed_batch: int | None
    max_batch: int | None
    min_batch: int


def plan_io(specs: Sequence[TensorSpec], meta: ModelMeta, where: str = "engine") -> IOPlan:
    """Check the discovered I/O against the sidecar and DESIGN's graph contract."""
    inp, outputs = split_io(specs, meta, where)
    kind = output_kind([s.name for s in outputs])
    check_io_shapes(where, meta, inp.shape, {s.name: s.shape for s in outputs})
    return batch_plan(inp, outputs, kind, where)


def split_io(specs: Sequence[TensorSpec], meta: ModelMeta, where: str = "engine") -> tuple[TensorSpec,
                                                                                           tuple[TensorSpec, ...]]:
    """(the input, the outputs) after checking the one input: ``images`` float32 [B, 3, H, W] at the sidecar's
    input size (or a profile reaching it); ValueError naming ``where`` otherwise."""
    inputs = [s for s in specs if s.is_input]
    outputs = tuple(s for s in specs if not s.is_input)
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ValueError(f"{where}: expected one input named {INPUT_NAME!r}, got {[s.name for s in inputs]}")
    inp = inputs[0]
    if len(inp.shape) != 4 or inp.shape[1] != 3:
        raise ValueError(f"{where}: input {INPUT_NAME!r} must be [B, 3, H, W], got {list(inp.shape)}")
    if inp.dtype != np.float32:
        raise ValueError(f"{where}: input {INPUT_NAME!r} must be float32, got {inp.dtype}")
    h, w = meta.input_size
    if inp.shape[2:] != (h, w) and not (inp.profile and inp.profile[2][2:] == (h, w)):
        raise ValueError(f"{where}: input is {list(inp.shape)} but the sidecar says input_size {h}x{w}")
    return inp, outputs


def batch_plan(inp: TensorSpec, outputs: tuple[TensorSpec, ...], kind: str, where: str = "engine") -> IOPlan:
    """The :class:`IOPlan` of checked I/O: a static batch dim is the only batch size, else the profile's range."""
    if inp.shape[0] > 0:
        return IOPlan(inp, outputs, kind, fixed_batch=inp.shape[0], max_batch=inp.shape[0], min_batch=inp.shape[0])
    if inp.profile is None:
        raise ValueError(f"{where}: input has a dynamic batch but no optimisation profile")
    return IOPlan(inp, outputs, kind, fixed_batch=None, max_batch=inp.profile[2][0], min_batch=inp.profile[0][0])


# --------------------------------------------------------------------------------------------
# CUDA memory: cuda-python or pycuda behind one small interface.
# --------------------------------------------------------------------------------------------
class _CudaPython:
    """cuda-python's runtime API (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # older cuda-python; ImportError propagates to the caller
        self.rt = cudart
        count = self._ok(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount", quiet=True)
        if not count:
            raise RuntimeError("no CUDA device")

    def _ok(self, result: Any, what: str, quiet: bool = False) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            msg = str(err) if quiet else f"{what} failed: {err}"
            raise RuntimeError(msg)
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

    def set_device(self, index: int) -> None:
        self._ok(self.rt.cudaSetDevice(index), "cudaSetDevice")

    def stream(self) -> Any:
        return self._ok(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, Any]:
        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        ptr = int(self._ok(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        arr = np.frombuffer(raw, dtype=np.uint8)[: int(np.prod(shape)) * np.dtype(dtype).itemsize]
        return arr.view(dtype).reshape(shape), ptr

    def host_free(self, token: Any) -> None:
        self.rt.cudaFreeHost(token)

    def h2d(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._ok(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync")

    def d2h(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._ok(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync")

    # CUDA graphs
    def begin_capture(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._ok(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: Any) -> Any:
        graph = self._ok(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        return self._ok(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._ok(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def device_name(self, index: int) -> str:
        props = self._ok(self.rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        name = props.name
        return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")


class _PyCuda:
    """pycuda (what many Jetson images ship). No CUDA-graph support here."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as cuda  # ImportError propagates

        cuda.init()
        if cuda.Device.count() == 0:
            raise RuntimeError("no CUDA device")
        self.cuda = cuda
        self._ctx = None

    def set_device(self, index: int) -> None:
        self._ctx = self.cuda.Device(index).retain_primary_context()
        self._ctx.push()

    def stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def malloc(self, nbytes: int) -> Any:
        return self.cuda.mem_alloc(max(int(nbytes), 1))

    def free(self, ptr: Any) -> None:
        ptr.free()

    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, Any]:
        arr = self.cuda.pagelocked_empty(shape, dtype)
        return arr, None

    def host_free(self, token: Any) -> None:
        pass

    def h2d(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def d2h(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def device_name(self, index: int) -> str:
        return self.cuda.Device(index).name()


def cuda_api() -> Any:
    """cuda-python if importable, else pycuda; BackendUnavailable (one line) if neither works."""
    errors = []
    for cls in (_CudaPython, _PyCuda):
        try:
            return cls()
        except ImportError as e:
            errors.append(f"{cls.name}: not installed ({e.name or e})")
        except Exception as e:  # noqa: BLE001 - no driver / no device / broken install
            errors.append(f"{cls.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise BackendUnavailable("TensorRT backend unavailable: no usable CUDA device or CUDA Python binding ("
                       + "; ".join(errors) + ")")


# --------------------------------------------------------------------------------------------
# The detector.
# --------------------------------------------------------------------------------------------
class _Slot:
    """Buffers and (optionally) a CUDA graph for one batch size."""

    def __init__(self) -> None:
        self.batch = 0
        self.host: dict[str, np.ndarray] = {}
        self.host_tokens: list[Any] = []
        self.device: dict[str, Any] = {}
        self.graph: Any = None


def engine_device_index(device: str) -> int:
    """The CUDA device index of ``device`` ("cuda", "cuda:N"; "cpu", the loaders' default, means cuda:0:
    engines run on GPUs only); ValueError for anything else."""
    dev = "cuda:0" if device in ("cpu", "cuda") else str(device)
    if not dev.startswith("cuda:") or not dev[5:].isdigit():
        raise ValueError(f"device for a TensorRT engine must be 'cuda' or 'cuda:N', got {device!r}")
    return int(dev[5:])


class EngineIO:
    """A deserialized engine run with name-based I/O, shared by the detector and the text classifier:
    :meth:`open_engine` (TensorRT, CUDA, I/O discovery and planning), one set of page-locked host and device
    buffers per batch size (optionally a CUDA graph), :meth:`infer` and :meth:`close`. Set ``path`` and
    ``cuda_graph`` before :meth:`open_engine`."""

    path: Path
    cuda_graph: bool = False

    def open_engine(self, meta: ModelMeta, device_index: int, plan: Any = plan_io) -> None:
        """Load ``self.path`` on CUDA device ``device_index``; ``plan(specs, meta, where) -> IOPlan`` checks the
        engine's I/O against the sidecar. BackendUnavailable (one line) without TensorRT or a CUDA device."""
        trt = import_tensorrt()
        self.cuda = cuda_api()
        self.device_index = device_index
        self.cuda.set_device(self.device_index)
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")  # EfficientNMS_TRT lives in the plugin library
        runtime = trt.Runtime(self.logger)
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise RuntimeError(deserialize_failure(self.path.name, meta, str(getattr(trt, "__version__", "?"))))
        self._runtime, self.engine = runtime, engine
        self.specs = discover_io(engine, trt)
        self.plan = plan(self.specs, meta, self.path.name)
        self.kind = self.plan.kind
        self.fixed_batch = self.plan.fixed_batch
        self.max_batch = self.plan.max_batch
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.path.name}")
        if self.cuda_graph and not hasattr(self.cuda, "begin_capture"):
            raise ValueError(f"cuda_graph=True needs cuda-python; this host has {self.cuda.name}")
        self.stream = self.cuda.stream()
        self._slots: dict[int, _Slot] = {}
        self._bound = 0

    def _slot(self, n: int) -> _Slot:
        if n < self.plan.min_batch or (self.max_batch is not None and n > self.max_batch):
            raise ValueError(f"batch {n} is outside the engine's batch range "
                             f"{self.plan.min_batch}..{self.max_batch}")
        slot = self._slots.get(n)
        if slot is None:
            slot = _Slot()
            slot.batch = n
            self.context.set_input_shape(INPUT_NAME, (n,) + self.plan.input.shape[1:])
            for spec in (self.plan.input,) + self.plan.outputs:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"TensorRT left {spec.name} with unresolved shape {shape} at batch {n}")
                host, token = self.cuda.host_empty(shape, spec.dtype)
                slot.host[spec.name] = host
                slot.host_tokens.append(token)
                slot.device[spec.name] = self.cuda.malloc(host.nbytes)
            self._slots[n] = slot
        if self._bound != n:
            self.context.set_input_shape(INPUT_NAME, slot.host[INPUT_NAME].shape)
            for name, ptr in slot.device.items():
                self.context.set_tensor_address(name, int(ptr))
            self._bound = n
        return slot

    def _enqueue(self, slot: _Slot) -> None:
        self.cuda.h2d(slot.device[INPUT_NAME], slot.host[INPUT_NAME], self.stream)
        if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path.name}")
        for spec in self.plan.outputs:
            self.cuda.d2h(slot.host[spec.name], slot.device[spec.name], self.stream)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        slot = self._slot(batch.shape[0])
        np.copyto(slot.host[INPUT_NAME], batch, casting="same_kind")
        if self.cuda_graph:
            if slot.graph is None:
                self._enqueue(slot)  # TensorRT does its shape-dependent setup outside the capture
                self.cuda.synchronize(self.stream)
                self.cuda.begin_capture(self.stream)
                self._enqueue(slot)
                slot.graph = self.cuda.end_capture(self.stream)
            self.cuda.launch(slot.graph, self.stream)
        else:
            self._enqueue(slot)
        self.cuda.synchronize(self.stream)
        return {spec.name: slot.host[spec.name].copy() for spec in self.plan.outputs}

    def close(self) -> None:
        for slot in getattr(self, "_slots", {}).values():
            for ptr in slot.device.values():
                self.cuda.free(ptr)
            for token in slot.host_tokens:
                if token is not None:
                    self.cuda.host_free(token)
        self._slots = {}
        self.context = None
        self.engine = None


class TRTDetector(EngineIO, Detector):
    """A TensorRT engine file + its sidecar (``x.engine`` -> ``x.json``).

    ``device``: "cuda" / "cuda:N" ("cpu", the load_detector default, means cuda:0: engines run on
    GPUs only). ``fp16``: only a check that the engine was built in FP16 (precision is chosen at
    build time). ``cuda_graph``: capture copy-in + enqueue + copy-out per batch size and replay.
    """

    def __init__(self, path: Any, device: str = "cuda", fp16: bool = False, cuda_graph: bool = False,
                 meta: ModelMeta | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"engine file not found: {path}")
        meta = meta or read_sidecar(path)
        if fp16 and meta.precision not in ("fp16", "best"):
            raise ValueError(f"{path.name} was built with precision {meta.precision!r}; fp16 is chosen when "
                             f"the engine is built (python -m export.trt --fp16)")
        index = engine_device_index(device)
        Detector.__init__(self, meta)
        self.path = path
        self.name = f"tensorrt-{meta.precision}"
        self.cuda_graph = bool(cuda_graph)
        self.open_engine(meta, index)


def deserialize_failure(name: str, meta: ModelMeta, installed: str) -> str:
    """The one-line reason a TensorRT engine did not deserialize: engines only load in the TensorRT
    (and GPU) they were built with; the sidecar says which, and by which build path."""
    built = meta.versions.get("tensorrt", "unknown")
    path = (meta.extra.get("build_path") or {}).get("name", "unknown")
    gpu = meta.extra.get("gpu", "unknown GPU")
    hint = ("built with another TensorRT version" if built != installed else "built for another GPU or corrupt")
    flag = "" if meta.precision == "fp32" else f" --{meta.precision}"
    return (f"TensorRT {installed} could not deserialize {name}: {hint} (sidecar: TensorRT {built}, {path} build "
            f"path, {gpu}); rebuild it here with python -m export.trt --onnx <model_trt.onnx>{flag}")


def open_model(path: Path, *, device: str = "cpu", provider: str | None = None, fp16: bool = False,
               **kwargs: Any) -> Detector:
    """A serialized engine; ``device="cpu"`` (the load_detector default) means cuda:0."""
    return TRTDetector(path, device=device, fp16=fp16, **kwargs)
