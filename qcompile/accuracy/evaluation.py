"""Held-out evaluation: compare a model's outputs with FP32's, time models side by side.

Fidelity of a float output o over the eval items (FidelityAccumulator in qcompile/report.py) plus the pooled
relative L2 error  err_o = sqrt(Σ_i ‖y_i − ŷ_i‖² / Σ_i ‖y_i‖²)  (= 10^(−SQNR/20)). A budget bound holds when it
holds for every float output (the worst output decides).

Latency: batch 1 (the first eval item), CPU EP, one intra-op thread, sessions built first; in each of
``rounds`` rounds every model (order rotated per round) gets ``warmup`` untimed and ``runs`` timed runs and
the round median is kept. Reported: the median over rounds of the round medians, and the ratio to the first
model as the median over rounds of (round median / first model's round median in that round), so machine
noise that hits a whole round cancels.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from qcompile.data import Feed
from qcompile.errors import ConfigError
from qcompile.report.compile_report import FidelityAccumulator
from qcompile.runtime_ext.session import make_session

logger = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
Metric = Callable[[Sequence[Outputs], Sequence[Outputs]], float]


def run_outputs(model: onnx.ModelProto | str | Path, items: Iterable[Feed]) -> tuple[list[str], list[Outputs]]:
    """Every output of ``model`` on every item (ORT CPU, full graph optimisation: the kernels users get)."""
    session = make_session(model)
    names = [o.name for o in session.get_outputs()]
    return names, [dict(zip(names, session.run(names, dict(feed)))) for feed in items]


@dataclass(frozen=True)
class Fidelity:
    """Fidelity of one model's outputs vs FP32's on the eval items."""

    outputs: Mapping[str, Mapping[str, Any]]     # per output: FidelityAccumulator summary + relative_error
    metric: float | None = None

    @property
    def cosine(self) -> float | None:
        values = [o["cosine_mean"] for o in self.outputs.values()]
        return min(values) if values else None

    @property
    def error(self) -> float | None:
        values = [o["relative_error"] for o in self.outputs.values()]
        return max(values) if values else None

    @property
    def top1_agreement(self) -> float | None:
        values = [o["top1_agreement"] for o in self.outputs.values() if "top1_agreement" in o]
        return min(values) if values else None

    def as_json(self) -> dict[str, Any]:
        return {"cosine_mean": self.cosine, "relative_error": self.error, "top1_agreement": self.top1_agreement,
                "metric": self.metric, "outputs": {k: dict(v) for k, v in self.outputs.items()}}


def relative_error(signal: float, noise: float) -> float:
    """sqrt(noise / signal); 0 when both are 0, inf when only the signal is."""
    if noise == 0:
        return 0.0
    return math.sqrt(noise / signal) if signal > 0 else math.inf


def compare_outputs(reference: Sequence[Outputs], approx: Sequence[Outputs],
                    metric: Metric | None = None) -> Fidelity:
    accumulator = FidelityAccumulator()
    for ref, app in zip(reference, approx, strict=True):
        for name, value in ref.items():
            accumulator.add(name, np.asarray(value), np.asarray(app[name]))
    summary = accumulator.summary()
    for name, entry in summary.items():
        entry["relative_error"] = relative_error(accumulator.signal[name], accumulator.noise[name])
    value = None
    if metric is not None:
        value = metric(list(reference), list(approx))
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise ConfigError(f"the metric function must return a finite number, returned {value!r}")
        value = float(value)
    return Fidelity(outputs=summary, metric=value)


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
