"""Accuracy settings: per-layer error analysis and the accuracy budget the fallback search must keep."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qcompile.config.field_types import check_field_types
from qcompile.errors import ConfigError


class LayerAnalysis(enum.Enum):
    """How much per-layer error analysis a compile does (see qcompile/sensitivity.py)."""

    NONE = "none"
    SQNR = "sqnr"                    # per-layer SQNR on a few calibration items (two extra runs each)
    SENSITIVITY = "sensitivity"      # + end-to-end error with only that node quantised (one run per node each)


@dataclass(frozen=True)
class AnalysisConfig:
    """Per-layer error analysis: which kind, on how many calibration items (the first ``samples``)."""

    layers: LayerAnalysis = LayerAnalysis.SQNR
    samples: int = 8

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.samples < 1:
            raise ConfigError(f"analysis samples must be >= 1, got {self.samples}")


@dataclass(frozen=True)
class AccuracyBudget:
    """Fidelity vs FP32 the compiled model must keep on held-out data; the most sensitive nodes fall back to
    float until it holds (qcompile/fallback.py). Each bound applies to every float output of the model:
    cosine = mean per-sample cosine, error = relative L2 error sqrt(Σ(y-ŷ)²/Σy²), top-1 agreement on rank-2
    logits; ``min_metric`` bounds the value of a user metric passed to compile_model (higher is better)."""

    min_cosine: float | None = None
    max_error: float | None = None
    min_top1_agreement: float | None = None
    min_metric: float | None = None
    eval_samples: int = 100

    def __post_init__(self) -> None:
        check_field_types(self)
        if all(v is None for v in (self.min_cosine, self.max_error, self.min_top1_agreement, self.min_metric)):
            raise ConfigError("an accuracy budget needs at least one of min_cosine, max_error, "
                              "min_top1_agreement, min_metric")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ConfigError(f"min_cosine must be in [-1, 1], got {self.min_cosine}")
        if self.max_error is not None and not self.max_error > 0:
            raise ConfigError(f"max_error must be > 0, got {self.max_error}")
        if self.min_top1_agreement is not None and not 0.0 <= self.min_top1_agreement <= 1.0:
            raise ConfigError(f"min_top1_agreement must be in [0, 1], got {self.min_top1_agreement}")
        if self.eval_samples < 1:
            raise ConfigError(f"eval_samples must be >= 1, got {self.eval_samples}")
