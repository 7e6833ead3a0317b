"""Is a model file the one its sidecar describes? Checked by every backend when a model is loaded.

* :func:`check_file_hash`: an ``.onnx`` against the ``onnx_sha256`` its sidecar records (export
  writes it). A file changed after export (edited, truncated, overwritten by another model) is
  refused with one line, unless the caller accepts it explicitly (``accept_modified=True``, the
  CLIs' ``--accept-modified``): then a warning says so. An engine's sidecar holds the sha256 of
  the ONNX the engine was *built from*, not of the engine: it describes another file, and the
  engine is not hashed against it (TensorRT refuses a damaged plan when it deserializes it).
  The hash is streamed in 1 MiB chunks: 22-32 ms for a 10 MB file on one core of a busy 2-core
  EPYC (an ONNX Runtime session takes far longer to build).
* :func:`check_io_shapes`: the sidecar's input size, class count and K (``nms.max_detections``)
  against the graph's own input / output shapes. Only static dimensions are compared; dynamic
  ones (a symbolic batch, ``None``, ``-1``) are skipped.

Imports only the standard library and :mod:`runtime.metadata`, :mod:`runtime.outputs`.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime.metadata import ModelMeta, read_sidecar, sha256_file, sidecar_path
from runtime.outputs import INPUT_NAME

__all__ = ["ACCEPT_HINT", "add_accept_modified", "check_file_hash", "check_io_shapes"]

ACCEPT_HINT = "pass accept_modified=True / --accept-modified to use it anyway"
_HASHED = (".onnx",)  # files whose sidecar's onnx_sha256 is their own hash


def add_accept_modified(parser: Any) -> None:
    """The command-line flag ``--accept-modified`` (an argparse parser's ``add_argument``)."""
    parser.add_argument("--accept-modified", action="store_true",
                        help="run an .onnx that does not match the sha256 its sidecar records (with a warning)")


def check_file_hash(path: str | os.PathLike[str], accept_modified: bool = False) -> str | None:
    """Compare ``path`` with the sha256 its sidecar ``<stem>.json`` records.

    Returns the file's sha256 when it was checked, None when there is nothing to check (not an
    ``.onnx``, no sidecar beside it -- the ``metadata_props`` copy cannot hold the file's own hash --
    or a sidecar without ``onnx_sha256``). A mismatch raises ValueError, one line naming both
    files and both hashes; with ``accept_modified`` it warns (UserWarning) and returns instead.
    """
    p = Path(path)
    side = sidecar_path(p)
    if p.suffix.lower() not in _HASHED or not side.is_file():
        return None
    expected = read_sidecar(p).onnx_sha256
    if expected is None:
        return None
    actual = sha256_file(p)
    if actual == expected:
        return actual
    what = (f"{p.name} does not match its sidecar {side.name} (sha256 {actual[:12]}.. expected {expected[:12]}..): "
            f"the file was changed after export")
    if not accept_modified:
        raise ValueError(f"{what}; re-export, or {ACCEPT_HINT}")
    warnings.warn(f"{what}; used anyway (accept_modified)", UserWarning, stacklevel=3)
    return actual


def _static(d: Any) -> int | None:
    """A dimension as an int when it is static, else None (symbolic name, None, -1)."""
    return int(d) if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None


def _dims(shape: Sequence[Any] | None) -> list[int | None]:
    return [_static(d) for d in (shape or ())]


def check_io_shapes(where: str, meta: ModelMeta, input_shape: Sequence[Any] | None,
                    outputs: Mapping[str, Sequence[Any] | None], sidecar: str = "the sidecar") -> None:
    """ValueError (one line, naming ``where`` and ``sidecar``) when a static dimension of the graph
    contradicts the sidecar ``meta``.

    ``input_shape``: of input ``images`` -- [B, 3, H, W], or [B, H, W, 3] when the sidecar's
    ``input_format`` is ``uint8_nhwc``; ``outputs``: output name -> shape. Checked: H x W against
    ``input_size``; raw ``scores`` [B, N, C + 1] against the C class names; ``detection_boxes``
    [B, K, 4], ``detection_scores`` / ``detection_classes`` [B, K] against ``nms.max_detections``.
    """
    dims = _dims(input_shape)
    if len(dims) == 4:
        nhwc = getattr(meta, "input_format", "float_nchw") == "uint8_nhwc"
        gh, gw = (dims[1], dims[2]) if nhwc else (dims[2], dims[3])
        h, w = meta.input_size
        if gh is not None and gw is not None and (gh, gw) != (h, w):
            raise ValueError(f"{where}: the graph's input {INPUT_NAME!r} is {gh}x{gw} but {sidecar} says input_size "
                             f"{h}x{w}: the sidecar belongs to another model; re-export")
    scores = _dims(outputs.get("scores"))
    c = meta.num_classes
    if len(scores) == 3 and scores[2] is not None and scores[2] != c + 1:
        raise ValueError(f"{where}: the graph's output 'scores' has {scores[2]} columns ({scores[2] - 1} classes + "
                         f"background) but {sidecar} lists {c} classes: the sidecar belongs to another model; "
                         f"re-export")
    k = meta.nms.max_detections
    for name in ("detection_boxes", "detection_scores", "detection_classes"):
        d = _dims(outputs.get(name))
        if len(d) >= 2 and d[1] is not None and d[1] != k:
            raise ValueError(f"{where}: the graph's output {name!r} has {d[1]} rows per image but {sidecar} says "
                             f"nms.max_detections {k}: the sidecar belongs to another model; re-export")
