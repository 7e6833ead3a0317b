"""Parity of a built engine: its detections against the CPU reference of the ONNX graph it was
built from (runtime.trt_reference, or ONNX Runtime for an ONNX-NMS graph), as numbers with a bound per precision."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def cpu_reference(onnx: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The CPU reference of the graph an engine is built from, ``f(images) -> {name: output}``
    with the four NMS outputs: the plugin graph through runtime.trt_reference (the plugin's CPU
    reference), an ONNX-NMS graph (the built-in NMS route) through ONNX Runtime as it is."""
    import onnx as onnx_lib
    import onnxruntime as ort

    from runtime.outputs import NMS_OUTPUTS
    from runtime.trt_reference import PLUGIN_NAME, TrtGraphReference
    model = onnx_lib.load(str(onnx), load_external_data=False)
    if any(n.op_type == PLUGIN_NAME for n in model.graph.node):
        ref = TrtGraphReference(model)
        return lambda x: dict(zip(NMS_OUTPUTS, ref(x)))
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: dict(zip(NMS_OUTPUTS, sess.run(list(NMS_OUTPUTS), {name: np.ascontiguousarray(x, np.float32)})))


def verify_engine(engine: Path, onnx: Path, meta: Any, batch: tuple[int, int, int], images: Sequence[Any],
                  detector_factory: Callable[[Path], Any] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """The engine against the CPU reference of the graph it was built from (:func:`cpu_reference`:
    the plugin graph's, or the ONNX-NMS graph in ONNX Runtime for the built-in NMS route), on
    ``images`` at the profile's smallest batch and at 3 (clamped to the profile). Detection
    agreement (same class, IoU >= 0.95, runtime.parity) must reach the precision's bound (fp32 0.95, fp16 0.80; INT8 is only reported: it moves boxes by design).

    ``detector_factory(engine)`` returns an object whose ``infer(float32 [B, 3, H, W])`` gives
    the four NMS outputs by name (default: runtime's TensorRT backend).
    Returns {"ok", "agreement" (worst batch), "min_agreement", "batches": {str(batch): agreement}}.
    """
    from export.verify_variants import nms_agreement
    from runtime.parity import MIN_AGREEMENT
    from runtime.preprocess import preprocess_batch
    if detector_factory is None:
        from runtime.backends.trt_backend import TRTDetector as detector_factory
    x = preprocess_batch(list(images), meta.input_size, meta.mean, meta.std, meta.resize_mode)[0]
    sizes = sorted({batch[0], min(max(batch[0], 3), batch[2])})
    det, ref = detector_factory(engine), cpu_reference(onnx)
    rows, worst = {}, 1.0
    try:
        for bs in sizes:
            xb = np.ascontiguousarray(np.resize(x, (bs,) + x.shape[1:]))
            rows[str(bs)] = nms_agreement(ref(xb), det.infer(xb), meta)
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
