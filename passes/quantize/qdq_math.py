"""The integer arithmetic behind static Q/DQ insertion: weight parameters, the int32 bias, bias correction.

For a node y = f(x, W, b) with input parameters (s_x, z_x):

    weights   s_W per output channel (or per tensor) from min/max of W, symmetric; with a bias, s_W is raised
              where needed so that |b| / (s_x·s_W) fits int32 (numerics.qparams.bias_safe_weight_scale)
    bias      b_q = clip(round(b / (s_x·s_W)), -2³¹, 2³¹ − 1)  (int32, zero point 0)
    correct   b' = b − (Ŵ − W)·E[x]   (Nagel et al., 2019), E[x] the calibrated per-channel input mean

Raises UnsupportedModelError where s_x·s_W or b' has no float32 value: then the FP32 node overflows as well.
"""

from __future__ import annotations

import numpy as np

from qcompile.config import QuantSpec
from qcompile.errors import UnsupportedModelError
from qcompile.numerics.qparams import QParams, bias_safe_weight_scale, compute_qparams, weight_range


def bias_scale(x_params: QParams, w_params: QParams, node_name: str) -> np.ndarray:
    """The int32 bias scale s_x · s_w (per channel or scalar), float32.

    Raises UnsupportedModelError when it has no float32 value: then max|x| · max|w| is beyond float32, so the
    FP32 node overflows as well and no int32 bias can represent its bias."""
    with np.errstate(over="ignore"):
        scale = (np.float32(x_params.scale) * w_params.scale.astype(np.float32)).astype(np.float32)
    if not np.all(np.isfinite(scale)):
        raise UnsupportedModelError(
            f"node {node_name}: input scale {float(x_params.scale):.3g} x weight scale "
            f"{float(np.max(w_params.scale)):.3g} overflows float32 (the FP32 model overflows there)")
    return scale


def weight_qparams(values: np.ndarray, axis: int | None, spec: QuantSpec, reduce_range: bool,
                   bias: np.ndarray | None, x_params: QParams) -> QParams:
    """(s_W, z_W) of a float32 weight; with a bias and symmetric weights, s_W is made bias-safe."""
    rng = weight_range(values, axis)
    params = compute_qparams(rng.min, rng.max, spec.dtype, symmetric=spec.symmetric,
                             reduce_range=reduce_range, axis=axis)
    if bias is not None and spec.symmetric:
        # per channel: each channel's own bias; per tensor: the largest |bias| bounds the one scale
        limiting_bias = (bias.reshape(np.shape(params.scale))
                         if np.size(params.scale) == np.size(bias) else np.max(np.abs(bias)))
        safe = bias_safe_weight_scale(params.scale, limiting_bias, float(x_params.scale))
        params = QParams(scale=safe, zero_point=params.zero_point, dtype=params.dtype, axis=axis)
    return params


def int32_bias(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """b_q = clip(round(b / s), int32 range); a zero scale divides by 1 instead."""
    safe = np.where(scale > 0, scale, 1.0)
    return np.clip(np.rint(values.astype(np.float64) / safe), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)


def bias_correction_delta(op: str, weight: np.ndarray, weight_dq: np.ndarray, input_mean: np.ndarray,
                          group: int = 1, trans_b: bool = False) -> np.ndarray:
    """(Ŵ − W)·E[x] per output channel: the expected output shift the weight rounding causes."""
    delta = weight_dq.astype(np.float64) - weight.astype(np.float64)
    mean = np.asarray(input_mean, dtype=np.float64)
    if op == "Conv":
        out_channels, in_per_group = delta.shape[0], delta.shape[1]
        summed = delta.reshape(out_channels, in_per_group, -1).sum(axis=2)          # [Co, Ci/g]
        group_of = np.arange(out_channels) // (out_channels // group)
        return np.einsum("oc,oc->o", summed, mean.reshape(group, in_per_group)[group_of])
    if op == "Gemm":
        return delta @ mean if trans_b else mean @ delta
    raise ValueError(f"no bias correction for {op}")


def corrected_bias(op: str, bias: np.ndarray, weight: np.ndarray, weight_dq: np.ndarray, input_mean: np.ndarray,
                   group: int, trans_b: bool, node_name: str) -> tuple[np.ndarray, float]:
    """(b' = b − (Ŵ − W)·E[x] as float32, max |shift|); UnsupportedModelError where b' leaves float32."""
    shift = bias_correction_delta(op, weight, weight_dq, input_mean, group, trans_b)
    corrected = bias.astype(np.float64) - shift
    if not np.all(np.abs(corrected) <= np.finfo(np.float32).max):
        # |ΔW|·|E[x]| beyond float32 implies |W|·|x| is too: the FP32 node overflows as well
        raise UnsupportedModelError(f"node {node_name}: its bias correction overflows float32 "
                                    "(the FP32 model overflows there)")
    return corrected.astype(np.float32), float(np.max(np.abs(shift))) if shift.size else 0.0


def is_depthwise_conv(op: str, weight_shape: tuple[int, ...], group: int) -> bool:
    """A Conv with one input and one output channel per group (W: [group, 1, k...]): ORT's QLinearConv runs
    it on MLAS's depthwise kernel instead of a GEMM."""
    return op == "Conv" and len(weight_shape) >= 2 and weight_shape[0] == group \
        and weight_shape[1] == 1
