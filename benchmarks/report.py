"""Report files of a benchmark run: report.json (written by run.py), report.md and fps.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.best_path import best_path_lines

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
        f"torch {m.get('torch') or '–'}, OpenVINO {m.get('openvino') or '–'}",
        f"* input {report.get('input_size')}, exports: {report.get('exports') or '–'}, data: {report.get('data')} "
        f"({report.get('map_images')} images for mAP)",
        f"* timing: warm-up {cfg['warmup']} calls excluded, ≥ {cfg['min_time']} s and ≥ {cfg['min_iters']} calls per "
        f"measurement{', quick mode' if cfg.get('quick') else ''}; e2e = decode + preprocess + model + NMS; "
        f"model = the graph/engine only",
        "",
    ]
    sizes = [str(s) for s in cfg["batch_sizes"]]
    head = (["backend", "status", "e2e b1 ms (p50)", "model b1 ms (p50)"] + [f"ips@{s}" for s in sizes]
            + ["mAP", "APs", "APm", "APl", "parity", "× pytorch-cpu", "× peer", "reason"])
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
        row += [_num(b.get("mAP")), *(_num(b.get(k)) for k in ("APs", "APm", "APl")), p_txt,
                _num(ratios.get("vs_pytorch_cpu"), "{:.2f}×"),
                _num(ratios.get("vs_peer"), "{:.2f}×"), reason]
        lines.append("| " + " | ".join(row) + " |")
    lines += stage_table(report["backends"]) + limit_table(report) + streams_table(report["backends"])
    lines += sweep_table(report) + openvino_verdict(report) + best_path_lines(report.get("best_cpu_path"))
    busy = [b for b in report["backends"] if b.get("busy")]
    if busy:
        lines += ["", "⚠ Timings disturbed (the machine looked busy; rerun on an idle machine before comparing):"]
        lines += [f"* {b['name']}: {'; '.join(b['busy'])}" for b in busy]
    lines += ["", f"Verdict: {'PASS' if report['ok'] else 'FAIL'}"]
    lines += [f"* {f}" for f in report.get("failures", [])]
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


STAGE_KEYS = ("decode", "resize", "normalize", "model", "postprocess")
# Stage times that add up to within this of the end-to-end time account for it.
STAGE_SUM_TOLERANCE = 0.10


def stage_table(backends: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: each stage of a batch-1 call (ms, p50) per backend, their sum against the call."""
    rows = []
    for b in backends:
        st = b.get("stages_ms")
        if b.get("status") != "ok" or not st:
            continue
        ratio = st.get("sum_vs_e2e")
        flag = "" if ratio is None or abs(ratio - 1) <= STAGE_SUM_TOLERANCE else " ⚠"
        rows.append([b["name"]] + [_num(st.get(k)) for k in STAGE_KEYS + ("sum", "e2e")]
                    + [_num(ratio, "{:.2f}") + flag])
    if not rows:
        return []
    return (["", "Stages of one batch-1 call (ms, mean; stages and whole calls interleaved; ⚠: the stages do not "
             f"add up to the call within {STAGE_SUM_TOLERANCE:.0%}):", ""]
            + _table(["backend", *STAGE_KEYS, "sum", "e2e", "sum / e2e"], rows))


def limit_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines: how far each CPU row is from the machine's limit (GEMM peak x graph FLOPs)."""
    lim = report.get("limits") or {}
    gemm = lim.get("gemm") or {}
    rows = []
    for b in report["backends"]:
        r = b.get("limit")
        if b.get("status") != "ok" or not r:
            continue
        lat = b.get("latency_ms") or {}
        rows.append([b["name"], _num((lat.get("model") or {}).get("p50")), _num((lat.get("e2e") or {}).get("p50")),
                     _num(r.get("floor_ms")), _num(r.get("model_vs_floor"), "{:.2f}×"),
                     _num(r.get("e2e_vs_model"), "{:.2f}×")])
    if not rows:
        return []
    return (["", f"Limit: the model is {_num(lim.get('gflops'), '{:.3f}')} GFLOPs (Conv/Gemm/MatMul of the ONNX graph, "
             f"2 per multiply-add); a float32 1024² GEMM runs at {_num(gemm.get('gflops'), '{:.1f}')} GFLOP/s on "
             f"{gemm.get('threads') or '–'} thread(s) ({gemm.get('library', '–')}), so the model's floor is "
             f"{_num(1e3 * lim['gflops'] / gemm['gflops'] if lim.get('gflops') and gemm.get('gflops') else None)} ms "
             f"(model / floor: 1.0 = at the machine's limit, and below 1 for INT8 / bf16 inference, whose peak is "
             f"above float32's; e2e / model: 1.0 = no host work):", ""]
            + _table(["backend", "model p50 ms", "e2e p50 ms", "floor ms", "model / floor", "e2e / model"], rows))


def streams_table(backends: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: throughput mode, images/s at batch 1 per number of parallel streams."""
    got = [b for b in backends if b.get("status") == "ok" and b.get("streams_ips")]
    if not got:
        return []
    keys = list(dict.fromkeys(k for b in got for k in b["streams_ips"]["e2e"]))
    rows = [[b["name"]] + [_num(b["streams_ips"]["e2e"].get(k), "{:.1f}") + " / "
                           + _num(b["streams_ips"]["model"].get(k), "{:.1f}") for k in keys] for b in got]
    return (["", "Throughput mode (images/s at batch 1, end to end / model-only, by parallel streams):", ""]
            + _table(["backend"] + [f"streams: {k}" for k in keys], rows))


def sweep_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines: the --threads sweep (medians of interleaved rounds) with the limit ratios."""
    sweep = report.get("sweep") or []
    if not sweep:
        return []
    gemm = (report.get("limits") or {}).get("gemm_by_threads") or {}
    rows = [[s["name"], str(s["threads"]), _num(s["latency_p50_ms"]["e2e"]), _num(s["latency_p50_ms"]["model"]),
             _num(gemm.get(str(s["threads"])), "{:.1f}"), _num(s["limit"].get("model_vs_floor"), "{:.2f}×"),
             _num(s["limit"].get("e2e_vs_model"), "{:.2f}×")]
            for s in sorted(sweep, key=lambda s: (s["threads"], s["name"]))]
    return (["", f"Threads sweep (batch 1, ms: median over {sweep[0]['rounds']} interleaved rounds of the p50):", ""]
            + _table(["backend", "threads", "e2e p50", "model p50", "GEMM GFLOP/s", "model / floor", "e2e / model"],
                     rows))


# Rows of the product's own CPU paths, and of OpenVINO as a CPU user runs the same model.
PRODUCT_CPU = ("onnxruntime-cpu-", "openvino-cpu-")
OPENVINO_PEERS = "peer-openvino-"


def _best(pairs: list[tuple[str, float]], prefixes: tuple[str, ...] | str) -> tuple[str, float] | None:
    got = [(n, v) for n, v in pairs if n.startswith(prefixes) and v]
    return min(got, key=lambda nv: nv[1]) if got else None


def openvino_verdict(report: dict[str, Any]) -> list[str]:
    """Markdown lines: the fastest product CPU row that passed its parity check against the fastest
    OpenVINO peer row, end to end (batch-1 p50), in the main pass and at each thread count of the sweep."""
    sound = {b["name"] for b in report["backends"]  # a row that failed its parity check is no path
             if b.get("status") == "ok" and (b.get("parity") is None or b["parity"].get("ok"))}
    groups = {f"main pass ({report['config'].get('threads')} thread(s))":
              [(b["name"], ((b.get("latency_ms") or {}).get("e2e") or {}).get("p50"))
               for b in report["backends"] if b["name"] in sound]}
    for s in report.get("sweep") or []:
        if s["name"] in sound:
            groups.setdefault(f"sweep, {s['threads']} thread(s)", []).append((s["name"], s["latency_p50_ms"]["e2e"]))
    lines = []
    for what, pairs in groups.items():
        ours, theirs = _best(pairs, PRODUCT_CPU), _best(pairs, OPENVINO_PEERS)
        if ours and theirs:
            lines.append(f"* {what}: best CPU path {ours[0]} {ours[1]:.2f} ms, OpenVINO as a CPU user runs it "
                         f"{theirs[0]} {theirs[1]:.2f} ms: ours is {theirs[1] / ours[1]:.2f}× as fast")
    return ["", "Against OpenVINO end to end (batch 1, e2e p50):", ""] + lines if lines else []


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
