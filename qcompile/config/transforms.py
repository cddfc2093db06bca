"""Graph rewrites before quantisation that move range from activations into weights: SmoothQuant and
outlier-channel splitting (settings only; the passes live in passes/transform/)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qcompile.config.field_types import check_field_types
from qcompile.errors import ConfigError


class SmoothScope(enum.Enum):
    """Which MatMul/Gemm input groups SmoothQuant rewrites."""

    OFF = "off"
    TRANSFORMER = "transformer"   # every group, but only in graphs with a LayerNormalization (transformer blocks)
    ALL = "all"                   # every group of every graph


AUTO_ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class SmoothQuantConfig:
    """SmoothQuant (Xiao et al., 2023): s_j = max|X_j|^α / max|W_j|^(1-α); ``alpha=None`` searches α per layer.

    ``op_alpha`` overrides α per consumer op type, e.g. (("Gemm", 0.7), ("MatMul", None)). The search tries
    ``auto_grid`` (and no smoothing) on a uniform sample of ``sample_rows`` input rows per layer.
    """

    scope: SmoothScope = SmoothScope.TRANSFORMER
    alpha: float | None = None
    op_alpha: tuple[tuple[str, float | None], ...] = ()
    auto_grid: tuple[float, ...] = AUTO_ALPHA_GRID
    sample_rows: int = 512

    def __post_init__(self) -> None:
        check_field_types(self)
        alphas = [self.alpha, *(a for _, a in self.op_alpha), *self.auto_grid]
        if any(a is not None and not 0.0 <= a <= 1.0 for a in alphas):
            raise ConfigError(f"smoothquant alpha values must be in [0, 1] (or 'auto'), got {alphas}")
        if not self.auto_grid:
            raise ConfigError("smoothquant.auto_grid is empty")
        unknown = sorted({op for op, _ in self.op_alpha} - {"MatMul", "Gemm"})
        if unknown:
            raise ConfigError(f"smoothquant.op_alpha: {unknown} are not smoothable; choose from MatMul, Gemm")
        if self.sample_rows < 16:
            raise ConfigError(f"smoothquant.sample_rows must be >= 16, got {self.sample_rows}")

    def alpha_for(self, op_type: str) -> float | None:
        return dict(self.op_alpha).get(op_type, self.alpha)


@dataclass(frozen=True)
class OutlierSplitConfig:
    """Outlier-channel splitting (Zhao et al., 2019): duplicate and halve at most ``expand_ratio`` of a layer's
    input channels (at least one), chosen from the weights' rows and/or the activation's channels."""

    weights: bool = False
    activations: bool = False
    expand_ratio: float = 0.02

    def __post_init__(self) -> None:
        check_field_types(self)
        if not 0.0 < self.expand_ratio <= 1.0:
            raise ConfigError(f"outlier_split.expand_ratio must be in (0, 1], got {self.expand_ratio}")

    @property
    def enabled(self) -> bool:
        return self.weights or self.activations
