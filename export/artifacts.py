"""The files an export writes and how each is written: checked, shape-inferred, optionally
simplified, saved with its metadata embedded and a sidecar beside it.

Every ``.onnx`` of an export carries its :class:`runtime.metadata.ModelMeta` twice: in the
sidecar ``<name>.json`` (with the file's sha256) and in the ONNX ``metadata_props`` under
:data:`META_KEY` (there ``onnx_sha256`` is null: a file cannot hold its own hash).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.metadata import META_KEY

GRAPH_FILES = {"raw": "model_raw.onnx", "trt": "model_trt.onnx", "nms": "model_nms.onnx", "int8": "model_int8.onnx"}


@dataclass
class WrittenGraph:
    """One written graph: the ``.onnx`` file, its sidecar, the metadata in it, the file size."""

    onnx: Path
    sidecar: Path
    meta: Any
    size_mb: float


def check_and_infer(model: Any, *, strict: bool = True) -> Any:
    """onnx.checker (full) + shape inference; returns the shape-inferred ModelProto."""
    import onnx
    onnx.checker.check_model(model, full_check=strict)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)


def simplify(model: Any, notes: list[str]) -> Any:
    """onnxslim, or the model unchanged (with a note) when simplification fails or breaks the checker."""
    import onnx
    try:
        import onnxslim
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(model)
        onnx.checker.check_model(slim)
        slim.ir_version = model.ir_version
        return slim
    except Exception as e:  # noqa: BLE001 - any simplifier failure keeps the unsimplified graph
        notes.append(f"onnxslim failed, graph kept unsimplified ({e.__class__.__name__}: {str(e)[:200]})")
        return model


def check_simplify_check(model: Any, simplify_graph: bool, notes: list[str]) -> Any:
    """:func:`check_and_infer`, then (if asked) :func:`simplify` and the check again."""
    model = check_and_infer(model)
    if simplify_graph:
        model = simplify(model, notes)
    return check_and_infer(model)


def save_with_meta(model: Any, path: Path, meta: Any) -> WrittenGraph:
    """Write ``model`` (atomically) with ``meta`` in metadata_props, then the sidecar with the
    file's sha256. ``meta.onnx_sha256`` is ignored: it is computed here."""
    import onnx

    from runtime.atomic import atomic_path
    from runtime.metadata import sha256_file, write_sidecar
    embedded = dataclasses.replace(meta, onnx_sha256=None)
    del model.metadata_props[:]
    model.metadata_props.append(onnx.StringStringEntryProto(key=META_KEY, value=json.dumps(embedded.to_dict())))
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    final = dataclasses.replace(meta, onnx_sha256=sha256_file(path))
    sidecar = write_sidecar(path, final)
    return WrittenGraph(onnx=Path(path), sidecar=Path(sidecar), meta=final, size_mb=path.stat().st_size / 2**20)


def count_qdq_model(model: Any) -> dict[str, int]:
    """QuantizeLinear / DequantizeLinear node counts of a quantized ModelProto."""
    ops = [n.op_type for n in model.graph.node]
    return {"quantize_nodes": ops.count("QuantizeLinear"), "dequantize_nodes": ops.count("DequantizeLinear")}
