"""``python -m export.openvino``: an exported ONNX graph -> OpenVINO IR (``.xml`` + ``.bin``) + sidecar.

::

    python -m export.openvino --onnx exports/kd/model_nms.onnx              # -> exports/kd/openvino/model_nms.xml
    python -m export.openvino --onnx exports/kd/model_int8.onnx --out DIR    # Q/DQ kept: INT8 on OpenVINO's CPU

The graph is read by OpenVINO's ONNX front end (what ``openvino.convert_model`` does for an ONNX
file) and written with ``openvino.save_model`` with FP32 weights (``--compress-fp16`` stores them
as FP16, decompressed at load). The sidecar is the ONNX graph's, with the OpenVINO version and the
source file named under ``extra.openvino_ir``; ``onnx_sha256`` stays the hash of the ONNX file the IR
was made from. The IR goes to a folder of its own (default ``<onnx folder>/openvino``) so the two
sidecars never share a name. The IR is then run beside its ONNX graph on the same random batch and
must give the same outputs, or the export fails and nothing is left behind.
Any ``.xml`` opens with ``runtime.load.load_detector`` (the OpenVINO backend).

Only OpenVINO's runtime API is used (``Core.read_model``, ``save_model``): OpenVINO's usage telemetry sends its
events from the model converter (``convert_model``), which the product never calls. ``opt_in_out --opt_out``
(shipped with openvino) switches it off for every other tool too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli import command, ProductParser
from runtime.metadata import read_model_meta, sha256_file, write_sidecar

__all__ = ["export_ir", "main"]

# The IR must reproduce its ONNX graph on OpenVINO: float outputs within this, integer outputs exactly.
IR_ATOL = 1e-4


def _same_outputs(onnx_path: Path, xml_path: Path, meta: Any) -> str:
    """'' when the IR and the ONNX graph give the same outputs on one random batch of 2, else why not."""
    from runtime.backends.openvino_backend import OVDetector

    rng = np.random.default_rng(0)
    h, w = meta.input_size
    dets = [OVDetector(p, meta=meta, threads=1) for p in (onnx_path, xml_path)]
    shape = (2, 3, h, w) if dets[0].input_dtype == np.float32 else (2, h, w, 3)
    batch = (rng.standard_normal(shape).astype(np.float32) if dets[0].input_dtype == np.float32
             else rng.integers(0, 256, shape, dtype=np.uint8))
    a, b = (d.run_batch(batch) for d in dets)
    for d in dets:
        d.close()
    for name in a:
        if a[name].shape != b[name].shape:
            return f"output {name}: shape {b[name].shape} in the IR, {a[name].shape} in the ONNX graph"
        diff = float(np.max(np.abs(a[name].astype(np.float64) - b[name]))) if a[name].size else 0.0
        limit = IR_ATOL if np.issubdtype(a[name].dtype, np.floating) else 0.0
        if not diff <= limit:
            return f"output {name}: max |IR - ONNX| = {diff:.3g} > {limit}"
    return ""


def export_ir(onnx_path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
              compress_fp16: bool = False, verify: bool = True) -> dict[str, Any]:
    """Write ``<out>/<stem>.xml``, ``.bin`` and the sidecar ``.json`` for an exported ONNX graph.

    ``out``: a folder (default ``<onnx folder>/openvino``), never the ONNX graph's own folder (its
    sidecar would be replaced). Returns ``{"xml", "bin", "sidecar", "openvino", "verified"}``.
    ValueError for bad arguments, :class:`~runtime.errors.BackendUnavailable` without openvino,
    RuntimeError when OpenVINO cannot read the graph or the IR does not reproduce it.
    """
    from runtime.backends.openvino_backend import import_openvino, shared_core

    src = Path(onnx_path)
    if src.suffix.lower() != ".onnx" or not src.is_file():
        raise ValueError(f"--onnx {src}: expected an exported .onnx file")
    meta = read_model_meta(src)
    if meta.graph == "trt":
        raise ValueError(f"{src.name} is the TensorRT plugin graph (EfficientNMS_TRT), which OpenVINO cannot run; "
                         f"convert model_nms.onnx, model_raw.onnx or model_int8.onnx")
    folder = Path(out) if out is not None else src.parent / "openvino"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file; --out names a folder")
    if folder.resolve() == src.parent.resolve():
        raise ValueError(f"--out {folder} is the folder of {src.name}: the IR's sidecar {src.stem}.json would "
                         f"replace the ONNX graph's; name another folder")
    ov = import_openvino()
    try:
        model = shared_core().read_model(str(src))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types
        raise RuntimeError(f"OpenVINO cannot read {src.name}: {str(e).strip().splitlines()[0]}") from None
    meta.versions = {**meta.versions, "openvino": ov.__version__.split("-")[0]}
    meta.extra = {**meta.extra, "openvino_ir": {"source": src.name, "compress_fp16": bool(compress_fp16)}}
    meta.onnx_sha256 = meta.onnx_sha256 or sha256_file(src)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ir-", dir=folder) as tmp:
        xml = Path(tmp) / f"{src.stem}.xml"
        ov.save_model(model, str(xml), compress_to_fp16=bool(compress_fp16))
        write_sidecar(xml, meta)
        why = _same_outputs(src, xml, meta) if verify else ""
        if why:
            raise RuntimeError(f"the IR of {src.name} does not reproduce it on OpenVINO: {why}")
        final = folder / xml.name
        for suffix in (".bin", ".xml", ".json"):  # the .xml last but the sidecar: a reader finds both beside it
            os.replace(xml.with_suffix(suffix), final.with_suffix(suffix))
    return {"xml": str(final), "bin": str(final.with_suffix(".bin")), "sidecar": str(final.with_suffix(".json")),
            "openvino": meta.versions["openvino"], "verified": bool(verify)}


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m export.openvino", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--onnx", required=True, help="an exported graph: model_raw.onnx, model_nms.onnx or model_int8.onnx")
    p.add_argument("--out", default=None, help="folder of the IR (default: <onnx folder>/openvino)")
    p.add_argument("--compress-fp16", action="store_true", help="store the weights as FP16 (smaller files)")
    p.add_argument("--no-verify", action="store_true", help="skip running the IR beside its ONNX graph")
    return p


@command("python -m export.openvino")
def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 written (and verified), 2 usage error, no OpenVINO, or an IR that does not reproduce the graph."""
    args = build_parser().parse_args(argv)
    res = export_ir(args.onnx, args.out, compress_fp16=args.compress_fp16, verify=not args.no_verify)
    print(f"export.openvino: {res['xml']} (+ .bin, sidecar {Path(res['sidecar']).name}; OpenVINO {res['openvino']}"
          f"{', verified against the ONNX graph' if res['verified'] else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
