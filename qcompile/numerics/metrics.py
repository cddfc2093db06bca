"""Metric definitions: how close an approximation x̂ is to a reference x (one home for each formula).

    power sums       S = Σ x²,  N = Σ (x − x̂)²                      (float64)
    SQNR             10·log10(S / N) dB            (sqnr_db from the arrays, sqnr_db_from_power from S and N)
    relative error   sqrt(N / S) = 10^(−SQNR/20)   (relative_error_from_power)
    cosine per row   ⟨x_i, x̂_i⟩ / (‖x_i‖·‖x̂_i‖), two all-zero rows count as identical   (cosine_rows)
"""

from __future__ import annotations

import math

import numpy as np


def power_sums(reference: np.ndarray, approx: np.ndarray) -> tuple[float, float]:
    """(Σ x², Σ (x − x̂)²) in float64: float32 sums overflow on large activations; no BLAS dot (its threads stall
    on a busy machine)."""
    ref = np.asarray(reference, np.float64)
    return float(np.sum(np.square(ref))), float(np.sum(np.square(ref - np.asarray(approx, np.float64))))


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio 10·log10(Σx² / Σ(x - x̂)²) in dB of two arrays (inf when exact,
    -inf when the reference is all zero and the approximation is not)."""
    signal, noise = power_sums(reference, approx)
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


def sqnr_db_from_power(signal: float, noise: float) -> float | str | None:
    """10·log10(signal / noise) from power sums, as a JSON value: "inf" without noise, None without signal
    (0/0 included), "nan" when the sums are NaN (outputs holding Inf/NaN)."""
    if math.isnan(signal) or math.isnan(noise):
        return "nan"
    if noise == 0:
        return "inf" if signal > 0 else None
    if not signal > 0:
        return None
    value = 10 * math.log10(signal / noise)
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def relative_error_from_power(signal: float, noise: float) -> float:
    """sqrt(noise / signal) from power sums; 0 when both are 0, inf when only the signal is."""
    if noise == 0:
        return 0.0
    return math.sqrt(noise / signal) if signal > 0 else math.inf


def cosine_rows(reference: np.ndarray, approx: np.ndarray) -> np.ndarray:
    """Cosine similarity per sample (first axis); two all-zero rows count as identical."""
    ref = np.asarray(reference, dtype=np.float64).reshape(reference.shape[0], -1)
    app = np.asarray(approx, dtype=np.float64).reshape(approx.shape[0], -1)
    dot = np.sum(ref * app, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(app, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(app, axis=1) == 0)
    return np.where(both_zero, 1.0, dot / np.where(norms > 0, norms, 1.0))
