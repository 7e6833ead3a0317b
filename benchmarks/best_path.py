"""Which CPU path to deploy: the fastest sound CPU row of a benchmark run, against OpenVINO's defaults.

A row is a candidate when it is one of the product's CPU paths (``pytorch-cpu``,
``onnxruntime-cpu-*``, ``openvino-cpu-*``; the ``trt-reference-cpu`` row is a reference for the
TensorRT graph, not a deployment), it ran, it passed its parity check against the PyTorch reference
and its mAP is within the INT8 gate of the reference's (``runtime.parity.MAP_TOLERANCE["int8"]``
points). Among the candidates the fastest end-to-end batch-1 row (p50) is the one to deploy; on a tie
the higher mAP, then the earlier row of the report. The OpenVINO peer rows (``peer-openvino-*``:
the same model as a CPU user would run it in OpenVINO with its defaults) are never the answer; the
fastest of them is what the answer is compared with.
"""

from __future__ import annotations

from typing import Any

from runtime.parity import MAP_TOLERANCE

CPU_PATHS = ("pytorch-cpu", "onnxruntime-cpu-", "openvino-cpu-")
OPENVINO_PEER_PREFIX = "peer-openvino-"
MAP_GATE_POINTS = MAP_TOLERANCE["int8"]
_BACKEND_OF = {"pytorch-cpu": "PyTorch", "onnxruntime-cpu-": "ONNX Runtime", "openvino-cpu-": "OpenVINO"}


def _e2e_p50(entry: dict[str, Any]) -> float | None:
    """Batch-1 end-to-end p50 in ms, or None when the row has none."""
    v = ((entry.get("latency_ms") or {}).get("e2e") or {}).get("p50")
    return float(v) if v else None


def _why_not(entry: dict[str, Any], reference: str, ref_map: float | None, gate: float) -> str | None:
    """None when ``entry`` may be deployed, else one line saying why not."""
    if entry.get("status") != "ok":
        return f"{entry.get('status')}: {entry.get('reason') or 'no reason given'}"
    if _e2e_p50(entry) is None:
        return "no batch-1 end-to-end timing"
    parity = entry.get("parity")
    if entry["name"] != reference:
        if parity is None:
            return "no parity check (the reference row did not run)"
        if not parity.get("ok"):
            return "parity failed: " + ("; ".join(parity.get("reasons") or []) or "no reason given")
    m = entry.get("mAP")
    if m is None or ref_map is None:
        return "no mAP" if m is None else "no reference mAP to hold it to"
    if abs(m - ref_map) > gate + 1e-9:
        return f"mAP {m:.2f} is {m - ref_map:+.2f} points from the reference's {ref_map:.2f} (gate ±{gate:g})"
    return None


def _peer(backends: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest OpenVINO peer row that ran, as {name, e2e_ms}, or None."""
    got = [(_e2e_p50(b), b["name"]) for b in backends
           if b.get("status") == "ok" and b["name"].startswith(OPENVINO_PEER_PREFIX) and _e2e_p50(b)]
    if not got:
        return None
    ms, name = min(got)
    return {"name": name, "e2e_ms": ms}


def best_cpu_path(backends: list[dict[str, Any]], reference: str = "pytorch-cpu",
                  gate: float = MAP_GATE_POINTS) -> dict[str, Any]:
    """The CPU path to deploy among report rows ``backends`` (dicts of ``report.json["backends"]``).

    Returns ``{"name", "backend", "file", "e2e_ms", "mAP", "delta_map", "tied_with", "excluded",
    "openvino_peer", "vs_openvino", "verdict", "gate_points"}``: ``name`` None when no row qualifies
    (``verdict`` says so); ``e2e_ms`` the batch-1 end-to-end p50; ``excluded`` ``[{"name", "reason"}]``
    for every CPU row that ran or was meant to but may not be deployed; ``vs_openvino`` the peer's e2e
    over the chosen row's (> 1: the chosen path is faster), None without a peer row."""
    ref = next((b for b in backends if b["name"] == reference and b.get("status") == "ok"), None)
    ref_map = ref.get("mAP") if ref else None
    candidates, excluded = [], []
    for i, b in enumerate(backends):
        if not b["name"].startswith(CPU_PATHS) or b.get("status") == "unavailable":
            continue
        why = _why_not(b, reference, ref_map, gate)
        if why:
            excluded.append({"name": b["name"], "reason": why})
        else:
            candidates.append((_e2e_p50(b), -float(b["mAP"]), i, b))
    out: dict[str, Any] = {"name": None, "backend": None, "file": None, "e2e_ms": None, "mAP": None,
                           "delta_map": None, "tied_with": [], "excluded": excluded,
                           "openvino_peer": _peer(backends), "vs_openvino": None, "gate_points": gate}
    if not candidates:
        out["verdict"] = ("no CPU path to deploy: no CPU row ran, passed its parity check and kept its mAP "
                          f"within {gate:g} point(s) of {reference}'s")
        return out
    ms, _, _, best = min(candidates, key=lambda c: c[:3])
    out.update(name=best["name"], file=best.get("file"), e2e_ms=ms, mAP=best["mAP"],
               backend=next(v for k, v in _BACKEND_OF.items() if best["name"].startswith(k)),
               delta_map=best["mAP"] - ref_map, tied_with=[c[3]["name"] for c in candidates
                                                           if c[0] == ms and c[3] is not best])
    peer = out["openvino_peer"]
    if peer:
        out["vs_openvino"] = peer["e2e_ms"] / ms
    out["verdict"] = _verdict(out)
    return out


def _verdict(best: dict[str, Any]) -> str:
    """One line: deploy what, how fast, how it stands against OpenVINO's defaults."""
    text = (f"deploy {best['name']} ({best['backend']}): {best['e2e_ms']:.2f} ms end to end at batch 1 (p50), "
            f"mAP {best['mAP']:.2f} ({best['delta_map']:+.2f} vs the reference)")
    if best["tied_with"]:
        text += f", tied with {', '.join(best['tied_with'])}"
    peer, r = best["openvino_peer"], best["vs_openvino"]
    if peer is None:
        return text + "; no OpenVINO peer row to compare with"
    if r >= 1.0:
        how = f"ahead of OpenVINO's defaults ({peer['name']}, {peer['e2e_ms']:.2f} ms) by {r:.2f}×"
    else:
        how = f"behind OpenVINO's defaults ({peer['name']}, {peer['e2e_ms']:.2f} ms) by {1.0 / r:.2f}×"
    return f"{text}; {how}"


def best_path_lines(best: dict[str, Any] | None) -> list[str]:
    """Markdown lines of the report's "Best CPU path" section ([] without an entry)."""
    if not best:
        return []
    lines = ["", "Best CPU path (fastest CPU row, batch-1 e2e p50, that passed parity and kept its mAP within "
             f"{best['gate_points']:g} point(s) of the PyTorch reference; OpenVINO peer rows are the comparison, "
             "never the answer):", "", f"* {best['verdict']}"]
    lines += [f"* excluded {e['name']}: {e['reason']}".replace("|", "/") for e in best["excluded"]]
    return lines
