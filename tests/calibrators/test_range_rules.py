"""calibrators/range_rules.py: bounded producers, and no histogram method worse than min-max on expected MSE."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile.calibrators.collector import collect_statistics
from qcompile.calibrators.entropy import EntropyCalibrator, entropy_threshold, folded_magnitudes
from qcompile.calibrators.mse import MseCalibrator, expected_mse, expected_mse_of_range
from qcompile.calibrators.percentile import PercentileCalibrator
from qcompile.calibrators.range_rules import (Bound, bounded_range, grid_error, guarded_range, tensor_bounds)
from qcompile.config import CalibrationMethod
from qcompile.numerics.qparams import QuantDType, TensorRange, compute_qparams, dequantize, quantize
from qcompile.pass_infra import StatKind, StatRequest


def _fed(calibrator, x):
    for chunk in np.array_split(x, 3):
        calibrator.update(chunk)
    return calibrator


def _actual_mse(x, rng: TensorRange, symmetric: bool) -> float:
    params = compute_qparams(rng.min, rng.max, QuantDType.UINT8, symmetric=symmetric)
    return float(np.mean((dequantize(quantize(x, params), params).astype(np.float64) - x) ** 2))


# ---- expected_mse_of_range ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 40), st.integers(41, 64))
def test_expected_mse_of_range_equals_the_edge_search_formula(seed, lo_index, hi_index):
    """On bin edges (and without clamping centres) it is expected_mse / count, the formula MSE searches with."""
    counts = np.random.default_rng(seed).integers(0, 50, 64)
    counts[0] = 1
    edges = np.linspace(-2.0, 3.0, 65)
    ours = expected_mse_of_range(counts, edges, edges[lo_index], edges[hi_index], 255.0)
    reference = expected_mse(counts, edges, np.array(lo_index), np.array(hi_index), 255.0) / counts.sum()
    assert ours == pytest.approx(float(reference), rel=1e-9, abs=1e-15)


def test_expected_mse_of_range_tracks_the_actual_quantisation_error():
    """Gaussian data, 8-bit asymmetric grid: predicted vs measured MSE within 10 % for an unclipped and a
    clipped range (the uniform-rounding model is what the rule compares)."""
    x = np.random.default_rng(1).standard_normal(200_000).astype(np.float32)
    cal = _fed(MseCalibrator(symmetric=False), x)
    hist = cal.histogram
    for lo, hi in ((float(x.min()), float(x.max())), (-2.5, 2.5)):
        predicted = expected_mse_of_range(hist.counts, hist.edges, lo, hi, 255.0, hist.min, hist.max)
        assert predicted == pytest.approx(_actual_mse(x, TensorRange(lo, hi), False), rel=0.10)


# ---- rule (b): never worse than min-max on expected MSE -------------------------------------------------------

_DISTRIBUTIONS = ("relu6_saturating", "laplace", "one_sided_exponential", "gaussian_outliers")


def _data(kind: str, seed: int, size: int = 20_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "relu6_saturating":
        return np.clip(rng.normal(2.0, 3.0, size), 0.0, 6.0).astype(np.float32)
    if kind == "laplace":
        return rng.laplace(size=size).astype(np.float32)
    if kind == "one_sided_exponential":
        return (rng.exponential(size=size) - 0.05).astype(np.float32)
    x = rng.standard_normal(size)
    x[: size // 1000] *= 20.0
    return x.astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(_DISTRIBUTIONS), st.integers(0, 10_000),
       st.sampled_from(("entropy", "entropy_signed", "percentile", "percentile_sym", "mse", "mse_sym")))
def test_guarded_range_never_has_a_larger_expected_error_than_minmax(kind, seed, method):
    x = _data(kind, seed)
    calibrator, symmetric = {
        "entropy": (EntropyCalibrator(unsigned=True), False),
        "entropy_signed": (EntropyCalibrator(unsigned=False), True),
        "percentile": (PercentileCalibrator(99.9, symmetric=False), False),
        "percentile_sym": (PercentileCalibrator(99.9, symmetric=True), True),
        "mse": (MseCalibrator(symmetric=False), False),
        "mse_sym": (MseCalibrator(symmetric=True), True)}[method]
    _fed(calibrator, x)
    hist = calibrator.histogram
    minmax = TensorRange(-hist.max, hist.max) if calibrator.absolute else TensorRange(hist.min, hist.max)
    chosen, rule = guarded_range(calibrator, calibrator.compute(), symmetric, None)
    assert grid_error(calibrator, chosen, symmetric) <= grid_error(calibrator, minmax, symmetric) * (1 + 1e-12)
    assert rule in ("method", "minmax")


def test_a_range_that_clips_too_much_falls_back_to_minmax():
    """Percentile 90 on Gaussian data clips 10 % of the values: its measured error is larger than min-max's,
    and the rule (which models the real grid) picks min-max."""
    x = _data("gaussian_outliers", 3, 100_000)
    cal = _fed(PercentileCalibrator(90.0, symmetric=False), x)
    raw = cal.compute()
    chosen, rule = guarded_range(cal, raw, False, None)
    assert _actual_mse(x, raw, False) > _actual_mse(x, TensorRange(float(x.min()), float(x.max())), False)
    assert rule == "minmax" and (chosen.min, chosen.max) == (float(x.min()), float(x.max()))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.2, 5.0))
def test_folded_magnitudes_is_the_histogram_of_abs_x(seed, scale):
    """Folding a histogram of x at 0 gives |x|'s counts on the same bin width (values on an edge aside)."""
    x = (np.random.default_rng(seed).laplace(size=5_000) * scale).astype(np.float32)
    hist = _fed(EntropyCalibrator(unsigned=True), x).histogram
    counts, edges = folded_magnitudes(hist)
    assert counts.sum() == x.size and edges[0] == 0.0 and edges[-1] >= np.abs(x).max()
    reference, _ = np.histogram(np.abs(x), bins=edges)
    on_edge = np.isin(np.abs(x), edges).sum()
    assert np.abs(counts - reference).sum() <= 2 * on_edge


@pytest.mark.parametrize("df", [5, 10])
def test_two_sided_entropy_on_an_unsigned_grid_beats_the_one_sided_search(df):
    """Why entropy lost on linear conv outputs: with a u8 grid it searched only x >= 0, as if all 256 levels
    covered [0, t], while the grid spans [min x, t] and the negative tail stayed unclipped. On Student-t data
    the two-sided search (|x| at 128 levels, both tails clipped at t) has the lower measured error (measured:
    df 5: 1.00e-3 vs 1.32e-3, df 10: 2.12e-4 vs 2.17e-4). With heavier tails (df <= 3) KL clips more than the
    MSE optimum; rule (b) then falls back to min-max (test above)."""
    x = np.random.default_rng(5).standard_t(df, 100_000).astype(np.float32)
    cal = _fed(EntropyCalibrator(unsigned=True), x)
    counts, edges = cal.histogram.nonnegative_part()
    one_sided = TensorRange(float(x.min()), entropy_threshold(counts, edges, 256, float(x.max())))
    two_sided = cal.compute()
    assert _actual_mse(x, two_sided, False) < _actual_mse(x, one_sided, False)


# ---- rule (a): bounded producers --------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.floats(-1.0, 0.0), st.floats(0.5, 8.0), st.floats(-3.0, 1.0), st.floats(0.0, 10.0))
def test_bounded_range_stays_inside_the_bound_and_ends_on_a_saturated_bound(b_lo, b_hi, a, width):
    bound = Bound(b_lo, b_hi)
    observed = TensorRange(b_lo, b_hi)                   # data saturates at both ends
    rng = bounded_range(TensorRange(a, a + width), bound, observed)
    assert (rng.min, rng.max) == (b_lo, b_hi)
    inside = TensorRange(b_lo + 0.25 * (b_hi - b_lo), b_lo + 0.5 * (b_hi - b_lo))   # never reaches the bound
    rng = bounded_range(TensorRange(a, a + width), bound, inside)
    assert b_lo <= rng.min <= rng.max <= b_hi


def test_entropy_keeps_the_saturation_spike_of_a_relu6():
    """A ReLU6 output with a narrow body (exponential, mean 0.3) and 0.01 % of the values saturated at 6, as in
    EfficientNet-Lite's late blocks: KL sees the spike as a negligible tail and clips at ~3, moving every
    saturated value by ~3; the rules end the range at 6 exactly and the measured error drops."""
    x = np.minimum(np.random.default_rng(0).exponential(0.3, 200_000), 6.0).astype(np.float32)
    x[:20] = 6.0
    cal = _fed(EntropyCalibrator(unsigned=True), x)
    raw = cal.compute()
    chosen, rule = guarded_range(cal, raw, False, Bound(0.0, 6.0))
    assert raw.max < 4.0 and chosen.max == 6.0 and rule == "bounded"
    assert _actual_mse(x, chosen, False) < 0.5 * _actual_mse(x, raw, False)


def _model(nodes, inits, shape=(1, 4, 6, 6)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return gs.import_onnx(model)


def _bounded_graph() -> gs.Graph:
    scalar = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Clip", ["x", "zero", "six"], ["c"], name="relu6"),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2]),
             helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
             helper.make_node("Concat", ["c", "t"], ["ct"], name="cat", axis=1),
             helper.make_node("GlobalAveragePool", ["t"], ["g"], name="gap"),
             helper.make_node("Add", ["c", "t"], ["y"], name="add")]
    return _model(nodes, [scalar("zero", 0.0), scalar("six", 6.0)])


def test_tensor_bounds_of_bounded_ops_and_hull_preserving_ops():
    bounds = tensor_bounds(_bounded_graph())
    assert bounds["c"] == Bound(0.0, 6.0) and bounds["p"] == Bound(0.0, 6.0)
    assert bounds["r"] == Bound(0.0, np.inf) and bounds["t"] == Bound(-1.0, 1.0)
    assert bounds["ct"] == Bound(-1.0, 6.0) and bounds["g"] == Bound(-1.0, 1.0)
    assert "y" not in bounds   # an Add of bounded tensors is not in their hull


def test_collector_ranges_apply_the_rules():
    """Through collect_statistics: entropy on a saturating Clip ends at 6; a Relu's range starts at 0."""
    graph = _bounded_graph()
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.normal(2.0, 4.0, (1, 4, 6, 6)).astype(np.float32)} for _ in range(8)]
    requests = [StatRequest("c", StatKind.RANGE, CalibrationMethod.ENTROPY),
                StatRequest("r", StatKind.RANGE, CalibrationMethod.PERCENTILE, percentile=90.0)]
    ranges = collect_statistics(graph, requests, feeds)
    assert ranges[requests[0]].max == 6.0 and ranges[requests[0]].min == 0.0
    assert ranges[requests[1]].min == 0.0
