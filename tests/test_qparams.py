"""Tests for qcompile.numerics.qparams: scale/zero-point math (hypothesis), bit-exactness against ONNX Runtime's
QuantizeLinear/DequantizeLinear, the int32-bias guard and SQNR."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile.numerics.metrics import sqnr_db
from qcompile.numerics.qparams import (BIAS_INT32_LIMIT, QParams, QuantDType, TensorRange, bias_safe_weight_scale,
                              compute_qparams, dequantize, quantize, weight_range)

EIGHT_BIT = [QuantDType.INT8, QuantDType.UINT8]
# float32 rounding of the scale and of x / scale may push the error a hair past scale / 2
REL_SLACK = 1e-5

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False,
                   width=32)
magnitudes = st.floats(min_value=1e-4, max_value=1e4, allow_nan=False, allow_infinity=False)


def _range_strategy():
    """(lo, hi) with lo <= hi; the quantiser widens the range to hold 0."""
    return st.tuples(finite, finite).map(lambda t: (min(t), max(t)))


def _roundtrip_error_bound(params: QParams) -> np.ndarray:
    return params.scale.astype(np.float64) / 2 * (1 + REL_SLACK) + 1e-30


# ---------------------------------------------------------------------------------------------- round trip


@settings(max_examples=150, deadline=None)
@given(rng_pair=_range_strategy(), dtype=st.sampled_from(EIGHT_BIT), symmetric=st.booleans(),
       reduce_range=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_roundtrip_error_at_most_half_scale_per_tensor(rng_pair, dtype, symmetric, reduce_range, seed):
    lo, hi = rng_pair
    params = compute_qparams(lo, hi, dtype, symmetric=symmetric, reduce_range=reduce_range)
    lo_w, hi_w = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        m = max(abs(lo_w), abs(hi_w))
        lo_w, hi_w = -m, m
    x = np.random.default_rng(seed).uniform(lo_w, hi_w, size=257).astype(np.float32)
    x = np.concatenate([x, np.float32([lo_w, hi_w, 0.0])]).astype(np.float32)
    q = quantize(x, params)
    assert q.dtype == dtype.numpy_dtype
    back = dequantize(q, params)
    err = np.abs(back.astype(np.float64) - x.astype(np.float64))
    assert np.all(err <= _roundtrip_error_bound(params)), (float(err.max()), float(params.scale))


@settings(max_examples=100, deadline=None)
@given(dtype=st.sampled_from(EIGHT_BIT), symmetric=st.booleans(), reduce_range=st.booleans(),
       channels=st.integers(1, 6), axis=st.integers(0, 2), seed=st.integers(0, 2 ** 32 - 1),
       scale_exp=st.floats(-3, 3))
def test_roundtrip_error_at_most_half_scale_per_channel(dtype, symmetric, reduce_range, channels, axis, seed,
                                                        scale_exp):
    rng = np.random.default_rng(seed)
    shape = [3, 4, 5]
    shape[axis] = channels
    # channels with very different magnitudes, some one-sided
    gains = (10.0 ** scale_exp) * np.exp(rng.normal(0, 1.5, channels))
    offsets = rng.uniform(-1, 1, channels)
    bshape = [1, 1, 1]
    bshape[axis] = channels
    x = (rng.standard_normal(shape) * gains.reshape(bshape) + offsets.reshape(bshape) * gains.reshape(bshape))
    x = x.astype(np.float32)
    r = weight_range(x, axis)
    assert r.per_channel and np.shape(r.min) == (channels,)
    params = compute_qparams(r.min, r.max, dtype, symmetric=symmetric, reduce_range=reduce_range, axis=axis)
    assert params.scale.shape == (channels,) and params.zero_point.shape == (channels,)
    back = dequantize(quantize(x, params), params)
    bound = _roundtrip_error_bound(params).reshape(bshape)
    err = np.abs(back.astype(np.float64) - x.astype(np.float64))
    assert np.all(err <= bound)


@settings(max_examples=150, deadline=None)
@given(rng_pair=_range_strategy(), dtype=st.sampled_from(EIGHT_BIT + [QuantDType.INT16, QuantDType.UINT16]),
       symmetric=st.booleans(), reduce_range=st.booleans())
def test_zero_is_exactly_representable(rng_pair, dtype, symmetric, reduce_range):
    params = compute_qparams(*rng_pair, dtype, symmetric=symmetric, reduce_range=reduce_range)
    q_min, q_max = dtype.int_range(reduce_range)
    assert q_min <= int(params.zero_point) <= q_max
    zero = np.zeros(4, np.float32)
    assert np.array_equal(dequantize(quantize(zero, params), params), zero)


@settings(max_examples=100, deadline=None)
@given(rng_pair=_range_strategy(), dtype=st.sampled_from(EIGHT_BIT), symmetric=st.booleans(),
       reduce_range=st.booleans())
def test_scale_positive_and_zero_point_in_range(rng_pair, dtype, symmetric, reduce_range):
    params = compute_qparams(*rng_pair, dtype, symmetric=symmetric, reduce_range=reduce_range)
    assert params.scale.dtype == np.float32 and float(params.scale) > 0
    q_min, q_max = dtype.int_range(reduce_range)
    assert q_min <= int(params.zero_point) <= q_max
    if symmetric:
        assert int(params.zero_point) == (0 if dtype.signed else (q_max + 1) // 2)


@pytest.mark.parametrize("dtype", EIGHT_BIT)
@pytest.mark.parametrize("symmetric", [False, True])
def test_zero_width_range_gives_scale_one(dtype, symmetric):
    params = compute_qparams(0.0, 0.0, dtype, symmetric=symmetric)
    assert float(params.scale) == 1.0
    zero = np.zeros(3, np.float32)
    assert np.array_equal(dequantize(quantize(zero, params), params), zero)
    per_channel = compute_qparams(np.array([0.0, -1.0]), np.array([0.0, 1.0]), dtype, symmetric=symmetric, axis=0)
    assert per_channel.scale[0] == 1.0 and per_channel.scale[1] < 1.0
    x = np.array([[0.0, 0.0], [0.5, -0.25]], np.float32)
    back = dequantize(quantize(x, per_channel), per_channel)
    assert np.array_equal(back[0], x[0])


def test_single_sided_range_is_widened_to_hold_zero():
    params = compute_qparams(2.0, 4.0, QuantDType.UINT8, symmetric=False)
    assert int(params.zero_point) == 0
    assert float(params.scale) == pytest.approx(4.0 / 255, rel=1e-6)
    neg = compute_qparams(-4.0, -2.0, QuantDType.UINT8, symmetric=False)
    assert int(neg.zero_point) == 255
    assert float(neg.scale) == pytest.approx(4.0 / 255, rel=1e-6)


@pytest.mark.parametrize("dtype, reduce_range, expected", [
    (QuantDType.INT8, False, (-128, 127)), (QuantDType.UINT8, False, (0, 255)),
    (QuantDType.INT8, True, (-64, 63)), (QuantDType.UINT8, True, (0, 127)),
    (QuantDType.INT4, False, (-8, 7)), (QuantDType.UINT4, False, (0, 15)),
    (QuantDType.INT16, False, (-32768, 32767)), (QuantDType.UINT16, False, (0, 65535)),
])
def test_int_ranges(dtype, reduce_range, expected):
    assert dtype.int_range(reduce_range) == expected


def test_symmetric_int8_maps_absmax_to_127_never_minus_128():
    params = compute_qparams(-3.0, 2.0, QuantDType.INT8, symmetric=True)
    q = quantize(np.float32([-3.0, 3.0, 2.0]), params)
    assert q.tolist() == [-127, 127, round(2.0 / (3.0 / 127))]
    reduced = compute_qparams(-3.0, 2.0, QuantDType.INT8, symmetric=True, reduce_range=True)
    assert quantize(np.float32([-3.0, 3.0]), reduced).tolist() == [-63, 63]


def test_quantize_rounds_half_to_even_and_saturates():
    params = QParams(scale=np.float32(1.0), zero_point=np.int8(0), dtype=QuantDType.INT8)
    q = quantize(np.float32([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0]), params)
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]


def test_tensor_range_validation():
    with pytest.raises(ValueError):
        TensorRange(1.0, 0.0)
    with pytest.raises(ValueError):
        TensorRange(0.0, float("inf"))
    with pytest.raises(ValueError):
        TensorRange(np.zeros(2), np.zeros(3))
    assert TensorRange(np.array([-1.0, 0.0]), np.array([1.0, 2.0])).as_json() == {"min": [-1.0, 0.0],
                                                                                   "max": [1.0, 2.0]}


# ---------------------------------------------------------------------------------------------- vs ONNX Runtime


def _qdq_session(op: str, x_type: int, scale: np.ndarray, zp: np.ndarray, axis: int | None, rank: int):
    inits = [numpy_helper.from_array(scale.astype(np.float32), "s"), numpy_helper.from_array(zp, "z")]
    attrs = {"axis": axis} if axis is not None else {}
    out_type = helper.np_dtype_to_tensor_dtype(zp.dtype) if op == "QuantizeLinear" else TensorProto.FLOAT
    node = helper.make_node(op, ["x", "s", "z"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", x_type, [None] * rank)],
                              [helper.make_tensor_value_info("y", out_type, [None] * rank)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dtype", EIGHT_BIT)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantize_dequantize_match_onnxruntime_per_tensor(dtype, symmetric, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((4, 257)) * rng.uniform(0.01, 50)).astype(np.float32)
    # include exact .5 ties and out-of-range values
    params = compute_qparams(float(np.percentile(x, 5)), float(np.percentile(x, 95)), dtype, symmetric=symmetric)
    ties = (np.arange(-20, 20) + 0.5).astype(np.float32) * params.scale
    x = np.concatenate([x.reshape(-1), ties.astype(np.float32)]).reshape(1, -1)
    ours = quantize(x, params)
    sess = _qdq_session("QuantizeLinear", TensorProto.FLOAT, params.scale.reshape(()),
                        params.zero_point.reshape(()), None, 2)
    theirs = sess.run(None, {"x": x})[0]
    assert theirs.dtype == ours.dtype
    np.testing.assert_array_equal(ours, theirs)
    dq = _qdq_session("DequantizeLinear", helper.np_dtype_to_tensor_dtype(ours.dtype), params.scale.reshape(()),
                      params.zero_point.reshape(()), None, 2)
    np.testing.assert_array_equal(dequantize(ours, params), dq.run(None, {"x": ours})[0])


@pytest.mark.parametrize("dtype", EIGHT_BIT)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", [0, 1, 3])
def test_quantize_dequantize_match_onnxruntime_per_channel(dtype, symmetric, axis):
    rng = np.random.default_rng(axis)
    shape = [5, 6, 3, 4]
    x = rng.standard_normal(shape).astype(np.float32)
    gains = np.exp(rng.normal(0, 2, shape[axis])).astype(np.float32)
    bshape = [1] * 4
    bshape[axis] = -1
    x = (x * gains.reshape(bshape)).astype(np.float32)
    r = weight_range(x, axis)
    params = compute_qparams(np.asarray(r.min) * 0.8, np.asarray(r.max) * 0.8, dtype, symmetric=symmetric,
                             axis=axis)
    ours = quantize(x, params)
    sess = _qdq_session("QuantizeLinear", TensorProto.FLOAT, params.scale, params.zero_point, axis, 4)
    np.testing.assert_array_equal(ours, sess.run(None, {"x": x})[0])
    dq = _qdq_session("DequantizeLinear", helper.np_dtype_to_tensor_dtype(ours.dtype), params.scale,
                      params.zero_point, axis, 4)
    np.testing.assert_array_equal(dequantize(ours, params), dq.run(None, {"x": ours})[0])


# ---------------------------------------------------------------------------------------------- bias guard


@settings(max_examples=150, deadline=None)
@given(data=st.data(), channels=st.integers(1, 8), input_scale=magnitudes)
def test_bias_safe_weight_scale_keeps_int32_bias_in_range(data, channels, input_scale):
    weight_scale = np.array(data.draw(st.lists(st.floats(1e-30, 1e2), min_size=channels,
                                               max_size=channels)), dtype=np.float32)
    bias = np.array(data.draw(st.lists(st.floats(-1e6, 1e6, allow_subnormal=False),
                                       min_size=channels, max_size=channels)), dtype=np.float32)
    sx = np.float32(input_scale)
    safe = bias_safe_weight_scale(weight_scale, bias, float(sx))
    assert safe.dtype == np.float32 and safe.shape == weight_scale.shape
    # never lowers a scale, and leaves the ones that were already safe untouched
    assert np.all(safe >= weight_scale)
    ratio_before = np.abs(bias.astype(np.float64)) / (float(sx) * weight_scale.astype(np.float64))
    untouched = ratio_before <= BIAS_INT32_LIMIT
    assert np.array_equal(safe[untouched], weight_scale[untouched])
    # what insert_qdq computes: the float32 bias scale s_x * s_w and round(b / scale)
    bias_scale = (sx * safe).astype(np.float32).astype(np.float64)
    assert np.all(np.abs(bias.astype(np.float64)) / bias_scale <= BIAS_INT32_LIMIT * (1 + 1e-6))


def test_bias_safe_weight_scale_dead_channel():
    # a channel whose weights are all ~0 after BN folding but with a sizeable bias
    weight_scale = np.float32([0.01, 1e-12])
    bias = np.float32([0.5, 3.0])
    safe = bias_safe_weight_scale(weight_scale, bias, 0.02)
    assert safe[0] == weight_scale[0]
    assert safe[1] == pytest.approx(3.0 / (0.02 * 2 ** 30), rel=1e-6)
    assert abs(3.0 / (0.02 * float(safe[1]))) <= 2 ** 30 * (1 + 1e-6)


# ---------------------------------------------------------------------------------------------- SQNR


def test_sqnr_db_values():
    x = np.array([3.0, 4.0])  # signal 25
    assert sqnr_db(x, x) == float("inf")
    assert sqnr_db(x, x + np.array([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))
    assert sqnr_db(np.zeros(3), np.ones(3)) == float("-inf")
    assert sqnr_db(x, np.zeros(2)) == pytest.approx(0.0)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), noise=st.floats(1e-4, 1.0))
def test_sqnr_db_matches_formula_and_scales(seed, noise):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(64)
    e = rng.standard_normal(64) * noise
    assume(np.sum(e ** 2) > 0)
    expected = 10 * math.log10(np.sum(x ** 2) / np.sum(e ** 2))
    assert sqnr_db(x, x + e) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # scaling both signal and noise by the same factor leaves SQNR unchanged
    assert sqnr_db(7 * x, 7 * (x + e)) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # halving the noise gains 20*log10(2) ~ 6.02 dB
    assert sqnr_db(x, x + e / 2) == pytest.approx(expected + 20 * math.log10(2), rel=1e-9, abs=1e-9)


def test_quantization_sqnr_of_gaussian_is_plausible():
    """8-bit uniform quantisation of a Gaussian clipped at ±4σ gives roughly 6.02·8 + 1.76 - 20·log10(4·√3)
    ≈ 38.8 dB; allow ±3 dB."""
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    params = compute_qparams(-4.0, 4.0, QuantDType.INT8, symmetric=False)
    s = sqnr_db(x, dequantize(quantize(x, params), params))
    assert 35.5 < s < 42.0
