"""Latency of models side by side, robust to a shared machine's load.

Batch 1 (one feed), CPU EP, ``threads`` intra-op threads, sessions built first; in each of ``rounds`` rounds
every model (order rotated per round) gets ``warmup`` untimed and ``runs`` timed runs and the round median
t_{m,r} is kept. Reported per model m:

    median_ms = median_r t_{m,r}            ratio = median_r (t_{m,r} / t_{first,r})

so machine noise that hits a whole round cancels in the ratio.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Mapping

import onnx

from qcompile.accuracy.fidelity import Feed
from qcompile.runtime_ext.session import make_session


def measure_latency(models: Mapping[str, onnx.ModelProto | str | Path], feed: Feed, *, rounds: int = 5,
                    runs: int = 20, warmup: int = 3, threads: int = 1) -> dict[str, dict[str, float]]:
    """Median batch-1 latency per model and its ratio to the first model (see module docstring)."""
    if not models:
        return {}
    sessions = {name: make_session(model, threads=threads) for name, model in models.items()}
    timings = interleaved_latency(sessions, feed, rounds=rounds, runs=runs, warmup=warmup)
    return {name: {**entry, "rounds": rounds, "runs": runs, "threads": threads} for name, entry in timings.items()}


def interleaved_latency(sessions: Mapping[str, Any], feed: Feed, *, rounds: int = 5, runs: int = 20,
                        warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median latency (ms) per session over rounds, and the median per-round ratio to the first session.

    The order rotates each round, so slow drift of a shared machine's load hits every session alike."""
    names = list(sessions)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            session = sessions[name]
            for _ in range(warmup):
                session.run(None, feed)
            timings = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, feed)
                timings.append(time.perf_counter() - start)
            per_round[name].append(statistics.median(timings))
    base = per_round[names[0]]
    return {name: {"median_ms": 1000 * statistics.median(values),
                   "ratio": statistics.median(v / b for v, b in zip(values, base))}
            for name, values in per_round.items()}
