"""``CompileConfig``: everything one compile is asked to do, and the checks across its parts.

Every way of configuring qcompile (CLI flags, a TOML recipe, the Python API) ends in one ``CompileConfig``.
Invalid values and impossible combinations raise ``ConfigError`` when the object is built, never later in a pass.
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qcompile.config.accuracy import AccuracyBudget, AnalysisConfig
from qcompile.config.calibration import CalibrationConfig
from qcompile.config.classifier import ClassifierConfig
from qcompile.config.field_types import check_field_types
from qcompile.config.mapping import NOT_IN_RECIPES, dataclass_from_mapping
from qcompile.config.quant import (EmbeddingQuantConfig, Granularity, NodeOverride, QuantSpec, compile_pattern,
                                   default_activation_spec, default_weight_spec)
from qcompile.config.rounding import RoundingConfig
from qcompile.config.target import Target
from qcompile.config.transforms import OutlierSplitConfig, SmoothQuantConfig
from qcompile.config.weight_only import NumberFormat, Preset, WeightOnlyConfig
from qcompile.errors import ConfigError
from qcompile.numerics.qparams import QuantDType

STATIC_COMPUTE_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")   # y = f(x, W[, b]): Q/DQ on x and W
RECURRENT_OP_TYPES = ("LSTM", "GRU", "RNN")                            # int8 W and R, float recurrence
DEFAULT_OP_TYPES = STATIC_COMPUTE_OP_TYPES + RECURRENT_OP_TYPES
QUANTIZABLE_OP_TYPES = frozenset(DEFAULT_OP_TYPES) | {"Add", "Mul"}


@dataclass(frozen=True)
class CompileConfig:
    activation: QuantSpec = field(default_factory=default_activation_spec)
    weight: QuantSpec = field(default_factory=default_weight_spec)
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    exclude: tuple[str, ...] = ()
    overrides: tuple[NodeOverride, ...] = ()
    quantize_classifier: bool = False
    bias_correction: bool = True
    rounding: RoundingConfig = field(default_factory=RoundingConfig)
    target: Target = Target.CPU
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    fidelity_samples: int = 8
    smoothquant: SmoothQuantConfig = field(default_factory=SmoothQuantConfig)
    outlier_split: OutlierSplitConfig = field(default_factory=OutlierSplitConfig)
    embedding: EmbeddingQuantConfig = field(default_factory=EmbeddingQuantConfig)
    preset: Preset = Preset.W8A8
    weight_only: WeightOnlyConfig = field(default_factory=WeightOnlyConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    accuracy_budget: AccuracyBudget | None = None
    # a shared library of ORT custom ops, loaded into qcompile's sessions: code execution, so only from the CLI
    # flag or the API, never from a TOML recipe or a dict (mapping.NOT_IN_RECIPES)
    custom_op_library: str | None = field(default=None, metadata={NOT_IN_RECIPES: True})
    # MatMuls of two activations (attention QKᵀ, P·V): float by default (measured slower and less accurate
    # on MiniLM at INT8, see notes/issue-5); True puts Q/DQ on both inputs
    quantize_activation_matmuls: bool = False
    # a quick bounded FP32-vs-quantised timing after the compile, with a warning when INT8 is not faster
    # (qcompile/accuracy/latency_check.py)
    latency_check: bool = True
    # the final classifier: float, or quantised when measurement says it costs little (config/classifier.py)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    # Conv -> [Relu] -> Conv weight-range equalisation (passes/transform/cross_layer_equalization.py)
    cross_layer_equalization: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)
        unknown = sorted(set(self.op_types) - QUANTIZABLE_OP_TYPES)
        if unknown:
            raise ConfigError(f"op types {unknown} are not quantisable; choose from {sorted(QUANTIZABLE_OP_TYPES)}")
        if not self.op_types:
            raise ConfigError("op_types is empty: nothing would be quantised")
        for pattern in self.exclude:
            compile_pattern(pattern)
        if self.weight.dtype is None:
            raise ConfigError("weight dtype must be set")
        if self.weight.granularity is Granularity.BLOCK and self.preset is Preset.W8A8:
            raise ConfigError("blocked weights are only available with weight-only presets")
        if self.activation.granularity is not Granularity.TENSOR:
            raise ConfigError("activations are quantised per tensor")
        if self.activation.dtype is not None and self.activation.dtype.bits != 8 \
                and self.activation.dtype not in (QuantDType.INT16, QuantDType.UINT16):
            raise ConfigError(f"activation dtype {self.activation.dtype.value} is not supported")
        if self.weight.dtype in (QuantDType.INT4, QuantDType.UINT4) and self.preset is Preset.W8A8:
            raise ConfigError("4-bit weights are only available with weight-only presets")
        if self.preset is not Preset.FP8 and QuantDType.FLOAT8E4M3FN in (self.activation.dtype, self.weight.dtype):
            raise ConfigError("float8e4m3fn tensors need the fp8 preset (--preset fp8)")
        if self.weight_only.number_format is NumberFormat.NF4 and self.preset is not Preset.W4A16:
            raise ConfigError("nf4 weights need the w4a16 preset")
        if self.fidelity_samples < 0:
            raise ConfigError("fidelity_samples must be >= 0")

    def to_json(self) -> dict[str, Any]:
        return _to_jsonable(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: CompileConfig | None = None) -> CompileConfig:
        """The config of a nested dict in the TOML recipe's schema (``{"calibration": {"num_samples": 64}}``)
        over ``base`` (default: the defaults); unknown keys and wrong types are ConfigError."""
        return dataclass_from_mapping(cls, data, "", base or cls())


def config_from_mapping(data: Mapping[str, Any], base: CompileConfig | None = None) -> CompileConfig:
    """Build a CompileConfig from a nested mapping (the TOML schema) over ``base``; unknown keys are errors."""
    return CompileConfig.from_dict(data, base)


def from_toml(path: str | Path, base: CompileConfig | None = None) -> CompileConfig:
    """Read a TOML recipe. Missing file, bad TOML and unknown keys are ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    return config_from_mapping(data, base)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    return value
