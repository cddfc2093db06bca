"""How weights and activations become integers: ``QuantSpec`` per tensor role, per-node ``NodeOverride``s,
and the embedding-table (Gather) quantisation.

A spec maps x to q = clamp(round(x / s) + z, q_min, q_max) with one (s, z) per tensor, per channel along
``axis``, or per block of ``block_size`` elements; the calibration ``method`` chooses the range [a, b] that
s and z are fitted to (s = (b - a) / (q_max - q_min); z = 0 when ``symmetric``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from qcompile.config.field_types import check_field_types
from qcompile.errors import ConfigError
from qcompile.numerics.qparams import QuantDType


class Granularity(enum.Enum):
    TENSOR = "tensor"
    CHANNEL = "channel"
    BLOCK = "block"


class CalibrationMethod(enum.Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor role (activation or weight) is quantised. ``dtype=None`` lets the target profile choose."""

    dtype: QuantDType | None = None
    symmetric: bool = False
    granularity: Granularity = Granularity.TENSOR
    axis: int | None = None
    block_size: int | None = None
    method: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.999

    def __post_init__(self) -> None:
        check_field_types(self)
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.granularity is Granularity.BLOCK:
            if self.block_size is None or self.block_size < 16 or self.block_size & (self.block_size - 1):
                raise ConfigError("block granularity needs block_size a power of two >= 16")
        elif self.block_size is not None:
            raise ConfigError("block_size is only valid with granularity 'block'")


@dataclass(frozen=True)
class NodeOverride:
    """Per-node exception: nodes whose name matches ``pattern`` (full regex match) get these specs, or stay float."""

    pattern: str
    skip: bool = False
    activation: QuantSpec | None = None
    weight: QuantSpec | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        compile_pattern(self.pattern)


def default_activation_spec() -> QuantSpec:
    """The activations' default: uint8/int8 per tensor (the target chooses), each range the one with the least
    expected quantisation error on the tensor's calibration histogram (MSE), never worse than min-max on that
    measure (calibrators/range_rules.py). Min-max spends the grid on rare extremes: on a text detector's
    probability map that turned into spurious regions (box F1 0.36 vs 0.99 with MSE)."""
    return QuantSpec(method=CalibrationMethod.MSE)


def default_weight_spec() -> QuantSpec:
    """The weights' default: symmetric per-channel INT8 (CompileConfig.weight, and an override's fresh base)."""
    return QuantSpec(dtype=QuantDType.INT8, symmetric=True, granularity=Granularity.CHANNEL)


def compile_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"invalid node pattern {pattern!r}: {exc}") from None


@dataclass(frozen=True)
class EmbeddingQuantConfig:
    """Gather on a constant float table of at least ``min_elements`` -> int8 table, Gather on integers, then DQ."""

    enabled: bool = True
    granularity: Granularity = Granularity.CHANNEL   # CHANNEL: one scale per column (feature); TENSOR: one scale
    min_elements: int = 1 << 14

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.granularity is Granularity.BLOCK:
            raise ConfigError("embedding tables are quantised per tensor or per channel (column)")
        if self.min_elements < 1:
            raise ConfigError(f"embedding.min_elements must be >= 1, got {self.min_elements}")
