"""Calibrator construction from a ``CalibrationMethod``: one match statement, no registry.

MINMAX -> MinMaxCalibrator(); PERCENTILE -> PercentileCalibrator(percentile, symmetric);
ENTROPY -> EntropyCalibrator(2^(num_bits-1) levels if signed, 2^num_bits if unsigned);
MSE -> MseCalibrator(num_bits, symmetric).
"""

from __future__ import annotations

from typing import assert_never

from qcompile.calibrators.base import Calibrator
from qcompile.calibrators.entropy import EntropyCalibrator
from qcompile.calibrators.minmax import MinMaxCalibrator
from qcompile.calibrators.mse import MseCalibrator
from qcompile.calibrators.percentile import PercentileCalibrator
from qcompile.config import CalibrationMethod


def make_calibrator(method: CalibrationMethod, *, percentile: float, symmetric: bool, unsigned: bool,
                    num_bits: int = 8) -> Calibrator:
    """A fresh calibrator for one tensor."""
    match method:
        case CalibrationMethod.MINMAX:
            return MinMaxCalibrator()
        case CalibrationMethod.PERCENTILE:
            return PercentileCalibrator(percentile, symmetric=symmetric)
        case CalibrationMethod.ENTROPY:
            return EntropyCalibrator(1 << (num_bits - 1 + int(unsigned)), unsigned=unsigned)
        case CalibrationMethod.MSE:
            return MseCalibrator(num_bits, symmetric=symmetric)
        case _:
            assert_never(method)
