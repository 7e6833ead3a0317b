"""Graphs that take the resized pixels as they are: uint8 [B, H, W, 3] RGB (``--uint8-input``).

``model_nms.onnx`` -> ``model_nms_u8.onnx`` and ``model_int8_nms.onnx`` -> ``model_int8_nms_u8.onnx``
(:func:`write_uint8_input`): the same graph behind :func:`export.graphs.add_uint8_input_head`
(transpose, cast, ``(p / 255 - mean) / std`` in the graph). The sidecar says ``input_format:
"uint8_nhwc"``; ``runtime.preprocess.Preprocessor`` then hands the resized uint8 image to the
backend, and the host makes no float copy of it (the normalisation's 12 bytes per pixel are
written inside ONNX Runtime, next to the first convolution).

:func:`verify_uint8_input` checks the uint8 graph against its float-input source on the same
images: the head computes the host's normalisation up to float rounding (a few 1e-7), so the
detections are the same within ``runtime.matching.match_exact``'s float tolerances.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.artifacts import WrittenGraph
from export.verify import VERIFY_BATCHES

UINT8_SUFFIX = "_u8"


def uint8_path(src: str | Path) -> Path:
    """``model_nms.onnx`` -> ``model_nms_u8.onnx`` (same folder)."""
    src = Path(src)
    return src.with_name(f"{src.stem}{UINT8_SUFFIX}{src.suffix}")


def write_uint8_input(src_onnx: str | Path, out: str | Path | None = None,
                      extra: Mapping[str, Any] | None = None) -> WrittenGraph:
    """``src_onnx`` (float input, with its sidecar) -> the same graph taking uint8 [B, H, W, 3] RGB
    pixels, at ``out`` (default :func:`uint8_path`), checked, with the sidecar of the source but
    ``input_format "uint8_nhwc"``, the source's sha256 and ``extra`` (sidecar ``extra`` keys to
    replace, e.g. the input's description). Not simplified (a simplifier would fold
    an INT8 body's weight DequantizeLinear nodes); ONNX Runtime folds the head's constants itself."""
    import onnx
    import onnx_graphsurgeon as gs

    from export.artifacts import check_and_infer, save_with_meta
    from export.graphs import add_uint8_input_head, to_model
    from runtime.metadata import read_sidecar, sha256_file
    src_onnx = Path(src_onnx)
    meta = read_sidecar(src_onnx)
    if meta.input_format != "float_nchw":
        raise ValueError(f"{src_onnx.name} already takes {meta.input_format} input")
    model = onnx.load(str(src_onnx))
    ir = model.ir_version
    del model.metadata_props[:]
    u8 = to_model(add_uint8_input_head(gs.import_onnx(model), meta.mean, meta.std))
    u8.ir_version = ir
    u8_meta = dataclasses.replace(meta, input_format="uint8_nhwc", onnx_sha256=None,
                                  extra={**meta.extra, **(extra or {}), "uint8_source": src_onnx.name,
                                         "uint8_source_sha256": sha256_file(src_onnx)})
    return save_with_meta(check_and_infer(u8), Path(out) if out is not None else uint8_path(src_onnx), u8_meta)


def verify_uint8_input(float_onnx: str | Path, u8_onnx: str | Path, images: Sequence[Any], *,
                       batches: Sequence[int] = VERIFY_BATCHES, threads: int = 0,
                       notes: Sequence[str] = ()) -> dict[str, Any]:
    """The uint8 graph against its float-input source on ``images`` (paths or uint8 HWC RGB, at
    least max(batches)), each fed by ``runtime.preprocess`` in its own sidecar's input format.
    NMS graphs: :func:`runtime.matching.match_exact`; raw graphs: allclose (export.verify's
    tolerances). Returns a row in the shape of :func:`export.verify.verify_exports`' rows."""
    from export import verify as V
    from runtime.matching import match_exact
    from runtime.metadata import read_sidecar
    from runtime.preprocess import Preprocessor
    f_meta, u_meta = read_sidecar(float_onnx), read_sidecar(u8_onnx)
    xf, xu = (Preprocessor.from_meta(m)(list(images))[0] for m in (f_meta, u_meta))
    fs, us = V.ort_session(float_onnx, threads), V.ort_session(u8_onnx, threads)
    row = {"graph": Path(u8_onnx).stem.removeprefix("model_"), "file": str(u8_onnx), "precision": u_meta.precision,
           "size_mb": round(Path(u8_onnx).stat().st_size / 2**20, 3), "max_abs_diff": 0.0,
           "detections_match": None, "ok": xu.dtype == np.uint8, "notes": list(notes), "batches": {}}
    for bs in batches:
        ref = tuple(fs.run(None, {"images": np.ascontiguousarray(xf[:bs])}))
        got = tuple(us.run(None, {"images": np.ascontiguousarray(xu[:bs])}))
        if len(ref) == 4:
            m = match_exact(got, ref)
            detail, ok, diff = m, m["match"], max(m["max_box_diff"], m["max_score_diff"])
            row["detections_match"] = bool(m["match"] and row["detections_match"] is not False)
        else:
            detail = V.compare_raw(got, ref)
            ok, diff = detail["allclose"], detail["max_abs_diff"]
        row["batches"][str(bs)] = detail
        row["ok"] = bool(row["ok"] and ok)
        row["max_abs_diff"] = max(row["max_abs_diff"], float(diff))
    return row


def uint8_rows(paths: Mapping[str, Path], images: Sequence[Any], *, threads: int = 0,
               notes: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, Any]]:
    """A row for every ``<graph>_u8`` of ``paths`` (graph name -> .onnx) whose ``<graph>`` is there."""
    return {g: verify_uint8_input(paths[g.removesuffix(UINT8_SUFFIX)], p, images, threads=threads,
                                  notes=(notes or {}).get(g, ()))
            for g, p in paths.items() if g.endswith(UINT8_SUFFIX) and g.removesuffix(UINT8_SUFFIX) in paths}
