"""MinMaxCalibrator: exact against numpy and ORT's MinMaxCalibrater; streaming, sharding and merging."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.calibrators.minmax import MinMaxCalibrator
from qcompile.errors import CalibrationError


def _fed(batches, moving_average=None) -> MinMaxCalibrator:
    cal = MinMaxCalibrator(moving_average)
    for b in batches:
        cal.update(b)
    return cal


def test_equals_numpy_exactly():
    x = np.random.default_rng(0).standard_normal((4, 3, 17)).astype(np.float32) * 7
    r = _fed([x]).compute()
    assert r.min == float(x.min()) and r.max == float(x.max())
    assert _fed([x]).samples_seen == x.size


def test_chunks_and_shards_equal_all_at_once():
    x = np.random.default_rng(1).standard_normal(5000).astype(np.float32)
    whole = _fed([x]).compute()
    chunks = _fed(np.array_split(x, 13)).compute()
    shards = [_fed(np.array_split(part, 3)) for part in np.array_split(x, 4)]
    merged = MinMaxCalibrator()
    for s in shards:
        merged.merge(s)
    for r in (chunks, merged.compute()):
        assert (r.min, r.max) == (whole.min, whole.max)
    assert merged.samples_seen == x.size


arrays = st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=20),
                  min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(arrays)
def test_merge_associative_exact(parts):
    a, b, c = (_fed([np.array(p, dtype=np.float32)]) for p in parts)
    left = MinMaxCalibrator.from_state(a.get_state())
    bc = MinMaxCalibrator.from_state(b.get_state())
    bc.merge(c)
    left.merge(bc)                               # a + (b + c)
    right = MinMaxCalibrator.from_state(a.get_state())
    right.merge(b)
    right.merge(c)                               # (a + b) + c
    assert left.get_state() == right.get_state()
    flat = np.concatenate([np.array(p, dtype=np.float32) for p in parts])
    assert (left.compute().min, left.compute().max) == (float(flat.min()), float(flat.max()))


def test_merge_empty_is_noop_both_ways():
    x = np.arange(10, dtype=np.float32)
    cal = _fed([x])
    cal.merge(MinMaxCalibrator())
    assert cal.get_state() == _fed([x]).get_state()
    empty = MinMaxCalibrator()
    empty.merge(_fed([x]))
    assert empty.get_state() == _fed([x]).get_state()


def test_moving_average_follows_ort_formula():
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal(100).astype(np.float32) * (1 + i) for i in range(6)]
    c = 0.1
    lo, hi = float(batches[0].min()), float(batches[0].max())
    for b in batches[1:]:
        lo, hi = lo + c * (float(b.min()) - lo), hi + c * (float(b.max()) - hi)
    r = _fed(batches, c).compute()
    assert r.min == pytest.approx(lo, rel=1e-12) and r.max == pytest.approx(hi, rel=1e-12)


def test_moving_average_merge_is_batch_weighted_mean_and_associative():
    rng = np.random.default_rng(3)
    shards = [[rng.standard_normal(50).astype(np.float32) for _ in range(n)] for n in (2, 5, 3)]
    a, b, c = (_fed(s, 0.2) for s in shards)
    expect_lo = sum(len(s) * x.compute().min for s, x in zip(shards, (a, b, c))) / 10
    left = MinMaxCalibrator.from_state(a.get_state())
    bc = MinMaxCalibrator.from_state(b.get_state())
    bc.merge(c)
    left.merge(bc)
    right = MinMaxCalibrator.from_state(a.get_state())
    right.merge(b)
    right.merge(c)
    assert left.compute().min == pytest.approx(expect_lo, rel=1e-12)
    assert left.compute().max == pytest.approx(right.compute().max, rel=1e-12)
    assert left.compute().min == pytest.approx(right.compute().min, rel=1e-12)
    assert left.batches_seen == 10


def test_empty_raises_and_nonfinite_raises():
    with pytest.raises(CalibrationError, match="saw no data"):
        MinMaxCalibrator().compute()
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(CalibrationError, match="NaN or Inf"):
            MinMaxCalibrator().update(np.array([1.0, bad, 2.0], dtype=np.float32))
    cal = MinMaxCalibrator()
    cal.update(np.zeros((0, 3), dtype=np.float32))   # an empty batch is no data
    with pytest.raises(CalibrationError):
        cal.compute()


def _identity_model_path(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Identity", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


class _Reader:
    def __init__(self, batches):
        self._it = iter([{"x": b} for b in batches])

    def get_next(self):
        return next(self._it, None)


@pytest.mark.parametrize("moving_average", [None, 0.25])
def test_identical_to_ort_minmax_calibrater(tmp_path, moving_average):
    """ORT's MinMaxCalibrater on a Relu input: plain min/max identical (float32 compared exactly). For the moving
    average ORT averages the batch extremes *within* one collect_data call, so it is fed one batch per call; it
    then runs the EMA in float32 while we use float64: measured difference 1 float32 ulp, asserted rel 1e-6."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((2, 16)) * (i + 1)).astype(np.float32) for i in range(5)]
    ort = MinMaxCalibrater(str(_identity_model_path(tmp_path)), op_types_to_calibrate=["Relu", "Identity"],
                           augmented_model_path=str(tmp_path / "aug.onnx"),
                           moving_average=moving_average is not None,
                           averaging_constant=moving_average or 0.01)
    ort.augment_graph()
    ort.create_inference_session()
    for b in batches:
        ort.collect_data(_Reader([b]))
    lo, hi = ort.compute_data()["x"].range_value
    ours = _fed(batches, moving_average).compute()
    if moving_average is None:
        assert np.float32(ours.min) == np.float32(lo) and np.float32(ours.max) == np.float32(hi)
    else:
        assert ours.min == pytest.approx(float(lo[0]), rel=1e-6) and ours.max == pytest.approx(float(hi[0]), rel=1e-6)
