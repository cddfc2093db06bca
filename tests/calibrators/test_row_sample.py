"""RowSampleCalibrator: exact per-channel min/max, a bounded uniform row sample, exact associative merge."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.calibrators.collector import _make_calibrator
from qcompile.calibrators.row_sample import RowSample, RowSampleCalibrator
from qcompile.errors import CalibrationError
from qcompile.pass_infra import StatKind, StatRequest


def _batches(seed: int, n: int, channels: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, int(rng.integers(1, 9)), channels)).astype(np.float32) for _ in range(n)]


@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), capacity=st.integers(1, 40))
@settings(max_examples=40, deadline=None)
def test_range_is_exact_and_sample_bounded(seed, n, capacity):
    batches = _batches(seed, n)
    cal = RowSampleCalibrator(axis=-1, capacity=capacity)
    for b in batches:
        cal.update(b)
    result = cal.compute()
    rows = np.concatenate([b.reshape(-1, 6) for b in batches])
    np.testing.assert_array_equal(result.min, rows.min(axis=0))
    np.testing.assert_array_equal(result.max, rows.max(axis=0))
    assert result.rows.shape == (min(capacity, rows.shape[0]), 6)
    assert result.rows_seen == rows.shape[0]
    # every sampled row is one of the rows seen
    assert all(np.any(np.all(rows == r, axis=1)) for r in result.rows)


@given(seed=st.integers(0, 10_000))
@settings(max_examples=20, deadline=None)
def test_merge_is_associative(seed):
    def shard(index):
        cal = RowSampleCalibrator(capacity=10, seed=index)
        for b in _batches(seed + index, 4):
            cal.update(b)
        return cal

    left = shard(0)
    right_inner = shard(1)
    right_inner.merge(shard(2))
    left.merge(right_inner)
    other = shard(0)
    other.merge(shard(1))
    other.merge(shard(2))
    a, b = left.compute(), other.compute()
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.min, b.min)
    assert a.rows_seen == b.rows_seen


def test_sample_is_uniform_over_the_stream():
    # rows 0..99 fed in batches; each kept with probability 10/100: counts over many seeds stay near 10 %
    counts = np.zeros(100)
    for seed in range(300):
        cal = RowSampleCalibrator(capacity=10, seed=seed)
        for start in range(0, 100, 7):
            ids = np.arange(start, min(start + 7, 100), dtype=np.float32)
            cal.update(np.stack([ids, ids], axis=-1))
        counts[cal.compute().rows[:, 0].astype(int)] += 1
    assert counts.sum() == 3000
    # binomial(300, 0.1): mean 30, sd 5.2; early and late rows are equally likely
    assert abs(counts[:50].mean() - counts[50:].mean()) < 5
    assert counts.min() > 10 and counts.max() < 55


def test_state_round_trip_and_channel_axis():
    cal = RowSampleCalibrator(axis=1, capacity=5)
    cal.update(np.arange(24, dtype=np.float32).reshape(2, 3, 4))     # channels along axis 1: 8 rows of 3
    restored = RowSampleCalibrator.from_state(cal.get_state())
    a, b = cal.compute(), restored.compute()
    assert isinstance(b, RowSample) and b.rows.shape == (5, 3)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(b.max, [15, 19, 23])      # channel c holds 4c..4c+3 and 12+4c..15+4c
    np.testing.assert_array_equal(b.min, [0, 4, 8])


def test_errors():
    with pytest.raises(CalibrationError):
        RowSampleCalibrator().compute()
    cal = RowSampleCalibrator()
    cal.update(np.ones((2, 3), np.float32))
    with pytest.raises(CalibrationError):
        cal.update(np.ones((2, 4), np.float32))
    with pytest.raises(CalibrationError):
        cal.update(np.array([[np.nan, 1.0, 2.0]], np.float32))


def test_collector_builds_it_for_row_sample_requests():
    cal = _make_calibrator(StatRequest("x", StatKind.ROW_SAMPLE, axis=-1, sample_rows=7))
    assert isinstance(cal, RowSampleCalibrator) and cal.capacity == 7


@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), capacity=st.integers(1, 30), cut=st.data())
@settings(max_examples=40, deadline=None)
def test_sharded_stream_keeps_exactly_the_rows_of_one_stream(seed, n, capacity, cut):
    """Keys follow each batch's content, not its position: any split of the stream into shards, merged, keeps
    the rows one calibrator fed everything keeps."""
    batches = _batches(seed, n)
    whole = RowSampleCalibrator(capacity=capacity)
    for b in batches:
        whole.update(b)
    cuts = sorted(cut.draw(st.lists(st.integers(1, n - 1), max_size=3, unique=True)))
    shards = []
    for part in np.split(np.arange(n), cuts):
        shard = RowSampleCalibrator(capacity=capacity)
        for i in part:
            shard.update(batches[i])
        shards.append(shard)
    merged = shards[-1]
    for shard in shards[:-1]:          # reduced in another order than the stream's
        merged.merge(shard)
    np.testing.assert_array_equal(merged.compute().rows, whole.compute().rows)
