"""The compile's default latency check: FP32 vs the quantised model, batch of the first eval item, one thread,
bounded in time, and a warning with the likely cause when the quantised model is not faster.

    probe  = max over both models of one run's time t (after session creation and one warm-up run)
    runs   = clamp(⌊QUICK_BUDGET_S / (2 · QUICK_ROUNDS · probe)⌋, 1, QUICK_MAX_RUNS)     ≤ QUICK_BUDGET_S in all
    ratio  = median over rounds of t_quantised / t_fp32   (latency.interleaved_latency)
    warn   when ratio ≥ NOT_FASTER_RATIO and the FP32 run takes at least MIN_WARN_MS (below that a run is mostly
           ORT's fixed per-run overhead, so the ratio says little about the kernels; it is still reported)

Skipped (with the reason in the report) for targets other than ORT's CPU EP, models over
QUICK_MAX_MODEL_BYTES, a probe over QUICK_BUDGET_S, or with ``CompileConfig.latency_check = False``.
The figure is noisy on a loaded machine; `qcompile compare` measures more rounds.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import onnx

from qcompile.accuracy.latency import interleaved_latency
from qcompile.errors import QCompileError
from qcompile.io import model_size_bytes
from qcompile.runtime_ext.session import make_session

__all__ = ["latency_check", "not_faster", "slow_cause"]

QUICK_BUDGET_S = 2.0
QUICK_ROUNDS = 3
QUICK_MAX_RUNS = 20
QUICK_MAX_MODEL_BYTES = 512 << 20
NOT_FASTER_RATIO = 1.0
MIN_WARN_MS = 1.0


def not_faster(latency: Mapping[str, Any]) -> bool:
    """Whether the measured latency deserves the not-faster warning (module docstring)."""
    return latency.get("ratio", 0.0) >= NOT_FASTER_RATIO and latency.get("fp32_ms", 0.0) >= MIN_WARN_MS


def _probe(session: Any, feed: Mapping[str, np.ndarray]) -> float:
    session.run(None, dict(feed))                      # warm-up: first-run allocations
    start = time.perf_counter()
    session.run(None, dict(feed))
    return time.perf_counter() - start


def latency_check(fp32: onnx.ModelProto, quantized: onnx.ModelProto, feed: Mapping[str, np.ndarray] | None,
                  *, cpu_target: bool, custom_op_library: str | None = None) -> dict[str, Any]:
    """The report's ``latency`` entry: measured figures, or ``{"skipped": reason}`` (module docstring)."""
    if feed is None:
        return {"skipped": "no eval item to time"}
    if not cpu_target:
        return {"skipped": "measured for ORT's CPU EP only; run qcompile compare on the target"}
    if max(model_size_bytes(fp32), model_size_bytes(quantized)) > QUICK_MAX_MODEL_BYTES:
        return {"skipped": f"models over {QUICK_MAX_MODEL_BYTES >> 20} MiB are timed by qcompile compare only"}
    try:
        sessions = {"fp32": make_session(fp32, threads=1, custom_op_library=custom_op_library),
                    "quantized": make_session(quantized, threads=1, custom_op_library=custom_op_library)}
        probe = max(_probe(s, feed) for s in sessions.values())
        if probe > QUICK_BUDGET_S:
            return {"skipped": f"one run takes {probe:.1f} s; time it with qcompile compare"}
        runs = int(min(max(QUICK_BUDGET_S / (2 * QUICK_ROUNDS * max(probe, 1e-6)), 1), QUICK_MAX_RUNS))
        timings = interleaved_latency(sessions, dict(feed), rounds=QUICK_ROUNDS, runs=runs, warmup=1)
    except QCompileError as exc:
        return {"skipped": str(exc)}
    except Exception as exc:  # ORT's runtime errors on the item: fidelity reports those; latency just says so
        return {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    rows = next(iter(feed.values())).shape[0] if feed and next(iter(feed.values())).ndim else 1
    return {"fp32_ms": timings["fp32"]["median_ms"], "quantized_ms": timings["quantized"]["median_ms"],
            "ratio": timings["quantized"]["ratio"], "rounds": QUICK_ROUNDS, "runs": runs, "threads": 1,
            "batch": int(rows)}


def slow_cause(unfused_nodes: int, unfused_pairs: int, cpu: Any) -> str:
    """The likeliest reason a quantised model is not faster than FP32 on ORT's CPU EP."""
    if unfused_nodes:
        return f"{unfused_nodes} quantised node(s) run as float between Q/DQ (ORT did not fuse them; see ort.unfused)"
    if unfused_pairs:
        return f"{unfused_pairs} Q/DQ pair(s) ORT left unfused add work without integer kernels"
    if cpu is not None and not (getattr(cpu, "vnni", False) or getattr(cpu, "arm_dot", False)):
        return "this CPU has no int8 dot-product instructions (VNNI / ARM dot), so int8 GEMMs gain little"
    return "the model is small: quantise/dequantise work outweighs what the integer kernels save"
