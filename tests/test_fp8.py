"""Tests for qcompile.numerics.fp8 and the FLOAT8E4M3FN path of qcompile.numerics.qparams: saturating
round-to-nearest-even against ONNX's reference QuantizeLinear and ONNX Runtime's CPU kernel (bit-exact), the
scale amax/448, and the round-trip error bound of a 3-bit mantissa."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcompile.numerics.fp8 import E4M3FN, E4M3FN_MAX, fake_quantize_fp8, fp8_scale, round_to_e4m3fn
from qcompile.numerics.qparams import QParams, QuantDType, compute_qparams, dequantize, quantize

FP8 = QuantDType.FLOAT8E4M3FN
floats32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)
arrays = st.lists(floats32, min_size=1, max_size=64).map(lambda v: np.asarray(v, dtype=np.float32))
scales = st.floats(min_value=2.0 ** -20, max_value=1024.0, allow_nan=False, allow_infinity=False, width=32)


def _quantize_model(opset: int) -> bytes:
    """x -> QuantizeLinear(x, s, 0 as E4M3FN, saturate=1): the op qcompile emits, at ``opset``."""
    zero = numpy_helper.from_array(np.zeros((), dtype=E4M3FN), "zp")
    node = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], saturate=1)
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
                                            helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT8E4M3FN, ["n"])], [zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


_REFERENCE = ReferenceEvaluator(_quantize_model(21))
_ORT = ort.InferenceSession(_quantize_model(19).SerializeToString(), providers=["CPUExecutionProvider"])


def _bits(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).view(np.uint8)


@settings(max_examples=200, deadline=None)
@given(arrays, scales)
def test_quantize_matches_onnx_reference_bit_for_bit(x, scale):
    s = np.float32(scale)
    ours = quantize(x, QParams(scale=np.asarray(s), zero_point=np.zeros((), E4M3FN), dtype=FP8))
    reference = _REFERENCE.run(None, {"x": x, "s": np.asarray(s)})[0]
    np.testing.assert_array_equal(_bits(ours), _bits(np.asarray(reference, dtype=E4M3FN)))


@settings(max_examples=100, deadline=None)
@given(arrays, scales)
def test_quantize_matches_onnxruntime_cpu_bit_for_bit(x, scale):
    s = np.asarray(np.float32(scale))
    ort_q = _ORT.run(None, {"x": x, "s": s})[0]
    np.testing.assert_array_equal(_bits(round_to_e4m3fn(x / s)), _bits(ort_q))


@settings(max_examples=200, deadline=None)
@given(floats32)
def test_round_is_nearest_even_within_range_and_saturates_beyond(v):
    q = float(round_to_e4m3fn(np.float32(v)).astype(np.float32))
    if abs(v) >= E4M3FN_MAX:
        assert q == np.sign(v) * E4M3FN_MAX
        return
    # inside the range: ml_dtypes' cast (round to nearest even) is the definition, and the result is finite
    assert q == float(np.float32(v).astype(ml_dtypes.float8_e4m3fn).astype(np.float32))
    assert abs(q) <= E4M3FN_MAX


def test_special_values():
    out = round_to_e4m3fn(np.array([np.nan, np.inf, -np.inf, 464.0, 1e30, 2.0 ** -10, 2.0 ** -9, 0.0], np.float32))
    values = out.astype(np.float32)
    assert np.isnan(values[0])
    np.testing.assert_array_equal(values[1:], [448, -448, 448, 448, 0.0, 2.0 ** -9, 0.0])   # 2^-10: tie -> even 0


@settings(max_examples=150, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False), st.floats(min_value=-1.0, max_value=1.0))
def test_scale_maps_amax_onto_448_and_round_trip_error_is_bounded(amax, fraction):
    params = compute_qparams(-amax, amax * 0.5, FP8, symmetric=False)   # symmetric whatever the flag
    assert params.scale.dtype == np.float32 and params.zero_point.dtype == E4M3FN
    np.testing.assert_allclose(float(params.scale), amax / 448, rtol=1e-6)
    x = np.float32(amax * fraction)
    err = abs(float(dequantize(quantize(np.array([x]), params), params)[0]) - float(x))
    # normals: half a unit in the last of 3 mantissa bits (relative 2^-4); subnormals: half of 2^-9·s
    bound = max(abs(float(x)) * 2.0 ** -4, 2.0 ** -10 * float(params.scale)) * (1 + 1e-5)
    assert err <= bound


def test_per_channel_scales_and_zero_range():
    params = compute_qparams(np.array([-2.0, 0.0, -1.0]), np.array([1.0, 0.0, 4.0]), FP8, symmetric=True, axis=0)
    np.testing.assert_allclose(params.scale, [2 / 448, 1.0, 4 / 448], rtol=1e-6)
    w = np.array([[-2.0, 1.0], [0.0, 0.0], [4.0, -1.0]], np.float32)
    np.testing.assert_allclose(dequantize(quantize(w, params), params), w, rtol=2 ** -4)
    np.testing.assert_array_equal(fp8_scale(np.array([0.0, 448.0])), [1.0, 1.0])


def test_fake_quantize_reports_saturation():
    x = np.array([0.5, 1.0, 10.0, -20.0], np.float32)
    dq, saturated = fake_quantize_fp8(x, 1.0 / 448)   # range ±1: the two outliers saturate
    assert saturated == pytest.approx(0.5)
    np.testing.assert_array_equal(dq, [0.5, 1.0, 1.0, -1.0])


def test_fp8_has_no_integer_range():
    assert FP8.is_float and FP8.signed and FP8.bits == 8 and FP8.numpy_dtype == E4M3FN
    with pytest.raises(ValueError):
        FP8.int_range()
