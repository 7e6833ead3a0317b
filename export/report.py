"""The export report: ``export_report.json`` (machine-readable) and the table printed after an export."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np


def jsonable(o: Any) -> Any:
    """Plain JSON values of a report: numpy scalars as Python numbers, non-finite floats as null,
    dataclasses as dicts, tuples as lists."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return jsonable(dataclasses.asdict(o))
    return o


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """``report`` as JSON at ``path`` (atomically); returns the path."""
    from runtime.atomic import write_json_atomic
    return write_json_atomic(path, jsonable(report))


def _map_line(mp: dict[str, Any]) -> str:
    if "skipped" in mp:
        return f"mAP: skipped ({mp['skipped']})"
    s = f"mAP on {mp['dataset']}, first {mp['raw']['eval_images']}: FP32 {mp['raw']['mAP']:.2f}"
    if "int8" in mp:
        s += f", INT8 {mp['int8']['mAP']:.2f} (drop {mp['int8_map_drop']:.2f}, allowed {mp['int8_max_map_drop']})"
    return s


def format_report(report: dict[str, Any]) -> str:
    """The human table: graph, size, max abs diff vs PyTorch, detections match, status."""
    lines = [f"verified on {report['verify_images']} at batch {', '.join(map(str, report['verify_batches']))}",
             f"{'graph':<6} {'file':<18} {'size MB':>8} {'max abs diff':>13} {'detections':>11}  status",
             "-" * 70]
    for g, r in report["graphs"].items():
        match = "n/a" if r["detections_match"] is None else ("match" if r["detections_match"] else "DIFFER")
        lines.append(f"{g:<6} {Path(r['file']).name:<18} {r['size_mb']:>8.3f} {r['max_abs_diff']:>13.3e} {match:>11}  "
                     f"{'ok' if r['ok'] else 'FAILED'}")
        for n in r["notes"]:
            lines.append(f"       note: {n}")
    lat = report.get("latency")
    if lat:
        for bs in (1, 8):
            lines.append(f"CPU latency batch {bs} (p50, {lat['cpu']}): FP32 {lat[f'raw_b{bs}']['p50_ms']:.2f} ms, "
                         f"INT8 {lat[f'int8_b{bs}']['p50_ms']:.2f} ms -> INT8 x{lat[f'int8_speedup_b{bs}']:.2f}")
    if report.get("map"):
        lines.append(_map_line(report["map"]))
    lines.append(f"{'all graphs verified' if report['ok'] else 'VERIFICATION FAILED'} in {report['seconds']:.1f} s")
    return "\n".join(lines)
