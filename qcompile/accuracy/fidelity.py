"""Fidelity: how close a model's outputs are to FP32's, per output o over the items i.

With y the FP32 output and ŷ the other model's (definitions in qcompile/numerics/metrics.py):

    cosine_i        = ⟨y_i, ŷ_i⟩ / (‖y_i‖·‖ŷ_i‖)            (mean and min over the samples)
    SQNR            = 10·log10(Σ y² / Σ (y − ŷ)²)            (pooled over the items)
    relative error  = sqrt(Σ ‖y − ŷ‖² / Σ ‖y‖²)              (pooled; = 10^(−SQNR/20))
    top-1 agreement = mean_i [argmax y_i = argmax ŷ_i]       (outputs whose role has an argmax: logits [B, C],
                                                              per step for sequences [B, T, C]; output_roles.py)

Only float outputs are compared. A model-level bound holds when it holds for every float output: the worst
output decides (Fidelity.cosine / error / top1_agreement).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from qcompile.accuracy.output_roles import OutputRole, argmax_agreement, output_role
from qcompile.errors import CalibrationDataError, ConfigError, QCompileError, UnsupportedModelError
from qcompile.io.validate import with_unique_node_names
from qcompile.numerics.metrics import cosine_rows, power_sums, relative_error_from_power, sqnr_db_from_power
from qcompile.runtime_ext.session import make_session, ort_error_line

logger = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
Metric = Callable[[Sequence[Outputs], Sequence[Outputs]], float]


@dataclass
class FidelityAccumulator:
    """Streams FP32/other output pairs; O(samples) scalars only, never the outputs."""

    cosines: dict[str, list[float]] = field(default_factory=dict)
    signal: dict[str, float] = field(default_factory=dict)
    noise: dict[str, float] = field(default_factory=dict)
    max_abs: dict[str, float] = field(default_factory=dict)
    top1: dict[str, list[bool]] = field(default_factory=dict)
    roles: dict[str, OutputRole] = field(default_factory=dict)   # decided on an output's first item

    def add(self, name: str, reference: np.ndarray, approx: np.ndarray) -> None:
        if reference.dtype.kind != "f" or reference.size == 0:
            return
        # outputs holding Inf/NaN (a model whose weights do) give NaN metrics, reported as such, not a warning
        with np.errstate(invalid="ignore", over="ignore"):
            self._add(name, reference, approx)

    def _add(self, name: str, reference: np.ndarray, approx: np.ndarray) -> None:
        ref = reference if reference.ndim > 0 else reference.reshape(1)
        app = approx.reshape(ref.shape)
        self.cosines.setdefault(name, []).extend(cosine_rows(ref, app).tolist())
        signal, noise = power_sums(ref, app)
        self.signal[name] = self.signal.get(name, 0.0) + signal
        self.noise[name] = self.noise.get(name, 0.0) + noise
        diff = ref.astype(np.float64) - app.astype(np.float64)
        self.max_abs[name] = max(self.max_abs.get(name, 0.0), float(np.max(np.abs(diff))))
        if name not in self.roles:
            self.roles[name] = output_role(name, ref)
        if self.roles[name].has_argmax:
            self.top1.setdefault(name, []).extend(argmax_agreement(ref, app))

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, cos in self.cosines.items():
            entry = {
                "samples": len(cos),
                "cosine_mean": float(np.mean(cos)),
                "cosine_min": float(np.min(cos)),
                "sqnr_db": sqnr_db_from_power(self.signal[name], self.noise[name]),
                "max_abs_error": self.max_abs[name],
                "role": self.roles[name].value,
            }
            if name in self.top1:
                entry["top1_agreement"] = float(np.mean(self.top1[name]))
            out[name] = entry
        return out


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


def run_outputs(model: onnx.ModelProto | str | Path, items: Iterable[Feed]) -> tuple[list[str], list[Outputs]]:
    """Every output of ``model`` on every item (ORT CPU, full graph optimisation: the kernels users get)."""
    session = make_session(model)
    names = [o.name for o in session.get_outputs()]
    return names, [dict(zip(names, session.run(names, dict(feed)))) for feed in items]


def compare_outputs(reference: Sequence[Outputs], approx: Sequence[Outputs],
                    metric: Metric | None = None) -> Fidelity:
    """The Fidelity of ``approx`` vs ``reference`` (item by item), with ``metric(reference, approx)`` if given."""
    accumulator = FidelityAccumulator()
    for ref, app in zip(reference, approx, strict=True):
        for name, value in ref.items():
            accumulator.add(name, np.asarray(value), np.asarray(app[name]))
    summary = accumulator.summary()
    for name, entry in summary.items():
        entry["relative_error"] = relative_error_from_power(accumulator.signal[name], accumulator.noise[name])
    value = None
    if metric is not None:
        value = metric(list(reference), list(approx))
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise ConfigError(f"the metric function must return a finite number, returned {value!r}")
        value = float(value)
    return Fidelity(outputs=summary, metric=value)


def _run(session, names, feed, error: type[QCompileError], what: str) -> list:
    try:
        return session.run(names, dict(feed))
    except Exception as exc:  # ORT's runtime errors (shapes only known from the data, allocation failures)
        raise error(f"{what}: {ort_error_line(exc)}") from exc


def measure_fidelity(reference: onnx.ModelProto | Path, quantized: onnx.ModelProto, source: Iterable,
                     max_samples: int, *, custom_op_library: str | None = None) -> dict[str, Any]:
    """The compile's verify step: FP32 and quantised models on the first ``max_samples`` calibration items,
    per-output summaries as above. ``reference`` may be the input model's path (ORT then reads a large
    model's weights from its files)."""
    if max_samples == 0:
        return {}
    try:
        ref_session = make_session(reference if isinstance(reference, Path) else with_unique_node_names(reference),
                                   custom_op_library=custom_op_library)
        q_session = make_session(quantized, custom_op_library=custom_op_library)
    except QCompileError as exc:
        logger.warning("fidelity not measured: %s", exc)
        return {"error": str(exc)}
    names = [o.name for o in ref_session.get_outputs()]
    acc = FidelityAccumulator()
    count = 0
    for feed in source:
        ref_out = _run(ref_session, names, feed, CalibrationDataError,
                       f"the FP32 model fails on calibration item {count}")
        q_out = _run(q_session, names, feed, UnsupportedModelError,
                     f"the quantised model fails on calibration item {count}")
        for name, r, q in zip(names, ref_out, q_out):
            acc.add(name, np.asarray(r), np.asarray(q))
        count += 1
        if count >= max_samples:
            break
    return {"items": count, "outputs": acc.summary()}
