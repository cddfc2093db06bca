"""PercentileCalibrator against np.percentile, under sharding, and against ORT's HistogramCollector."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.calibrators.percentile import PercentileCalibrator
from qcompile.errors import CalibrationError


def _data(seed: int, n: int = 200_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    x[:8] = rng.uniform(-40, 40, 8)  # a few outliers set the histogram's span
    return x


def _fed(batches, percentile, symmetric) -> PercentileCalibrator:
    cal = PercentileCalibrator(percentile, symmetric=symmetric)
    for b in batches:
        cal.update(b)
    return cal


@pytest.mark.parametrize("percentile", [90.0, 99.0, 99.9, 99.99, 99.999])
def test_symmetric_within_one_bin_of_numpy(percentile):
    x = _data(0)
    cal = _fed(np.array_split(x, 7), percentile, True)
    r = cal.compute()
    assert r.min == -r.max
    assert abs(r.max - np.percentile(np.abs(x), percentile)) <= cal.histogram.bin_width


@pytest.mark.parametrize("percentile", [90.0, 99.0, 99.9, 99.99, 99.999])
def test_asymmetric_within_one_bin_of_numpy(percentile):
    x = _data(1) + 0.5
    cal = _fed(np.array_split(x, 5), percentile, False)
    r = cal.compute()
    w = cal.histogram.bin_width
    assert abs(r.min - np.percentile(x, (100 - percentile) / 2)) <= w
    assert abs(r.max - np.percentile(x, (100 + percentile) / 2)) <= w


@pytest.mark.parametrize("symmetric", [True, False])
def test_shards_merge_equal_all_at_once(symmetric):
    """Exact by construction (aligned bins), so certainly within one bin width."""
    x = _data(2, 50_000)
    whole = _fed([x], 99.9, symmetric)
    merged = PercentileCalibrator(99.9, symmetric=symmetric)
    for shard in np.array_split(x, 6):
        merged.merge(_fed(np.array_split(shard, 3), 99.9, symmetric))
    assert merged.compute() == whole.compute()
    assert merged.histogram.same_as(whole.histogram)
    restored = PercentileCalibrator.from_state(merged.get_state())
    assert restored.compute() == whole.compute() and restored.samples_seen == x.size


def test_empty_and_nan():
    with pytest.raises(CalibrationError, match="saw no data"):
        PercentileCalibrator(99.0, symmetric=True).compute()
    with pytest.raises(CalibrationError, match="NaN"):
        PercentileCalibrator(99.0, symmetric=True).update(np.array([np.nan], dtype=np.float32))
    with pytest.raises(ValueError):
        PercentileCalibrator(99.0, symmetric=True).merge(PercentileCalibrator(99.9, symmetric=True))


def test_matches_ort_histogram_collector():
    """ORT 1.32's HistogramCollector(method="percentile", num_bins=2048) on the same 4 batches (N(0,1), 200k
    values, 8 uniform(-40, 40) outliers), seeds 0-2, p in {99.9, 99.99}. ORT reads the *left edge* of the bin
    where the CDF crosses p on its own histogram (|x| over [0, max|x|] when symmetric, x over [-max|x|, max|x|]
    otherwise); we interpolate in ours (bin width 2^-5 or 2^-4 here). Tolerance: one bin of each,
    |ours - ort| <= w_ours + w_ort (~0.05 symmetric, ~0.1 asymmetric). Measured worst case:
    0.015 symmetric, 0.041 asymmetric (0.3-0.7 of the tolerance). At p = 99.999 the cut falls among the
    outliers and ORT's symmetric mode clamps -t to the signed min, returning an asymmetric range, so it is not
    compared there."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    worst = {True: 0.0, False: 0.0}
    for seed in range(3):
        x = _data(seed)
        batches = np.array_split(x, 4)
        for symmetric in (True, False):
            for p in (99.9, 99.99):
                collector = HistogramCollector("percentile", symmetric, 2048, 128, p, "same")
                for b in batches:
                    collector.collect({"t": b})
                ort_lo, ort_hi = (float(v) for v in collector.compute_collection_result()["t"][:2])
                ort_width = (1.0 if symmetric else 2.0) * float(np.abs(x).max()) / 2048
                cal = _fed(batches, p, symmetric)
                r = cal.compute()
                tol = cal.histogram.bin_width + ort_width
                assert abs(r.max - ort_hi) <= tol and abs(r.min - ort_lo) <= tol
                worst[symmetric] = max(worst[symmetric], abs(r.max - ort_hi), abs(r.min - ort_lo))
    assert worst[True] < 0.03 and worst[False] < 0.06
