"""Histogram: exact streaming/merging by aligned re-binning, counts against numpy, NaN rejection, fixed memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.calibrators.histogram import Histogram
from qcompile.calibrators.percentile import PercentileCalibrator
from qcompile.errors import CalibrationError


def _hist(chunks, num_bins=64) -> Histogram:
    h = Histogram.empty(num_bins)
    for c in chunks:
        h = h.add(c)
    return h


def test_counts_match_numpy_histogram_on_own_edges():
    x = np.random.default_rng(0).standard_normal(20000).astype(np.float32) * 3 + 1
    h = _hist([x], 2048)
    assert h.total == x.size and h.counts.sum() == x.size
    assert (h.min, h.max) == (float(x.min()), float(x.max()))
    ref, _ = np.histogram(x, bins=h.edges)
    # np.histogram closes the last bin on the right; ours are all half-open [e_k, e_k+1) -- identical here
    np.testing.assert_array_equal(h.counts, ref)
    assert h.edges[0] <= min(x.min(), 0) and h.edges[-1] > x.max()
    assert h.used_bins > 1024  # resolution between span/N and 2·span/N


def test_rebinning_preserves_total_and_grows_width():
    rng = np.random.default_rng(1)
    h = _hist([rng.uniform(0, 1, 1000)], 128)
    w0 = h.bin_width
    h2 = h.add(rng.uniform(-50, 300, 1000))
    assert h2.bin_width > w0 and h2.total == 2000 and h2.counts.sum() == 2000
    h3 = h2.add(np.array([1e6]))
    assert h3.counts.sum() == 2001 and h3.max == 1e6
    # all the small values collapse into bins around 0 yet stay counted
    assert h3.counts[-h3.offset - 1:-h3.offset + 1].sum() == 2000


values = st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=40)
scaled = st.tuples(values, st.sampled_from([1e-6, 1e-2, 1.0, 1e3]))


def _arr(v, s):
    return (np.array(v, dtype=np.float64) * s).astype(np.float32)


@settings(max_examples=80, deadline=None)
@given(st.lists(scaled, min_size=1, max_size=6), st.sampled_from([2, 16, 2048]))
def test_streaming_equals_all_at_once_exactly(parts, num_bins):
    chunks = [_arr(v, s) for v, s in parts]
    streamed = _hist(chunks, num_bins)
    whole = _hist([np.concatenate(chunks)], num_bins)
    assert streamed.same_as(whole)


@settings(max_examples=80, deadline=None)
@given(scaled, scaled, scaled, st.sampled_from([4, 64]))
def test_merge_is_exactly_associative_and_commutative(a, b, c, num_bins):
    ha, hb, hc = (_hist([_arr(*p)], num_bins) for p in (a, b, c))
    left = ha.merge(hb.merge(hc))
    right = ha.merge(hb).merge(hc)
    assert left.same_as(right)
    assert left.same_as(hc.merge(ha).merge(hb))
    assert left.same_as(_hist([_arr(*a), _arr(*b), _arr(*c)], num_bins))
    assert left.total == sum(h.total for h in (ha, hb, hc)) == left.counts.sum()


def test_merge_with_empty_is_noop():
    h = _hist([np.linspace(-3, 5, 100)], 32)
    assert h.merge(Histogram.empty(32)).same_as(h)
    assert Histogram.empty(32).merge(h).same_as(h)


def test_constant_and_zero_data():
    h = _hist([np.full(10, 5.0)], 16)
    assert h.quantile(0.5) == 5.0 and h.total == 10
    z = _hist([np.zeros(7)], 16).add(np.array([-1.0, 2.0]))
    assert z.counts.sum() == 9 and (z.min, z.max) == (-1.0, 2.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_raises(bad):
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        Histogram.empty().add(np.array([0.5, bad], dtype=np.float32))


def test_empty_quantile_raises():
    with pytest.raises(CalibrationError, match="saw no data"):
        Histogram.empty().quantile(0.5)


def test_state_round_trip_and_immutability():
    h = _hist([np.random.default_rng(2).standard_normal(500)], 128)
    assert Histogram.from_state(h.get_state()).same_as(h)
    with pytest.raises(ValueError):
        h.counts[0] = 1


def _state_bytes(state) -> int:
    return sum(v.nbytes if isinstance(v, np.ndarray) else 8 for v in state.values())


def test_state_size_does_not_grow_with_batches():
    rng = np.random.default_rng(3)
    cal = PercentileCalibrator(99.9, symmetric=False)
    cal.update(rng.standard_normal(4096).astype(np.float32))
    size_after_one = _state_bytes(cal.get_state())
    for i in range(200):
        cal.update((rng.standard_normal(4096) * (1 + i / 10)).astype(np.float32))
    assert _state_bytes(cal.get_state()) == size_after_one == 2048 * 8 + 9 * 8  # counts + 9 scalars
    assert cal.samples_seen == 201 * 4096
