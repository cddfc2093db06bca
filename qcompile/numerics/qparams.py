"""Quantisation parameters from ranges: pure numpy, no graph.

For an integer type with range [q_min, q_max] and a real range [r_min, r_max] (always widened to hold 0):

    asymmetric:  scale = (r_max - r_min) / (q_max - q_min),  zero_point = round(q_min - r_min / scale)
    symmetric:   scale = max(|r_min|, |r_max|) / ((q_max - q_min) // 2),  zero_point = (q_max + q_min + 1) // 2

(symmetric gives zp 0 for int8 and 128 for uint8, and maps ±max|r| to ±127, never onto the lone -128). Quantise: q = clip(round(x / scale) + zp, q_min, q_max);
dequantise: x ≈ (q - zp) * scale. With ``reduce_range`` the integer range loses one bit (int8 [-64, 63],
uint8 [0, 127]) so u8s8 products cannot saturate VPMADDUBSW's int16 accumulators on AVX2 without VNNI.
A zero-width range yields scale 1.0 (any scale represents a constant 0 exactly; the constant is then held by zp).

FLOAT8E4M3FN is the one non-integer element type: always symmetric, s = max(|r_min|, |r_max|) / 448, zero point
0, saturating round-to-nearest-even (numerics/fp8.py); ``reduce_range`` does not apply to it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from qcompile.numerics.fp8 import E4M3FN, dequantize_fp8, fp8_scale, quantize_fp8


class QuantDType(enum.Enum):
    """Element types qcompile emits: integers, and FP8 E4M3FN (a float code, see numerics/fp8.py)."""

    INT8 = "int8"
    UINT8 = "uint8"
    INT4 = "int4"
    UINT4 = "uint4"
    INT16 = "int16"
    UINT16 = "uint16"
    FLOAT8E4M3FN = "float8e4m3fn"

    @property
    def bits(self) -> int:
        return {"int8": 8, "uint8": 8, "int4": 4, "uint4": 4, "int16": 16, "uint16": 16, "float8e4m3fn": 8}[self.value]

    @property
    def signed(self) -> bool:
        return not self.value.startswith("uint")

    @property
    def is_float(self) -> bool:
        """A floating-point code (FP8): symmetric, zero point 0, no integer range."""
        return self is QuantDType.FLOAT8E4M3FN

    def int_range(self, reduce_range: bool = False) -> tuple[int, int]:
        if self.is_float:
            raise ValueError(f"{self.value} is a float format and has no integer range")
        bits = self.bits - (1 if reduce_range else 0)
        if self.signed:
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1

    @property
    def numpy_dtype(self) -> np.dtype:
        # int4/uint4 are carried in int8/uint8 arrays until packed.
        return np.dtype({"int8": np.int8, "uint8": np.uint8, "int4": np.int8, "uint4": np.uint8,
                         "int16": np.int16, "uint16": np.uint16, "float8e4m3fn": E4M3FN}[self.value])


@dataclass(frozen=True)
class TensorRange:
    """An observed real range. Scalars for per-tensor ranges, 1-D arrays (one entry per channel) otherwise."""

    min: np.ndarray | float
    max: np.ndarray | float

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.min, dtype=np.float64), np.asarray(self.max, dtype=np.float64)
        if lo.shape != hi.shape:
            raise ValueError(f"range min/max shapes differ: {lo.shape} vs {hi.shape}")
        if np.any(lo > hi):
            raise ValueError("range min exceeds max")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError("range is not finite")

    @property
    def per_channel(self) -> bool:
        return np.ndim(self.min) > 0

    def as_json(self) -> dict:
        lo, hi = np.asarray(self.min, dtype=np.float64), np.asarray(self.max, dtype=np.float64)
        if lo.ndim == 0:
            return {"min": float(lo), "max": float(hi)}
        return {"min": lo.tolist(), "max": hi.tolist()}


@dataclass(frozen=True)
class QParams:
    """Scale and zero point, scalars or one per channel along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: QuantDType
    axis: int | None = None


def compute_qparams(lo, hi, dtype: QuantDType, *, symmetric: bool, reduce_range: bool = False,
                    axis: int | None = None) -> QParams:
    """Scale/zero point for the range [lo, hi] (scalars or per-channel arrays); see the module docstring."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if dtype.is_float:
        scale = fp8_scale(np.maximum(np.abs(lo), hi))
        return QParams(scale=scale, zero_point=np.zeros(scale.shape, dtype=E4M3FN), dtype=dtype, axis=axis)
    q_min, q_max = dtype.int_range(reduce_range)
    if symmetric:
        absmax = np.maximum(np.abs(lo), np.abs(hi))
        scale = absmax / float((q_max - q_min) // 2)
        zero_point = np.full(scale.shape, (q_max + q_min + 1) // 2, dtype=np.int64)
    else:
        scale = (hi - lo) / float(q_max - q_min)
        safe = np.where(scale > 0, scale, 1.0)
        zero_point = np.clip(np.round(q_min - lo / safe), q_min, q_max).astype(np.int64)
    zero_width = ~(scale > np.finfo(np.float32).tiny)
    scale = np.where(zero_width, 1.0, scale).astype(np.float32)
    if symmetric:
        zero_point = np.where(zero_width, (q_max + q_min + 1) // 2, zero_point)
    return QParams(scale=scale, zero_point=zero_point.astype(dtype.numpy_dtype), dtype=dtype, axis=axis)


def broadcast_qparams(params: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) shaped to broadcast against a tensor of ``ndim`` axes (per channel along ``axis``)."""
    scale, zp = params.scale.astype(np.float32), params.zero_point.astype(np.float32 if params.dtype.is_float
                                                                          else np.int64)
    if params.axis is not None and scale.ndim == 1:
        shape = [1] * ndim
        shape[params.axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale, zp


def quantize(x: np.ndarray, params: QParams) -> np.ndarray:
    """q = clip(round_half_even(x / scale) + zp, q_min, q_max), as ONNX QuantizeLinear computes it."""
    scale, zp = broadcast_qparams(params, np.ndim(x))
    if params.dtype.is_float:
        return quantize_fp8(x, scale)
    q_min, q_max = params.dtype.int_range(False)
    q = np.rint(np.asarray(x, dtype=np.float32) / scale) + zp
    return np.clip(q, q_min, q_max).astype(params.dtype.numpy_dtype)


def dequantize(q: np.ndarray, params: QParams) -> np.ndarray:
    """x = (q - zp) * scale, as ONNX DequantizeLinear computes it."""
    scale, zp = broadcast_qparams(params, np.ndim(q))
    if params.dtype.is_float:
        return dequantize_fp8(q, scale)
    return ((q.astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)


def weight_range(weight: np.ndarray, axis: int | None) -> TensorRange:
    """Per-tensor (axis None) or per-channel min/max of a constant weight."""
    w = np.asarray(weight, dtype=np.float64)
    if axis is None:
        return TensorRange(float(w.min()) if w.size else 0.0, float(w.max()) if w.size else 0.0)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    if moved.shape[1] == 0:
        zeros = np.zeros(w.shape[axis])
        return TensorRange(zeros, zeros)
    return TensorRange(moved.min(axis=1), moved.max(axis=1))


BIAS_INT32_LIMIT = 2 ** 30


def bias_safe_weight_scale(weight_scale: np.ndarray, bias: np.ndarray, input_scale: float,
                           limit: int = BIAS_INT32_LIMIT) -> np.ndarray:
    """Raise per-channel weight scales so the int32 bias b / (s_x·s_w) stays within ±limit.

    A channel whose weights are (nearly) zero — common after BatchNorm folding — gets a tiny s_w, and its bias
    would overflow int32 and be clipped, corrupting the whole channel. Raising s_w to |b| / (s_x·limit) for
    those channels costs nothing: their weights round to ~0 either way. Half the int32 range is kept as
    headroom for the accumulated products.
    """
    floor = np.abs(np.asarray(bias, dtype=np.float64)) / (float(input_scale) * limit)
    # np.asarray: a 0-d (per-tensor) result must stay an array, not become a numpy scalar
    return np.asarray(np.maximum(np.asarray(weight_scale, dtype=np.float64), floor), dtype=np.float32)
