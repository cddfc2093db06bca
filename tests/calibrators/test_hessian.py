"""HessianCalibrator: streaming == all at once, merge is associative with the empty identity, state round-trips,
and the collector returns it for StatKind.HESSIAN."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.calibrators.hessian import HessianCalibrator, HessianStat
from qcompile.errors import CalibrationError


def _batches(seed: int, count: int, k: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(1, 4)), int(rng.integers(1, 5)), k)).astype(np.float32)
            for _ in range(count)]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6))
def test_streaming_equals_all_at_once(seed, count):
    batches = _batches(seed, count)
    cal = HessianCalibrator()
    for batch in batches:
        cal.update(batch)
    rows = np.concatenate([b.reshape(-1, b.shape[-1]) for b in batches]).astype(np.float64)
    stat = cal.compute()
    np.testing.assert_allclose(stat.hessian, rows.T @ rows / len(rows), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stat.abs_mean, np.abs(rows).mean(axis=0), rtol=1e-12)
    assert stat.rows == len(rows) and stat.channels == 6


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_merge_is_associative_with_empty_identity(seed):
    a, b, c = (HessianCalibrator() for _ in range(3))
    for cal, batch in zip((a, b, c), _batches(seed, 3)):
        cal.update(batch)
    left = HessianCalibrator.from_state(a.get_state())
    left.merge(HessianCalibrator.from_state(b.get_state()))
    left.merge(HessianCalibrator.from_state(c.get_state()))
    right_tail = HessianCalibrator.from_state(b.get_state())
    right_tail.merge(c)
    right = HessianCalibrator.from_state(a.get_state())
    right.merge(right_tail)
    right.merge(HessianCalibrator())
    np.testing.assert_allclose(left.compute().hessian, right.compute().hessian, rtol=1e-12)
    assert left.compute().rows == right.compute().rows


def test_errors():
    with pytest.raises(CalibrationError):
        HessianCalibrator().compute()
    cal = HessianCalibrator()
    cal.update(np.ones((2, 3), np.float32))
    with pytest.raises(CalibrationError):
        cal.update(np.ones((2, 4), np.float32))
    with pytest.raises(CalibrationError):
        cal.update(np.array([[np.nan, 1, 2]], np.float32))
    restored = HessianCalibrator.from_state(HessianCalibrator().get_state())
    with pytest.raises(CalibrationError):
        restored.compute()


def test_collector_builds_hessians():
    import onnx_graphsurgeon as gs

    from qcompile.calibrators.collector import collect_statistics
    from qcompile.pass_infra import StatKind, StatRequest

    x = gs.Variable("x", dtype=np.float32, shape=[1, 3, 4])
    y = gs.Variable("y", dtype=np.float32, shape=[1, 3, 4])
    graph = gs.Graph(nodes=[gs.Node("Relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y], opset=17)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 3, 4)).astype(np.float32)} for _ in range(4)]
    request = StatRequest("y", kind=StatKind.HESSIAN)
    stat = collect_statistics(graph, [request], feeds)[request]
    rows = np.maximum(np.concatenate([f["x"].reshape(-1, 4) for f in feeds]), 0).astype(np.float64)
    assert isinstance(stat, HessianStat)
    np.testing.assert_allclose(stat.hessian, rows.T @ rows / len(rows), rtol=1e-6)
