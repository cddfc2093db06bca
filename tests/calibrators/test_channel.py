"""ChannelAbsMaxCalibrator: exact per-channel max |x| against numpy, streaming and merging."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.calibrators.channel import ChannelAbsMaxCalibrator
from qcompile.errors import CalibrationError


@pytest.mark.parametrize("axis", [0, 1, -1, 2])
def test_equals_numpy_for_every_axis(axis):
    x = np.random.default_rng(0).standard_normal((4, 5, 6)).astype(np.float32)
    cal = ChannelAbsMaxCalibrator(axis)
    cal.update(x)
    r = cal.compute()
    other = tuple(d for d in range(3) if d != axis % 3)
    np.testing.assert_array_equal(r.max, np.abs(x).max(axis=other))
    np.testing.assert_array_equal(r.min, -r.max)
    assert r.per_channel and cal.samples_seen == x.size


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=3, max_size=3), st.integers(0, 2 ** 31))
def test_streaming_and_merge_associative(batch_sizes, seed):
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((n, 8)).astype(np.float32) * rng.uniform(0.1, 10) for n in batch_sizes]
    cals = []
    for p in parts:
        c = ChannelAbsMaxCalibrator(-1)
        c.update(p)
        cals.append(c)
    a, b, c = (ChannelAbsMaxCalibrator.from_state(x.get_state()) for x in cals)
    b.merge(c)
    a.merge(b)                                   # a + (b + c)
    left = a.compute().max
    a2, b2, c2 = (ChannelAbsMaxCalibrator.from_state(x.get_state()) for x in cals)
    a2.merge(b2)
    a2.merge(c2)                                 # (a + b) + c
    np.testing.assert_array_equal(left, a2.compute().max)
    np.testing.assert_array_equal(left, np.abs(np.concatenate(parts)).max(axis=0))
    assert a.samples_seen == sum(p.size for p in parts)


def test_errors():
    with pytest.raises(CalibrationError, match="saw no data"):
        ChannelAbsMaxCalibrator(1).compute()
    cal = ChannelAbsMaxCalibrator(1)
    cal.update(np.ones((2, 3)))
    with pytest.raises(CalibrationError, match="channel count changed"):
        cal.update(np.ones((2, 4)))
    with pytest.raises(CalibrationError, match="out of range"):
        ChannelAbsMaxCalibrator(3).update(np.ones((2, 4)))
    with pytest.raises(CalibrationError, match="NaN"):
        ChannelAbsMaxCalibrator(0).update(np.array([[np.nan]]))
    before = cal.get_state()
    cal.merge(ChannelAbsMaxCalibrator(1))        # empty merge is a no-op
    assert cal.get_state()["elements"] == before["elements"]
    np.testing.assert_array_equal(cal.get_state()["absmax"], before["absmax"])
