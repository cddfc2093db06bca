"""How static INT8 weights are rounded: to nearest, or learned on the calibration inputs (settings only; the
pass is passes/quantize/learned_rounding.py, the math numerics/rounding.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qcompile.errors import ConfigError


class WeightRounding(enum.Enum):
    NEAREST = "nearest"     # q = round(w / s)
    LEARNED = "learned"     # floor or ceil per weight, minimising the layer's output error on calibration inputs


@dataclass(frozen=True)
class RoundingConfig:
    """Learned rounding of Conv/Gemm/MatMul weights. A layer whose patch (input rows per weight row) is longer
    than ``max_patch`` keeps nearest rounding: its K×K statistics would cost O(K²) memory and O(R·K²) time.
    ``rows_per_batch`` bounds the input rows each calibration batch adds per layer (a uniform sample)."""

    method: WeightRounding = WeightRounding.LEARNED
    max_patch: int = 4096
    rows_per_batch: int = 1024
    max_sweeps: int = 8

    def __post_init__(self) -> None:
        if self.max_patch < 1:
            raise ConfigError(f"rounding.max_patch must be >= 1, got {self.max_patch}")
        if self.rows_per_batch < 16:
            raise ConfigError(f"rounding.rows_per_batch must be >= 16, got {self.rows_per_batch}")
        if self.max_sweeps < 0:
            raise ConfigError(f"rounding.max_sweeps must be >= 0, got {self.max_sweeps}")
