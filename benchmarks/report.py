"""Report files of a benchmark run: report.json (written by run.py), report.md and fps.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

REFERENCE = "pytorch-cpu"


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "–"
    return fmt.format(v)


def _e2e_ips(entry: dict[str, Any]) -> float | None:
    lat = (entry.get("latency_ms") or {}).get("e2e")
    return 1000.0 / lat["mean"] if lat and lat.get("mean") else None


def add_ratios(backends: list[dict[str, Any]], peer_name: str) -> None:
    """Set ``ratios`` of each ok entry: batch-1 end-to-end throughput over pytorch-cpu's and the
    peer's (> 1 means faster), and model-only the same way."""
    by = {b["name"]: b for b in backends if b.get("status") == "ok"}
    for b in backends:
        if b.get("status") != "ok":
            continue
        ratios: dict[str, float | None] = {}
        for key, other in (("vs_pytorch_cpu", by.get(REFERENCE)), ("vs_peer", by.get(peer_name))):
            mine, theirs = _e2e_ips(b), _e2e_ips(other) if other else None
            ratios[key] = mine / theirs if mine and theirs else None
            m_mine = (b.get("latency_ms") or {}).get("model")
            m_theirs = ((other or {}).get("latency_ms") or {}).get("model")
            ratios[key + "_model"] = (m_theirs["mean"] / m_mine["mean"]) if m_mine and m_theirs else None
        b["ratios"] = ratios


def write_markdown(report: dict[str, Any], path: Path) -> Path:
    m = report["machine"]
    cfg = report["config"]
    lines = [
        f"# Benchmark: {report.get('model_name', '')} ({report.get('checkpoint')})",
        "",
        f"* machine: {m.get('cpu')} ({m.get('cpu_cores_usable')} usable cores), GPU: {m.get('gpu') or 'none'}"
        f"{', driver ' + str(m['driver']) if m.get('driver') else ''}{', CUDA ' + str(m['cuda']) if m.get('cuda') else ''}"
        f", Jetson: {'yes' if m.get('jetson') else 'no'}",
        f"* versions: onnxruntime {m.get('onnxruntime') or '–'}, TensorRT {m.get('tensorrt') or '–'}, "
        f"torch {m.get('torch') or '–'}",
        f"* input {report.get('input_size')}, exports: {report.get('exports') or '–'}, data: {report.get('data')} "
        f"({report.get('map_images')} images for mAP)",
        f"* timing: warm-up {cfg['warmup']} calls excluded, ≥ {cfg['min_time']} s and ≥ {cfg['min_iters']} calls per "
        f"measurement{', quick mode' if cfg.get('quick') else ''}; e2e = decode + preprocess + model + NMS; "
        f"model = the graph/engine only",
        "",
    ]
    sizes = [str(s) for s in cfg["batch_sizes"]]
    head = (["backend", "status", "e2e b1 ms (p50)", "model b1 ms (p50)"] + [f"ips@{s}" for s in sizes]
            + ["mAP", "parity", "× pytorch-cpu", "× peer", "reason"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for b in report["backends"]:
        lat = b.get("latency_ms") or {}
        e2e, model = lat.get("e2e"), lat.get("model")
        ips = b.get("throughput_ips") or {}
        parity = b.get("parity")
        if parity is None:
            p_txt = "reference" if b["name"] == REFERENCE and b["status"] == "ok" else "–"
        else:
            p_txt = ("ok" if parity["ok"] else "FAIL") + f" (ΔmAP {_num(parity['delta_map'], '{:+.2f}')}, " \
                    f"agree {_num(parity['agreement'], '{:.3f}')})"
        ratios = b.get("ratios") or {}
        reason = (b.get("reason") or "").replace("|", "/")
        row = [b["name"], b["status"],
               _num(e2e and e2e["mean"]) + (f" ({_num(e2e['p50'])})" if e2e else "")
               + (" ⚠" if b.get("busy") else ""),
               _num(model and model["mean"]) + (f" ({_num(model['p50'])})" if model else "")]
        row += [_num(ips.get(s), "{:.1f}") for s in sizes]
        row += [_num(b.get("mAP")), p_txt, _num(ratios.get("vs_pytorch_cpu"), "{:.2f}×"),
                _num(ratios.get("vs_peer"), "{:.2f}×"), reason]
        lines.append("| " + " | ".join(row) + " |")
    busy = [b for b in report["backends"] if b.get("busy")]
    if busy:
        lines += ["", "⚠ Timings disturbed (the machine looked busy; rerun on an idle machine before comparing):"]
        lines += [f"* {b['name']}: {'; '.join(b['busy'])}" for b in busy]
    lines += ["", f"Verdict: {'PASS' if report['ok'] else 'FAIL'}"]
    lines += [f"* {f}" for f in report.get("failures", [])]
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_fps_plot(report: dict[str, Any], path: Path) -> Path:
    """End-to-end throughput (images/s) against batch size, one line per measured backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plotted = 0
    for b in report["backends"]:
        ips = b.get("throughput_ips") or {}
        pts = sorted((int(k), v) for k, v in ips.items() if v)
        if b.get("status") != "ok" or not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", linestyle="--" if b["name"].startswith("peer") else "-", label=b["name"])
        plotted += 1
    ax.set_xscale("log", base=2)
    sizes = sorted(int(v) for v in report["config"]["batch_sizes"])
    ax.set_xticks(sizes, [str(v) for v in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (end to end)")
    ax.set_title(f"{report.get('model_name', '')} {report.get('input_size')} on {report['machine'].get('gpu') or report['machine'].get('cpu')}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if plotted:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no backend measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
