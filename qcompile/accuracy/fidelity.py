"""Fidelity: how close a model's outputs are to FP32's, per output o over the items i.

With y the FP32 output and ŷ the other model's (definitions in qcompile/numerics/metrics.py):

    cosine_i        = ⟨y_i, ŷ_i⟩ / (‖y_i‖·‖ŷ_i‖)            (mean and min over the samples)
    SQNR            = 10·log10(Σ y² / Σ (y − ŷ)²)            (pooled over the items)
    relative error  = sqrt(Σ ‖y − ŷ‖² / Σ ‖y‖²)              (pooled; = 10^(−SQNR/20))
    top-1 agreement = mean_i [argmax y_i = argmax ŷ_i]       (class scores [B, C])

plus what the output's role (qcompile/accuracy/output_roles.py, read off the graph) says its consumer reads:
per-step and collapsed-sequence argmax agreement for sequence scores [B, T, C], score / box errors for detection
outputs; embeddings get no top-1. Only float outputs are compared. A model-level bound holds when it holds for every float output: the worst
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

from qcompile.accuracy.output_roles import (OutputRole, detection_errors, infer_output_roles, role_from_shape,
                                            sequence_agreement)
from qcompile.errors import CalibrationDataError, ConfigError, QCompileError, UnsupportedModelError
from qcompile.io.validate import with_unique_node_names
from qcompile.numerics.metrics import cosine_rows, power_sums, relative_error_from_power, sqnr_db_from_power
from qcompile.runtime_ext.run_limit import DEFAULT_SAMPLE_TIME_LIMIT_S, run_limited
from qcompile.runtime_ext.session import GraphOptimization, make_session, ort_error_line

logger = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
Metric = Callable[[Sequence[Outputs], Sequence[Outputs]], float]


@dataclass
class FidelityAccumulator:
    """Streams FP32/other output pairs; O(samples) scalars only, never the outputs. ``roles``: the outputs'
    roles from the graph (infer_output_roles); an output missing there is read by its shape (role_from_shape)."""

    roles: Mapping[str, OutputRole] = field(default_factory=dict)
    cosines: dict[str, list[float]] = field(default_factory=dict)
    signal: dict[str, float] = field(default_factory=dict)
    noise: dict[str, float] = field(default_factory=dict)
    max_abs: dict[str, float] = field(default_factory=dict)
    top1: dict[str, list[bool]] = field(default_factory=dict)
    sequences: dict[str, list[bool]] = field(default_factory=dict)
    used_roles: dict[str, OutputRole] = field(default_factory=dict)
    detection: dict[str, list[dict[str, float]]] = field(default_factory=dict)

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
        role = self.role(name, ref.shape)
        if role is OutputRole.CLASS_SCORES and ref.ndim == 3:
            # a score head whose output has a time axis at run time (exports declare shapes that are wrong:
            # a CRNN's [T, 1, C] declared [1, ?]): scores per step, read as a sequence
            role = OutputRole.SEQUENCE_SCORES
        self.used_roles[name] = role
        if role is OutputRole.CLASS_SCORES and ref.ndim == 2 and ref.shape[1] > 1:
            self.top1.setdefault(name, []).extend((ref.argmax(1) == app.argmax(1)).tolist())
        elif role is OutputRole.SEQUENCE_SCORES and ref.ndim == 3 and ref.shape[2] > 1:
            steps, sequences = sequence_agreement(ref, app)
            self.top1.setdefault(name, []).extend(steps)
            self.sequences.setdefault(name, []).extend(sequences)
        elif role in (OutputRole.DETECTION, OutputRole.CANDIDATE_SCORES) and ref.ndim == 3:
            boxes = 4 if role is OutputRole.DETECTION else 0
            self.detection.setdefault(name, []).append(detection_errors(ref, app, boxes))

    def role(self, name: str, shape: tuple[int, ...]) -> OutputRole:
        return self.roles.get(name) or role_from_shape(shape)

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, cos in self.cosines.items():
            entry = {
                "samples": len(cos),
                "cosine_mean": float(np.mean(cos)),
                "cosine_min": float(np.min(cos)),
                "sqnr_db": sqnr_db_from_power(self.signal[name], self.noise[name]),
                "max_abs_error": self.max_abs[name],
                "role": self.used_roles[name].value,
            }
            if name in self.top1:
                entry["top1_agreement"] = float(np.mean(self.top1[name]))
            if name in self.sequences:
                entry["sequence_agreement"] = float(np.mean(self.sequences[name]))
            if name in self.detection:
                entry.update(_pooled_detection(self.detection[name]))
            out[name] = entry
        return out


def _pooled_detection(per_item: list[dict[str, float]]) -> dict[str, float]:
    """Per-item detection errors pooled, each item weighted by its confident candidates."""
    weights = [d.get("confident_candidates", 0) for d in per_item]
    total = sum(weights)
    pooled: dict[str, float] = {"confident_candidates": total}
    if total:
        for key in ("score_abs_error", "box_relative_error", "candidate_agreement"):
            if any(key in d for d in per_item if d.get("confident_candidates")):
                pooled[key] = float(sum(d[key] * w for d, w in zip(per_item, weights) if w) / total)
    return pooled


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
        """The worst task agreement: top-1 on class scores, the collapsed-sequence agreement on sequence scores
        (what greedy CTC decoding reads), the class agreement of confident detection candidates."""
        values = [o.get("sequence_agreement", o.get("candidate_agreement", o.get("top1_agreement")))
                  for o in self.outputs.values()]
        values = [v for v in values if v is not None]
        return min(values) if values else None

    def as_json(self) -> dict[str, Any]:
        return {"cosine_mean": self.cosine, "relative_error": self.error, "top1_agreement": self.top1_agreement,
                "metric": self.metric, "outputs": {k: dict(v) for k, v in self.outputs.items()}}


def run_outputs(model: onnx.ModelProto | str | Path, items: Iterable[Feed],
                fused: bool = True) -> tuple[list[str], list[Outputs]]:
    """Every output of ``model`` on every item (ORT CPU, full graph optimisation: the kernels users get;
    ``fused=False``: the graph op by op, see measure_fidelity)."""
    session = make_session(model, **({} if fused else {"optimization": GraphOptimization.DISABLED}))
    names = [o.name for o in session.get_outputs()]
    return names, [dict(zip(names, _run(session, names, feed, UnsupportedModelError, f"the model {_label(model)} fails on "
                                        f"eval item {index}"))) for index, feed in enumerate(items)]


def _label(model: onnx.ModelProto | str | Path) -> str:
    return str(model) if isinstance(model, (str, Path)) else f"'{model.graph.name}'"


def compare_outputs(reference: Sequence[Outputs], approx: Sequence[Outputs],
                    metric: Metric | None = None, roles: Mapping[str, OutputRole] | None = None) -> Fidelity:
    """The Fidelity of ``approx`` vs ``reference`` (item by item), with ``metric(reference, approx)`` if given."""
    accumulator = FidelityAccumulator(roles=roles or {})
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


def _run(session, names, feed, error: type[QCompileError], what: str,
         limit_s: float | None = DEFAULT_SAMPLE_TIME_LIMIT_S) -> list:
    try:
        return run_limited(session, names, feed, limit_s)
    except QCompileError as exc:   # the per-sample time limit
        raise error(f"{what}: {exc}") from None
    except Exception as exc:  # ORT's runtime errors (shapes only known from the data, allocation failures)
        raise error(f"{what}: {ort_error_line(exc)}") from exc


def measure_fidelity(reference: onnx.ModelProto | Path, quantized: onnx.ModelProto, source: Iterable,
                     max_samples: int, *, custom_op_library: str | None = None,
                     sample_time_limit_s: float | None = DEFAULT_SAMPLE_TIME_LIMIT_S,
                     fused: bool = True) -> dict[str, Any]:
    """The compile's verify step: FP32 and quantised models on the first ``max_samples`` calibration items,
    per-output summaries as above. ``reference`` may be the input model's path (ORT then reads a large
    model's weights from its files). ``fused=False`` runs the quantised model's Q/DQ graph op by op (no ORT CPU
    fusion): what a target that is not the CPU EP computes (TensorRT accumulates int8 products in int32; ORT's
    CPU u8s8 kernels would saturate full-range symmetric codes on x86 without VNNI)."""
    if max_samples == 0:
        return {}
    try:
        ref_session = make_session(reference if isinstance(reference, Path) else with_unique_node_names(reference),
                                   custom_op_library=custom_op_library)
        q_session = make_session(quantized, custom_op_library=custom_op_library,
                                 **({} if fused else {"optimization": GraphOptimization.DISABLED}))
    except QCompileError as exc:
        logger.warning("fidelity not measured: %s", exc)
        return {"error": str(exc)}
    names = [o.name for o in ref_session.get_outputs()]
    graph_of_reference = reference if isinstance(reference, onnx.ModelProto) else \
        onnx.load(str(reference), load_external_data=False)
    acc = FidelityAccumulator(roles=infer_output_roles(graph_of_reference))
    count = 0
    for feed in source:
        ref_out = _run(ref_session, names, feed, CalibrationDataError,
                       f"the FP32 model fails on calibration item {count}", sample_time_limit_s)
        q_out = _run(q_session, names, feed, UnsupportedModelError,
                     f"the quantised model fails on calibration item {count}", sample_time_limit_s)
        for name, r, q in zip(names, ref_out, q_out):
            acc.add(name, np.asarray(r), np.asarray(q))
        count += 1
        if count >= max_samples:
            break
    return {"items": count, "outputs": acc.summary()}
