"""How the final classifier's precision is decided (qcompile/accuracy/classifier.py measures it)."""

from __future__ import annotations

from dataclasses import dataclass

from qcompile.errors import ConfigError


@dataclass(frozen=True)
class ClassifierConfig:
    """``measure`` (default): compile with the final classifier quantised and with it float, measure both
    against FP32 on the first ``samples`` calibration items, and keep it static int8 iff that costs at most
    ``max_sqnr_drop_db`` of output SQNR and at most ``max_agreement_drop`` of top-1 agreement (logit outputs);
    else int8 weights with a float input under the same rule; else float (qcompile/accuracy/classifier.py).
    ``measure=False`` keeps it float without measuring; ``quantize_classifier=True`` forces static int8."""

    measure: bool = True
    max_sqnr_drop_db: float = 1.0
    max_agreement_drop: float = 0.0
    samples: int = 32

    def __post_init__(self) -> None:
        if not self.max_sqnr_drop_db >= 0:
            raise ConfigError(f"classifier max_sqnr_drop_db must be >= 0, got {self.max_sqnr_drop_db}")
        if not 0.0 <= self.max_agreement_drop <= 1.0:
            raise ConfigError(f"classifier max_agreement_drop must be in [0, 1], got {self.max_agreement_drop}")
        if self.samples < 1:
            raise ConfigError(f"classifier samples must be >= 1, got {self.samples}")
