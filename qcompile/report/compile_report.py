"""The compile report: what went in, what was decided per node and tensor, what came out, and how close it is.

Fidelity of output o over samples i compares the FP32 output y and the quantised output ŷ:
cosine_i = ⟨y_i, ŷ_i⟩ / (‖y_i‖·‖ŷ_i‖), SQNR = 10·log10(Σy² / Σ(y-ŷ)²), and for rank-2 outputs with more
than one column (logits) top-1 agreement = mean_i [argmax y_i = argmax ŷ_i].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from qcompile.numerics.qparams import sqnr_db

REPORT_VERSION = 1


def cosine_rows(reference: np.ndarray, approx: np.ndarray) -> np.ndarray:
    """Cosine similarity per sample (first axis); two all-zero rows count as identical."""
    ref = np.asarray(reference, dtype=np.float64).reshape(reference.shape[0], -1)
    app = np.asarray(approx, dtype=np.float64).reshape(approx.shape[0], -1)
    dot = np.sum(ref * app, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(app, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(app, axis=1) == 0)
    return np.where(both_zero, 1.0, dot / np.where(norms > 0, norms, 1.0))


@dataclass
class FidelityAccumulator:
    """Streams FP32/quantised output pairs; O(samples) scalars only, never the outputs."""

    cosines: dict[str, list[float]] = field(default_factory=dict)
    signal: dict[str, float] = field(default_factory=dict)
    noise: dict[str, float] = field(default_factory=dict)
    max_abs: dict[str, float] = field(default_factory=dict)
    top1: dict[str, list[bool]] = field(default_factory=dict)

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
        diff = ref.astype(np.float64) - app.astype(np.float64)
        self.signal[name] = self.signal.get(name, 0.0) + float(np.sum(ref.astype(np.float64) ** 2))
        self.noise[name] = self.noise.get(name, 0.0) + float(np.sum(diff ** 2))
        self.max_abs[name] = max(self.max_abs.get(name, 0.0), float(np.max(np.abs(diff))))
        if ref.ndim == 2 and ref.shape[1] > 1:
            self.top1.setdefault(name, []).extend((ref.argmax(1) == app.argmax(1)).tolist())

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, cos in self.cosines.items():
            noise, signal = self.noise[name], self.signal[name]
            entry = {
                "samples": len(cos),
                "cosine_mean": float(np.mean(cos)),
                "cosine_min": float(np.min(cos)),
                "sqnr_db": _finite(float("inf") if noise == 0 else 10 * math.log10(signal / noise) if signal else None),
                "max_abs_error": self.max_abs[name],
            }
            if name in self.top1:
                entry["top1_agreement"] = float(np.mean(self.top1[name]))
            out[name] = entry
        return out


def _finite(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


@dataclass(frozen=True)
class CompileReport:
    data: Mapping[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False, default=_json_default)

    @property
    def quantized_nodes(self) -> list[str]:
        return [n["name"] for n in self.data["nodes"] if n["status"] == "quantized"]

    @property
    def fidelity(self) -> Mapping[str, Any]:
        return self.data.get("fidelity", {})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def node_entries(decisions: Mapping[str, Any], kernels: Mapping[str, str], unfused: Sequence[str]) -> list[dict]:
    entries = []
    for decision in decisions.values():
        entry = {"name": decision.name, "op_type": decision.op_type, "status": decision.status.value}
        if decision.reason:
            entry["reason"] = decision.reason
        if decision.detail:
            entry.update(dict(decision.detail))
        if decision.name in kernels:
            entry["ort_kernel"] = kernels[decision.name]
            entry["fused"] = decision.name not in unfused
        entries.append(entry)
    return entries


__all__ = ["CompileReport", "FidelityAccumulator", "cosine_rows", "node_entries", "REPORT_VERSION", "sqnr_db"]
