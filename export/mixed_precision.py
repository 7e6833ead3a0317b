"""Mixed precision for ONNX Runtime's INT8 graph: which layers stay FP32 when the INT8 mAP gate fails.

A greedy search (:func:`quantize_with_gate`), as the accuracy-debugging guides of ONNX Runtime and
TensorRT describe it:

1. quantize the body (the float tail aside, :mod:`export.quantize`) and evaluate mAP against FP32
   on the validation set; done when the drop is within the gate;
2. rank the layers by sensitivity (:func:`layer_sensitivity`): the output error of the INT8 graph
   on calibration images against the FP32 graph, minus that error with the one layer in float;
3. leave the 1, 2, 4, ... most sensitive layers in FP32 and evaluate again, until the gate holds
   or ``max_fp32_layers`` is reached (then the graph with the smallest drop is kept and the export
   fails the gate, saying so).

A layer "in FP32" is a node of the QDQ graph that reads again what it reads in the float graph --
the float activations the QuantizeLinear nodes read, float weights and biases -- with the Q/DQ
nodes nobody reads any more removed (:func:`float_layer`). The ranking and the graph that ships are
made by the same edit of the one calibrated QDQ graph, so the ranking measures exactly what a trial
changes and no trial recalibrates. Candidates are every node that reads a dequantized tensor
(:func:`float_candidates`): convolutions, residual additions, the head's reshapes and concatenations
and the float tail's first nodes (a softmax "in FP32" reads the logits before their quantization).

The layers left in FP32 are named in the sidecar (``quantization.fp32_layers``) with the search
record (``quantization.mixed_precision``: the ranking, every trial's mAP drop).
"""
from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.artifacts import WrittenGraph

SENSITIVITY_IMAGES = 8  # calibration images the ranking runs on
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _prune(model: Any) -> Any:
    """Remove (in place) the nodes whose outputs nobody reads and the initializers no node reads."""
    used = {o.name for o in model.graph.output}
    keep = []
    for n in reversed(model.graph.node):
        if any(o in used for o in n.output):
            keep.append(n)
            used.update(n.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    inits = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


def float_layer(qdq: Any, raw: Any, names: Sequence[str]) -> Any:
    """A copy of the QDQ ModelProto ``qdq`` in which the nodes ``names`` read what they read in the
    float graph ``raw`` (float activations -- the tensors the QuantizeLinear nodes read --, float
    weights and biases copied from ``raw``), so those layers run in FP32; Q/DQ nodes left unread
    are removed. ValueError for a name that is not a node of both graphs."""
    import onnx
    from onnx import numpy_helper
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    raw_nodes = {n.name: n for n in raw.graph.node}
    raw_inits = {t.name: t for t in raw.graph.initializer}
    have = {t.name for t in out.graph.initializer}
    produced = {o for n in out.graph.node for o in n.output} | {i.name for i in out.graph.input}
    nodes = {n.name: n for n in out.graph.node}
    for name in names:
        if name not in nodes or name not in raw_nodes:
            raise ValueError(f"node {name!r} is not in both the float and the INT8 graph")
        inputs = []
        for i in raw_nodes[name].input:
            src = i
            if i in raw_inits and i in produced:  # the QDQ graph dequantizes into that name: a float copy
                i = f"{i}/fp32"
            if src in raw_inits and i not in have:
                out.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(raw_inits[src]), i))
                have.add(i)
            elif i and src not in raw_inits and i not in produced:
                raise ValueError(f"node {name!r}: its float input {i!r} is not a tensor of the INT8 graph")
            inputs.append(i)
        del nodes[name].input[:]
        nodes[name].input.extend(inputs)
    return _prune(out)


def float_candidates(qdq: Any) -> list[str]:
    """Names of the nodes of a QDQ ModelProto (Q/DQ nodes aside) that read a DequantizeLinear output
    other than a weight or bias alone, in graph order: what :func:`float_layer` can put in FP32."""
    producer = {o: n for n in qdq.graph.node for o in n.output}
    inits = {t.name for t in qdq.graph.initializer}

    def dq_activation(i: str) -> bool:
        p = producer.get(i)
        return p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in inits

    return [n.name for n in qdq.graph.node if n.op_type not in _QDQ and any(dq_activation(i) for i in n.input)]


def output_error(got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """Error of raw outputs (boxes [B, N, 4] normalised xyxy, scores [B, N, C+1]) against the FP32
    reference: mean |score difference| over the object classes plus the mean |box difference|
    weighted by the reference's best object score of each anchor (background anchors' boxes do not
    matter)."""
    (boxes, scores), (ref_boxes, ref_scores) = got, ref
    weight = ref_scores[..., 1:].max(-1)
    box_err = float((np.abs(boxes - ref_boxes).mean(-1) * weight).mean())
    return float(np.abs(scores[..., 1:] - ref_scores[..., 1:]).mean()) + box_err


def layer_sensitivity(raw_onnx: str | Path, int8_onnx: str | Path, x: np.ndarray, *,
                      candidates: Sequence[str] | None = None, threads: int = 1) -> list[tuple[str, float]]:
    """(layer name, sensitivity) of the INT8 graph's layers, most sensitive first.

    ``x``: float32 [B, 3, H, W] preprocessed calibration images. Sensitivity = :func:`output_error`
    of the INT8 graph minus that of the INT8 graph with the layer alone in FP32 (:func:`float_layer`),
    both against the FP32 graph on ``x``. ``candidates``: the layers to rank (default
    :func:`float_candidates`)."""
    import onnx

    from export.verify import ort_session
    raw, qdq = onnx.load(str(raw_onnx)), onnx.load(str(int8_onnx))
    feed = {"images": np.ascontiguousarray(x, dtype=np.float32)}
    ref = ort_session(raw, threads).run(None, feed)
    base = output_error(ort_session(qdq, threads).run(None, feed), ref)
    names = list(candidates) if candidates is not None else float_candidates(qdq)
    ranked = [(n, base - output_error(ort_session(float_layer(qdq, raw, [n]), threads).run(None, feed), ref))
              for n in names]
    return sorted(ranked, key=lambda r: -r[1])


def trial_sizes(max_layers: int) -> list[int]:
    """How many of the most sensitive layers each trial leaves in FP32: 1, 2, 4, ... up to
    ``max_layers`` (which is always the last size when > 0)."""
    sizes, k = [], 1
    while k < max_layers:
        sizes.append(k)
        k *= 2
    return sizes + [max_layers] if max_layers > 0 else []


def greedy_search(drop_of: Callable[[Sequence[str]], float], ranked: Sequence[str], max_drop: float,
                  max_layers: int) -> dict[str, Any]:
    """Leave the first 1, 2, 4, ... of ``ranked`` in FP32 until ``drop_of(layers) <= max_drop``.

    ``drop_of(layers)``: the mAP drop (points) of the INT8 graph with ``layers`` in FP32 (the
    caller has measured ``drop_of([])`` > ``max_drop``). Returns {"fp32_layers" (the passing set,
    else the one with the smallest drop), "map_drop", "passed", "trials": [{"layers", "map_drop"}]}."""
    trials: list[dict[str, Any]] = []
    for k in trial_sizes(min(max_layers, len(ranked))):
        trials.append({"layers": k, "map_drop": float(drop_of(list(ranked[:k])))})
        if trials[-1]["map_drop"] <= max_drop:
            break
    if not trials:
        return {"fp32_layers": [], "map_drop": None, "passed": False, "trials": []}
    best = next((t for t in trials if t["map_drop"] <= max_drop), min(trials, key=lambda t: t["map_drop"]))
    return {"fp32_layers": list(ranked[:best["layers"]]), "map_drop": best["map_drop"],
            "passed": best["map_drop"] <= max_drop, "trials": trials}


@dataclasses.dataclass
class GateSettings:
    """The INT8 accuracy gate and the search's limits: ``max_drop`` mAP points below FP32,
    ``max_fp32_layers`` layers at most left in FP32 (0: no search), the evaluation's
    ``max_images`` and ONNX Runtime ``threads``."""

    max_drop: float = 1.0
    max_fp32_layers: int = 8
    max_images: int | None = None
    threads: int = 0


def save_mixed(raw_onnx: Path, written: WrittenGraph, layers: Sequence[str], out: Path, record: dict[str, Any]
               ) -> WrittenGraph:
    """``written`` (the all-INT8 graph) with ``layers`` in FP32 (:func:`float_layer`), saved at
    ``out`` with its sidecar's quantization record naming them (``fp32_layers``) and ``record``
    (``mixed_precision``)."""
    import onnx

    from export.artifacts import check_and_infer, count_qdq_model, save_with_meta
    model = onnx.load(str(written.onnx))
    if layers:
        model = check_and_infer(float_layer(model, onnx.load(str(raw_onnx)), layers))
    info = {**written.meta.extra["quantization"], **count_qdq_model(model), "fp32_layers": list(layers),
            "mixed_precision": record}
    meta = dataclasses.replace(written.meta, extra={**written.meta.extra, "quantization": info})
    return save_with_meta(model, out, meta)


def quantize_with_gate(raw_onnx: Path, images: Sequence[Any], dataset: Any, gate: GateSettings, *,
                       calibration_source: str, method: str = "minmax", per_channel: bool = True,
                       notes: list[str] | None = None, log: Callable[[str], None] = print
                       ) -> tuple[WrittenGraph, dict[str, Any], dict[str, Any]]:
    """``model_raw.onnx`` -> ``model_int8.onnx`` beside it, with layers left in FP32 where the gate
    says so (module docstring). ``images``: calibration images (paths or uint8 HWC RGB);
    ``dataset``: the eval-mode validation dataset. Returns (the written graph, the quantization
    record, {"raw": FP32 metrics, "int8": metrics of the written INT8 graph})."""
    from export.quantize import quantize_int8
    from export.verify import evaluate_graphs
    from runtime.preprocess import Preprocessor

    def evaluate(path: Path) -> dict[str, Any]:
        return evaluate_graphs({"g": path}, dataset, max_images=gate.max_images, threads=gate.threads)["g"]

    out = raw_onnx.with_name("model_int8.onnx")
    with tempfile.TemporaryDirectory(prefix="fdet_int8_") as tmp:
        written, _ = quantize_int8(raw_onnx, images, calibration_source=calibration_source, method=method,
                                   per_channel=per_channel, notes=notes, out=Path(tmp) / "all_int8.onnx")
        maps = {"raw": evaluate(raw_onnx), "int8": evaluate(written.onnx)}
        drop = maps["raw"]["mAP"] - maps["int8"]["mAP"]
        record: dict[str, Any] = {"map_drop_all_int8": drop, "max_map_drop": gate.max_drop}
        chosen: list[str] = []
        if drop > gate.max_drop and gate.max_fp32_layers > 0:
            log(f"  INT8 mAP drop {drop:.2f} > {gate.max_drop}: ranking layers for mixed precision ...")
            x = Preprocessor.from_meta(written.meta)(list(images[:SENSITIVITY_IMAGES]))[0]
            ranked = layer_sensitivity(raw_onnx, written.onnx, x, threads=gate.threads or 1)
            record["ranking"] = [{"layer": n, "sensitivity": s} for n, s in ranked[:2 * gate.max_fp32_layers]]
            trials: dict[int, dict[str, Any]] = {}

            def drop_of(layers: Sequence[str]) -> float:
                trial = save_mixed(raw_onnx, written, layers, Path(tmp) / f"fp32_{len(layers)}.onnx", {})
                trials[len(layers)] = evaluate(trial.onnx)
                return maps["raw"]["mAP"] - trials[len(layers)]["mAP"]

            record.update(greedy_search(drop_of, [n for n, _ in ranked], gate.max_drop, gate.max_fp32_layers))
            chosen = record["fp32_layers"]
            maps["int8"] = trials.get(len(chosen), maps["int8"])
            log(f"  mixed precision: {len(chosen)} layers left in FP32, mAP drop {record['map_drop']:.2f} "
                f"({'within' if record['passed'] else 'STILL ABOVE'} the gate {gate.max_drop})")
        final = save_mixed(raw_onnx, written, chosen, out, record)
    return final, final.meta.extra["quantization"], maps
