"""FLOAT8E4M3FN (OCP FP8 E4M3, "fn": finite, no infinities) quantisation: pure numpy, no graph.

E4M3FN has 1 sign, 4 exponent (bias 7) and 3 mantissa bits; its largest finite value is 448 = 1.75·2⁸, its
smallest normal 2⁻⁶, its smallest subnormal 2⁻⁹, and one bit pattern per sign is NaN (no Inf). ONNX's
QuantizeLinear (opset 19+) with ``saturate=1`` (the default) computes

    q = saturate(round_to_nearest_even_e4m3fn(x / s)),   saturate(v) = clip(v, -448, 448)  (NaN stays NaN)

with no zero point (it must be 0), and DequantizeLinear x̂ = float(q)·s. The scale of a range is chosen so
that its absolute maximum lands on the largest code:

    s = amax / 448          (per tensor, or per channel for weights; a zero range gets s = 1)

Unlike an integer grid the step grows with |x| (3 mantissa bits: relative error ≤ 2⁻⁴ for normals), so
outliers cost the small values less than they do at int8; below 2⁻⁶·s values fall on the subnormal grid.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

E4M3FN = np.dtype(ml_dtypes.float8_e4m3fn)
E4M3FN_MAX = 448.0


def fp8_scale(amax) -> np.ndarray:
    """s = amax / 448 (scalar or per channel), float32; 1.0 where amax is zero (any scale holds a 0)."""
    amax = np.abs(np.asarray(amax, dtype=np.float64))
    scale = amax / E4M3FN_MAX
    return np.where(scale > np.finfo(np.float32).tiny, scale, 1.0).astype(np.float32)


def round_to_e4m3fn(values: np.ndarray) -> np.ndarray:
    """Saturating round-to-nearest-even to E4M3FN (QuantizeLinear's ``saturate=1``); NaN stays NaN.

    Clipping to ±448 before the cast is exact: every float beyond 448 rounds to 448 or overflows, and the
    saturating cast maps both to 448 (ml_dtypes' plain cast would give NaN)."""
    v = np.asarray(values, dtype=np.float32)
    return np.clip(v, -E4M3FN_MAX, E4M3FN_MAX).astype(E4M3FN)


def quantize_fp8(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """q = saturate(round_e4m3fn(x / s)), ``scale`` already broadcast to x; the division in float32 as ONNX."""
    return round_to_e4m3fn(np.asarray(x, dtype=np.float32) / np.asarray(scale, dtype=np.float32))


def dequantize_fp8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x̂ = float(q) · s, float32."""
    return (np.asarray(q).astype(np.float32) * np.asarray(scale, dtype=np.float32)).astype(np.float32)


def fake_quantize_fp8(x: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """(DQ(Q(x)) with one per-tensor scale, fraction of finite values saturated: |x/s| > 448)."""
    scaled = np.asarray(x, dtype=np.float32) / np.float32(scale)
    saturated = float(np.mean(np.abs(scaled) > E4M3FN_MAX)) if scaled.size else 0.0
    return dequantize_fp8(round_to_e4m3fn(scaled), np.float32(scale)), saturated
