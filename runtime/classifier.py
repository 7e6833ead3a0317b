"""The text / non-text image classifier at run time: one interface over PyTorch, ONNX Runtime and OpenVINO.

::

    clf = load_classifier("exports/text_kd/model.onnx")                      # ONNX Runtime, CPU
    clf = load_classifier("exports/text_kd/model.onnx", backend="openvino")  # OpenVINO's CPU plugin
    clf = load_classifier("runs/text_kd/best.pt")                             # PyTorch
    clf = load_classifier("exports/text_kd/model_fp16.engine")                # TensorRT (python -m export.trt)
    for r in clf.predict(images):       # images: uint8 [H, W, 3] RGB arrays (or paths), any sizes
        r["text_prob"], r["is_text"], r["regions"][3]   # float, bool, float32 [3, 3] region probabilities

Graph contract (written by ``python -m export.onnx`` for a text checkpoint, :mod:`export.text`): input
``images`` float32 [B, 3, H, W] normalised as the sidecar says; outputs ``text_prob`` float32 [B] (the
image-level text probability: the largest region probability, the logical OR of the regions) and
``region_prob_<g>`` float32 [B, g, g] for each grid g of the sidecar's ``extra.grids`` (row-major regions,
top row first). The sidecar has ``task: "text"``; ``extra.threshold`` is the image-level decision threshold.
A graph exported with ``--uint8-input`` (``model_u8.onnx``, sidecar ``input_format: "uint8_nhwc"``) takes
``images`` uint8 [B, H, W, 3] RGB (the resized pixels) and normalises inside; the ONNX Runtime and OpenVINO
classifiers feed it that, as the detectors do.

Preprocessing is :class:`runtime.preprocess.Preprocessor` (resize to the sidecar's input size, normalise),
the one the detectors use. Imports numpy and Pillow; each backend imports its library when a model is
opened (torch only for a checkpoint, in :mod:`runtime.backends.torch_backend`).
"""
from __future__ import annotations

import abc
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.trt_backend import EngineIO, IOPlan, TensorSpec, batch_plan, engine_device_index, split_io
from runtime.errors import check_choice
from runtime.integrity import check_file_hash
from runtime.metadata import ModelMeta, read_model_meta, read_sidecar, sidecar_path
from runtime.outputs import INPUT_NAME
from runtime.preprocess import Preprocessor
from runtime.sizes import as_hw

__all__ = ["BACKENDS", "Classifier", "TEXT_PROB", "load_classifier", "model_task", "refuse_text_export",
           "region_output", "text_meta", "text_output_names", "text_meta_problem"]

TEXT_PROB = "text_prob"
REGION_PREFIX = "region_prob_"
BACKENDS = ("auto", "pytorch", "onnxruntime", "openvino", "tensorrt")
_CHECKPOINT_SUFFIXES = (".pt", ".pth")
_ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_TORCH_BACKEND = "runtime.backends.torch_backend"


def region_output(grid: int) -> str:
    """The graph output holding the [B, g, g] region probabilities of grid ``grid``."""
    return f"{REGION_PREFIX}{int(grid)}"


def text_output_names(grids: Sequence[int]) -> list[str]:
    """The graph's outputs in order: ``text_prob``, then ``region_prob_<g>`` for the grids, smallest first."""
    return [TEXT_PROB, *(region_output(g) for g in sorted(int(g) for g in grids))]


def text_meta_problem(meta: ModelMeta) -> str | None:
    """Why ``meta`` is not a usable text classifier sidecar (one phrase), or None."""
    grids = meta.extra.get("grids")
    if not isinstance(grids, list) or not grids or not all(isinstance(g, int) and g > 0 for g in grids):
        return f"extra.grids must be a list of positive ints, got {grids!r}"
    t = meta.extra.get("threshold", 0.5)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
        return f"extra.threshold must be a number in [0, 1], got {t!r}"
    return None


def text_meta(model_name: str, extra: dict[str, Any], source: str) -> ModelMeta:
    """The sidecar of a text checkpoint (graph "checkpoint", fp32) from its ``extra`` (``img_size`` [H, W] or int,
    ``mean``, ``std``, ``grids``, ``threshold``); ValueError naming ``source`` and the missing key."""
    missing = [k for k in ("img_size", "mean", "std", "grids") if k not in extra]
    if missing:
        raise ValueError(f"{source}: a text checkpoint needs extra {missing} (its input size, normalisation and "
                         f"grids); expected a checkpoint written by python -m distill.train --task text")
    hw = as_hw(extra["img_size"], f"{source}: extra img_size")
    return ModelMeta(model_name=model_name, class_names=["text"], category_ids=[1], input_size=hw,
                     mean=tuple(extra["mean"]), std=tuple(extra["std"]), graph="checkpoint", task="text",
                     extra={"grids": [int(g) for g in extra["grids"]],
                            "threshold": float(extra.get("threshold", 0.5)), "checkpoint": source})


def model_task(path: str | os.PathLike[str]) -> str:
    """"text" or "detect": what the model file at ``path`` is, from its sidecar; a checkpoint (file or run
    folder) is read by the PyTorch backend. "unknown" when it cannot be told here (no file, no sidecar, no
    torch): the backend that opens it reports why."""
    p = Path(path)
    if not p.exists():
        return "unknown"
    if p.is_dir() or p.suffix.lower() in _CHECKPOINT_SUFFIXES:
        try:
            return importlib.import_module(_TORCH_BACKEND).checkpoint_task(p)
        except (ImportError, ValueError):  # no torch here, or not a readable checkpoint: the caller reports it
            return "unknown"
    try:
        return read_model_meta(p).task
    except ValueError:
        return "unknown"


def refuse_text_export(path: str | os.PathLike[str]) -> None:
    """ValueError (one line) when ``path`` is an exported text classifier (its sidecar says task "text"):
    :func:`runtime.load.load_detector`'s check. Anything else passes: the detector backends judge it."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() in _CHECKPOINT_SUFFIXES or not sidecar_path(p).is_file():
        return
    try:
        meta = read_sidecar(p)
    except ValueError:
        return
    if meta.task == "text":
        raise ValueError(f"{p.name} is a text / non-text classifier export ({meta.model_name}), not a detector: open "
                         f"it with runtime.load_classifier")


class Classifier(abc.ABC):
    """Base of every classifier backend: ``meta`` (the sidecar), ``name``, ``grids``, ``threshold``;
    subclasses implement :meth:`infer`."""

    name = "classifier"
    batch_size = 8

    def __init__(self, meta: ModelMeta, where: str = "model") -> None:
        why = text_meta_problem(meta) if meta.task == "text" else f"its task is {meta.task!r}, not 'text'"
        if why:
            raise ValueError(f"{where}: not a text classifier sidecar: {why}")
        self.meta = meta
        self.grids = tuple(sorted(int(g) for g in meta.extra["grids"]))
        self.threshold = float(meta.extra.get("threshold", 0.5))
        self._pre = Preprocessor.from_meta(meta, reuse_buffer=True)

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [B, 3, H, W] normalised (uint8 [B, H, W, 3] RGB when the sidecar's input_format is
        "uint8_nhwc") -> {``text_prob``: float32 [B], ``region_prob_<g>``: float32 [B, g, g]}; model only."""

    def preprocess(self, images: Sequence[Any]) -> np.ndarray:
        """Images -> float32 [B, 3, H, W] network input (resized to the sidecar's size, normalised; uint8
        [B, H, W, 3] resized pixels for a "uint8_nhwc" sidecar); a reused buffer: the next call overwrites it."""
        return self._pre(list(images))[0]

    def probabilities(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        """Images (uint8 HWC RGB arrays, paths, PIL images; any sizes) -> :meth:`infer`'s outputs for all of
        them, in batches of ``batch_size``."""
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            raise ValueError(f"images must be a list of images, got one {type(images).__name__}")
        parts = []
        for start in range(0, len(images), self.batch_size):
            out = self.infer(self.preprocess(images[start:start + self.batch_size]))
            parts.append({k: np.asarray(out[k], dtype=np.float32).copy() for k in text_output_names(self.grids)})
        if not parts:
            return {k: np.zeros((0,) if k == TEXT_PROB else (0, g, g), np.float32)
                    for k, g in zip(text_output_names(self.grids), (0, *self.grids))}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def predict(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        """One dict per image: ``text_prob`` float (image-level text probability), ``is_text`` bool
        (``text_prob >= threshold``), ``regions`` {g: float32 [g, g]} (region text probabilities, row-major)."""
        out = self.probabilities(images)
        return [{"text_prob": float(p), "is_text": bool(p >= self.threshold),
                 "regions": {g: out[region_output(g)][i] for g in self.grids}}
                for i, p in enumerate(out[TEXT_PROB])]

    def close(self) -> None:
        """Release the runtime's resources. Idempotent."""

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.meta.model_name!r}, grids={self.grids})"


def check_text_graph(where: str, meta: ModelMeta, input_names: list[str], output_names: list[str]) -> None:
    """ValueError (one line) unless the graph has the one input ``images`` and every output the sidecar's
    grids call for."""
    if input_names != [INPUT_NAME]:
        raise ValueError(f"{where}: expected one input named {INPUT_NAME!r}, got {input_names}")
    missing = [n for n in text_output_names(meta.extra["grids"]) if n not in output_names]
    if missing:
        raise ValueError(f"{where}: the graph lacks the outputs {missing} its sidecar's grids "
                         f"{meta.extra['grids']} call for (it has {output_names}): the sidecar belongs to another "
                         f"model; re-export")


class ORTClassifier(Classifier):
    """A text classifier graph on ONNX Runtime (``provider`` "cpu" by default; ``threads`` intra-op threads)."""

    def __init__(self, path: Path, meta: ModelMeta, provider: str | None = None, device: str = "cpu",
                 threads: int | None = None) -> None:
        from runtime.backends.ort_backend import input_contract, import_ort, providers_for, session_options
        super().__init__(meta, path.name)
        ort = import_ort()
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options(ort, threads),
                                                providers=providers_for(ort, provider, device))
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"ONNX Runtime cannot load {path.name}: {first}") from None
        self.output_names = [o.name for o in self.session.get_outputs()]
        inputs = self.session.get_inputs()
        check_text_graph(path.name, meta, [i.name for i in inputs], self.output_names)
        self.input_dtype = input_contract(path.name, meta, inputs[0].type, inputs[0].shape)[0]  # per input_format
        used = self.session.get_providers()[0].replace("ExecutionProvider", "").lower()   # "cpu", "cuda", ...
        self.name = f"onnxruntime-{used}-{meta.precision}"

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = text_output_names(self.grids)
        return dict(zip(names, self.session.run(names, {INPUT_NAME: np.ascontiguousarray(batch, self.input_dtype)})))

    def close(self) -> None:
        self.session = None


class OVClassifier(Classifier):
    """A text classifier graph on OpenVINO's CPU plugin, compiled for the sidecar's input size (any batch)."""

    def __init__(self, path: Path, meta: ModelMeta, threads: int | None = None, hint: str = "latency",
                 precision: str | None = "f32") -> None:
        from runtime.backends.openvino_backend import compile_config, import_openvino, shared_core
        super().__init__(meta, path.name)
        ov = import_openvino()
        try:
            model = shared_core().read_model(str(path))
            names = [o.get_any_name() for o in model.outputs]
            check_text_graph(path.name, meta, [i.get_any_name() for i in model.inputs], names)
            nhwc = meta.input_format == "uint8_nhwc"      # model_u8.onnx: uint8 [B, H, W, 3]
            model.reshape({model.inputs[0]: ov.PartialShape([-1, *meta.input_size, 3] if nhwc
                                                            else [-1, 3, *meta.input_size])})
            self.input_dtype = np.dtype(model.inputs[0].get_element_type().to_dtype())
            if self.input_dtype != (np.uint8 if nhwc else np.float32):
                raise ValueError(f"{path.name}: the sidecar's input_format {meta.input_format!r} does not match "
                                 f"the graph's {self.input_dtype} input")
            self.compiled = shared_core().compile_model(model, "CPU", compile_config(hint, threads, None, precision))
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own RuntimeError subclasses
            raise RuntimeError(f"OpenVINO cannot load {path.name}: {str(e).strip().splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        self.output_names = names
        self.name = f"openvino-cpu-{meta.precision}"

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        res = self.request.infer({0: np.ascontiguousarray(batch, self.input_dtype)}, share_outputs=False)
        return {n: res[port] for n, port in zip(self.output_names, self.compiled.outputs)}

    def close(self) -> None:
        self.request = self.compiled = None


def plan_text_io(specs: Sequence[TensorSpec], meta: ModelMeta, where: str = "engine") -> IOPlan:
    """The I/O plan of a text classifier engine: the detectors' input checks (``images`` float32 [B, 3, H, W] at
    the sidecar's size), the outputs :func:`check_text_graph` asks for; kind "text"."""
    inp, outputs = split_io(specs, meta, where)
    check_text_graph(where, meta, [inp.name], [s.name for s in outputs])
    return batch_plan(inp, outputs, "text", where)


class TRTClassifier(EngineIO, Classifier):
    """A text classifier engine (``python -m export.trt --onnx model.onnx``) on a CUDA device, through the
    detectors' engine I/O (:class:`runtime.backends.trt_backend.EngineIO`). ``device``: "cuda" / "cuda:N"
    ("cpu", the default of :func:`load_classifier`, means cuda:0); ``cuda_graph``: capture and replay per
    batch size. Batches below the engine's smallest profile batch are padded, larger ones split."""

    def __init__(self, path: Path, meta: ModelMeta, device: str = "cuda", cuda_graph: bool = False) -> None:
        index = engine_device_index(device)
        Classifier.__init__(self, meta, path.name)
        self.path, self.cuda_graph = path, bool(cuda_graph)
        self.open_engine(meta, index, plan_text_io)
        self.name = f"tensorrt-{meta.precision}"
        self.batch_size = min(self.batch_size, self.max_batch or self.batch_size)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        n = batch.shape[0]
        if n < self.plan.min_batch:
            pad = np.zeros((self.plan.min_batch - n, *batch.shape[1:]), np.float32)
            return {k: v[:n] for k, v in EngineIO.infer(self, np.concatenate([batch, pad])).items()}
        return EngineIO.infer(self, batch)


def _backend_of(p: Path, backend: str) -> str:
    check_choice("backend", backend, BACKENDS)
    suffix = p.suffix.lower()
    natural = ("pytorch" if p.is_dir() or suffix in _CHECKPOINT_SUFFIXES else "tensorrt" if suffix in _ENGINE_SUFFIXES
               else "onnxruntime" if suffix == ".onnx" else "openvino" if suffix == ".xml" else None)
    if natural is None:
        raise ValueError(f"cannot tell the backend of {p}: expected a checkpoint (.pt, .pth or a run folder), an "
                         f"ONNX graph (.onnx), an OpenVINO IR (.xml) or a TensorRT engine (.engine)")
    if backend == "auto" or backend == natural or (backend == "openvino" and natural == "onnxruntime"):
        return natural if backend == "auto" else backend
    raise ValueError(f"backend={backend!r} cannot open {p.name} (a {natural} model file)")


def load_classifier(path: str | os.PathLike[str], backend: str = "auto", device: str = "cpu",
                    accept_modified: bool = False, **kwargs: Any) -> Classifier:
    """Open a text / non-text classifier: a checkpoint (``.pt`` / run folder: PyTorch), an exported ``.onnx``
    (ONNX Runtime; ``backend="openvino"``: OpenVINO's CPU plugin), an OpenVINO IR ``.xml`` or a TensorRT engine
    ``.engine`` (``python -m export.trt``; ``device`` "cpu" means cuda:0).

    ``kwargs`` go to the backend (``threads=``; ONNX Runtime ``provider=``; OpenVINO ``hint=``,
    ``precision=``; TensorRT ``cuda_graph=``). A detector export, a file changed since export (unless ``accept_modified``) or a
    malformed sidecar raise ValueError with one line; a runtime this machine lacks raises
    :class:`~runtime.errors.BackendUnavailable`.
    """
    p = Path(path)
    which = _backend_of(p, backend)
    if not p.exists():
        raise ValueError(f"model file not found: {p}")
    if which == "pytorch":
        # by name, as runtime.load opens its backends: the PyTorch backend imports this module
        return importlib.import_module(_TORCH_BACKEND).TorchClassifier(p, device=device, **kwargs)
    meta = read_model_meta(p)
    if meta.task != "text":
        raise ValueError(f"{p.name} is a {meta.task} export ({meta.model_name}), not a text / non-text classifier: "
                         f"open it with runtime.load_detector")
    check_file_hash(p, accept_modified=accept_modified)
    if which == "openvino":
        return OVClassifier(p, meta, **kwargs)
    if which == "tensorrt":
        return TRTClassifier(p, meta, device=device, **kwargs)
    return ORTClassifier(p, meta, device=device, **kwargs)
