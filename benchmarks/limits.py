"""How far each row is from the machine's limit: a GEMM microbenchmark, the FLOPs of the graph, and
the ratios the report prints.

* :func:`gemm_gflops`: GFLOP/s of a float32 1024 x 1024 matrix product at a given thread count
  (torch when importable, else numpy at its BLAS's own thread count): the machine's practical
  compute peak for dense float math;
* :func:`onnx_gflops`: FLOPs of one image through an ONNX graph, counted from its Conv / Gemm /
  MatMul nodes (multiply-add = 2 FLOPs; the shapes from ONNX shape inference at batch 1), the same
  convention as ``distill.models.count_gflops`` for the PyTorch model;
* :func:`limit_ratios`: ``floor_ms`` = FLOPs at the GEMM peak, ``model_vs_floor`` = model-only
  p50 / floor (1.0 = at the limit), ``e2e_vs_model`` = end-to-end p50 / model-only p50 (1.0 = no
  host work).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

__all__ = ["gemm_gflops", "limit_ratios", "onnx_gflops"]


def _time_matmul(matmul: Any, a: Any, b: Any, min_time: float, min_iters: int = 5) -> list[float]:
    """Seconds per ``matmul(a, b)`` call, after two warm-up calls."""
    for _ in range(2):
        matmul(a, b)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_iters or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        matmul(a, b)
        samples.append(time.perf_counter() - t0)
    return samples


def gemm_gflops(threads: int | None = None, n: int = 1024, min_time: float = 0.3) -> dict[str, Any]:
    """float32 ``n x n @ n x n`` at ``threads`` threads (None: the library's default).

    Returns ``{"gflops": best, "gflops_p50": median, "threads", "n", "library"}``; a call is
    ``2 n^3`` FLOPs. torch's thread count is restored afterwards.
    """
    if n < 16:
        raise ValueError(f"GEMM size must be >= 16, got {n}")
    flops = 2.0 * n ** 3
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))
        try:
            a, b = torch.rand(n, n), torch.rand(n, n)
            with torch.inference_mode():
                samples = _time_matmul(torch.matmul, a, b, min_time)
            used, library = torch.get_num_threads(), f"torch {torch.__version__.split('+')[0]}"
        finally:
            torch.set_num_threads(previous)
    else:
        rng = np.random.default_rng(0)
        a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
        samples = _time_matmul(np.matmul, a, b, min_time)
        used, library = None, f"numpy {np.__version__} (BLAS threads: its default)"
    return {"gflops": flops / min(samples) / 1e9, "gflops_p50": flops / float(np.median(samples)) / 1e9,
            "threads": used, "n": n, "library": library}


def _dims(shapes: dict[str, list[int | None]], name: str) -> list[int] | None:
    d = shapes.get(name)
    return None if d is None or any(v is None or v <= 0 for v in d) else list(d)


def _node_macs(node: Any, shapes: dict[str, list[int | None]]) -> int:
    """Multiply-adds of one Conv / Gemm / MatMul node at the inferred shapes (0 when unknown or another op)."""
    out = _dims(shapes, node.output[0]) if node.output else None
    if out is None or node.op_type not in ("Conv", "Gemm", "MatMul", "ConvInteger", "QLinearConv"):
        return 0
    if node.op_type in ("Conv", "ConvInteger"):
        w = _dims(shapes, node.input[1])
        return int(np.prod(out)) * int(np.prod(w[1:])) if w else 0
    if node.op_type == "QLinearConv":
        w = _dims(shapes, node.input[3])
        return int(np.prod(out)) * int(np.prod(w[1:])) if w else 0
    a = _dims(shapes, node.input[0])
    if a is None:
        return 0
    trans_a = any(att.name == "transA" and att.i for att in node.attribute)
    k = a[-2] if node.op_type == "Gemm" and trans_a else a[-1]
    return int(np.prod(out)) * k


def onnx_gflops(path: str | os.PathLike[str]) -> float:
    """GFLOPs of one image through the ONNX graph at ``path`` (Conv, Gemm, MatMul; 2 FLOPs a MAC).

    The batch dimension of every graph input is set to 1 before shape inference. Element-wise
    ops, softmax and NMS are not counted (as FLOP counters of PyTorch models do not count them).
    Needs the ``onnx`` package.
    """
    import onnx

    model = onnx.load(str(path))
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | None]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return 2.0 * sum(_node_macs(n, shapes) for n in model.graph.node) / 1e9


def limit_ratios(gflops: float | None, gemm: float | None, model_ms: float | None,
                 e2e_ms: float | None) -> dict[str, float | None]:
    """``{"floor_ms", "model_vs_floor", "e2e_vs_model"}`` from the graph's GFLOPs, the GEMM GFLOP/s
    and the measured model-only and end-to-end times (ms); None where an input is missing."""
    floor = 1e3 * gflops / gemm if gflops and gemm else None
    return {"floor_ms": floor,
            "model_vs_floor": model_ms / floor if floor and model_ms else None,
            "e2e_vs_model": e2e_ms / model_ms if e2e_ms and model_ms else None}
