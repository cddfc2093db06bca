"""make_calibrator: the right calibrator per method; every calibrator satisfies the protocol end to end."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.calibrators.base import Calibrator
from qcompile.calibrators.channel import ChannelAbsMaxCalibrator
from qcompile.calibrators.entropy import EntropyCalibrator
from qcompile.calibrators.factory import make_calibrator
from qcompile.calibrators.minmax import MinMaxCalibrator
from qcompile.calibrators.mse import MseCalibrator
from qcompile.calibrators.percentile import PercentileCalibrator
from qcompile.config import CalibrationMethod
from qcompile.errors import CalibrationError


@pytest.mark.parametrize(("method", "cls"), [
    (CalibrationMethod.MINMAX, MinMaxCalibrator), (CalibrationMethod.PERCENTILE, PercentileCalibrator),
    (CalibrationMethod.ENTROPY, EntropyCalibrator), (CalibrationMethod.MSE, MseCalibrator)])
def test_factory_builds_configured_calibrators(method, cls):
    cal = make_calibrator(method, percentile=99.9, symmetric=True, unsigned=False, num_bits=8)
    assert type(cal) is cls and isinstance(cal, Calibrator)
    if cls is PercentileCalibrator:
        assert cal.percentile == 99.9 and cal.symmetric
    if cls is EntropyCalibrator:
        assert cal.num_quant_bins == 128
        assert make_calibrator(method, percentile=99.9, symmetric=False, unsigned=True).num_quant_bins == 256


@pytest.mark.parametrize("method", list(CalibrationMethod))
@pytest.mark.parametrize("symmetric", [True, False])
def test_protocol_round_trip(method, symmetric):
    """update -> get_state -> from_state -> merge -> compute, the way sharded calibration will use it."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(20_000) * 2 + 0.3).astype(np.float32)
    make = lambda: make_calibrator(method, percentile=99.99, symmetric=symmetric,  # noqa: E731
                                   unsigned=not symmetric)
    with pytest.raises(CalibrationError, match="saw no data"):
        make().compute()
    whole = make()
    whole.update(x)
    merged = make()
    for shard in np.array_split(x, 3):
        part = make()
        part.update(shard)
        merged.merge(type(part).from_state(part.get_state()))
    assert merged.samples_seen == whole.samples_seen == x.size
    r, ref = merged.compute(), whole.compute()
    assert (r.min, r.max) == (ref.min, ref.max)
    amax = float(np.abs(x).max())
    assert -amax <= r.min <= 0.0 <= r.max <= amax


def test_merge_type_mismatch():
    with pytest.raises(TypeError):
        MinMaxCalibrator().merge(PercentileCalibrator(symmetric=True))
    with pytest.raises(TypeError):
        EntropyCalibrator(unsigned=False).merge(MseCalibrator(symmetric=True))
    assert isinstance(ChannelAbsMaxCalibrator(0), Calibrator)
