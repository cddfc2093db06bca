"""Compile configuration: frozen dataclasses and Enums, built by the CLI, TOML recipes or the Python API.

Every way of configuring qcompile ends in one ``CompileConfig``. Invalid values and impossible combinations
raise ``ConfigError`` when the object is built, never later in a pass.
"""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from qcompile.errors import ConfigError
from qcompile.qparams import QuantDType


class Granularity(enum.Enum):
    TENSOR = "tensor"
    CHANNEL = "channel"
    BLOCK = "block"


class CalibrationMethod(enum.Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


class Target(enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


class ImageLayout(enum.Enum):
    NCHW = "nchw"
    NHWC = "nhwc"


DEFAULT_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
QUANTIZABLE_OP_TYPES = frozenset(DEFAULT_OP_TYPES) | {"Add", "Mul"}


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
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.granularity is Granularity.BLOCK:
            if self.block_size is None or self.block_size < 16 or self.block_size & (self.block_size - 1):
                raise ConfigError("block granularity needs block_size a power of two >= 16")
        elif self.block_size is not None:
            raise ConfigError("block_size is only valid with granularity 'block'")


@dataclass(frozen=True)
class ImageOptions:
    """How image files in a calibration folder become a float tensor: resize, x/255, (x - mean) / std, layout."""

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: ImageLayout = ImageLayout.NCHW

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise ConfigError(f"image size must be two positive integers, got {self.size}")
        if len(self.mean) != len(self.std):
            raise ConfigError("image mean and std must have the same number of channels")
        if any(s <= 0 for s in self.std):
            raise ConfigError("image std values must be positive")


@dataclass(frozen=True)
class CalibrationConfig:
    num_samples: int | None = None
    batch_size: int = 1
    memory_budget_mb: int = 1024
    image: ImageOptions = field(default_factory=ImageOptions)

    def __post_init__(self) -> None:
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.memory_budget_mb < 1:
            raise ConfigError(f"memory_budget_mb must be >= 1, got {self.memory_budget_mb}")


@dataclass(frozen=True)
class NodeOverride:
    """Per-node exception: nodes whose name matches ``pattern`` (full regex match) get these specs, or stay float."""

    pattern: str
    skip: bool = False
    activation: QuantSpec | None = None
    weight: QuantSpec | None = None

    def __post_init__(self) -> None:
        _compile_pattern(self.pattern)


def _compile_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"invalid node pattern {pattern!r}: {exc}") from None


@dataclass(frozen=True)
class CompileConfig:
    activation: QuantSpec = field(default_factory=QuantSpec)
    weight: QuantSpec = field(default_factory=lambda: QuantSpec(
        dtype=QuantDType.INT8, symmetric=True, granularity=Granularity.CHANNEL))
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    exclude: tuple[str, ...] = ()
    overrides: tuple[NodeOverride, ...] = ()
    quantize_classifier: bool = False
    bias_correction: bool = True
    target: Target = Target.CPU
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    fidelity_samples: int = 8

    def __post_init__(self) -> None:
        unknown = sorted(set(self.op_types) - QUANTIZABLE_OP_TYPES)
        if unknown:
            raise ConfigError(f"op types {unknown} are not quantisable; choose from {sorted(QUANTIZABLE_OP_TYPES)}")
        if not self.op_types:
            raise ConfigError("op_types is empty: nothing would be quantised")
        for pattern in self.exclude:
            _compile_pattern(pattern)
        if self.weight.dtype is None:
            raise ConfigError("weight dtype must be set")
        if self.weight.granularity is Granularity.BLOCK:
            raise ConfigError("blocked weights are only available with weight-only presets")
        if self.activation.granularity is not Granularity.TENSOR:
            raise ConfigError("activations are quantised per tensor")
        if self.activation.dtype is not None and self.activation.dtype.bits != 8 \
                and self.activation.dtype not in (QuantDType.INT16, QuantDType.UINT16):
            raise ConfigError(f"activation dtype {self.activation.dtype.value} is not supported")
        if self.weight.dtype in (QuantDType.INT4, QuantDType.UINT4):
            raise ConfigError("4-bit weights are only available with weight-only presets")
        if self.fidelity_samples < 0:
            raise ConfigError("fidelity_samples must be >= 0")

    def to_json(self) -> dict[str, Any]:
        return _to_jsonable(self)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    return value


# ---- building from plain mappings (TOML) -------------------------------------------------------------

def _enum(cls: type[enum.Enum], value: Any, key: str) -> enum.Enum:
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).lower())
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise ConfigError(f"{key}: {value!r} is not one of {choices}") from None


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def quant_spec_from_mapping(data: Mapping[str, Any], base: QuantSpec, where: str) -> QuantSpec:
    _check_keys(data, {f.name for f in fields(QuantSpec)}, where)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "dtype":
            kwargs[key] = None if value in (None, "auto") else _enum(QuantDType, value, f"{where}.dtype")
        elif key == "granularity":
            kwargs[key] = _enum(Granularity, value, f"{where}.granularity")
        elif key == "method":
            kwargs[key] = _enum(CalibrationMethod, value, f"{where}.method")
        elif key == "symmetric":
            kwargs[key] = _bool(value, f"{where}.symmetric")
        elif key in ("axis", "block_size"):
            kwargs[key] = None if value is None else _int(value, f"{where}.{key}")
        else:
            kwargs[key] = _float(value, f"{where}.{key}")
    return replace(base, **kwargs)


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return value


def _float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def _str_tuple(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings")
    return tuple(value)


def config_from_mapping(data: Mapping[str, Any], base: CompileConfig | None = None) -> CompileConfig:
    """Build a CompileConfig from a nested mapping (the TOML schema); unknown keys are errors."""
    base = base or CompileConfig()
    allowed = {"activation", "weight", "op_types", "exclude", "overrides", "quantize_classifier", "bias_correction",
               "target",
               "calibration", "fidelity_samples"}
    _check_keys(data, allowed, "config")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("activation", "weight"):
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{key}] must be a table")
            kwargs[key] = quant_spec_from_mapping(value, getattr(base, key), key)
        elif key in ("op_types", "exclude"):
            kwargs[key] = _str_tuple(value, key)
        elif key in ("quantize_classifier", "bias_correction"):
            kwargs[key] = _bool(value, key)
        elif key == "target":
            kwargs[key] = _enum(Target, value, key)
        elif key == "fidelity_samples":
            kwargs[key] = _int(value, key)
        elif key == "calibration":
            kwargs[key] = _calibration_from_mapping(value, base.calibration)
        elif key == "overrides":
            kwargs[key] = tuple(_override_from_mapping(o, i) for i, o in enumerate(_list_of_tables(value, key)))
    return replace(base, **kwargs)


def _list_of_tables(value: Any, key: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(f"{key} must be an array of tables ([[{key}]])")
    return value


def _override_from_mapping(data: Mapping[str, Any], index: int) -> NodeOverride:
    where = f"overrides[{index}]"
    _check_keys(data, {"pattern", "skip", "activation", "weight"}, where)
    if not isinstance(data.get("pattern"), str):
        raise ConfigError(f"{where}.pattern must be a string (a regex matched against node names)")
    base = CompileConfig()
    for role in ("activation", "weight"):
        if role in data and not isinstance(data[role], Mapping):
            raise ConfigError(f"{where}.{role} must be a table")
    return NodeOverride(
        pattern=data["pattern"],
        skip=_bool(data.get("skip", False), f"{where}.skip"),
        activation=quant_spec_from_mapping(data["activation"], base.activation, f"{where}.activation")
        if "activation" in data else None,
        weight=quant_spec_from_mapping(data["weight"], base.weight, f"{where}.weight") if "weight" in data else None,
    )


def _calibration_from_mapping(data: Any, base: CalibrationConfig) -> CalibrationConfig:
    if not isinstance(data, Mapping):
        raise ConfigError("[calibration] must be a table")
    _check_keys(data, {f.name for f in fields(CalibrationConfig)}, "calibration")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "image":
            kwargs[key] = _image_from_mapping(value, base.image)
        elif key == "num_samples":
            kwargs[key] = None if value is None else _int(value, f"calibration.{key}")
        else:
            kwargs[key] = _int(value, f"calibration.{key}")
    return replace(base, **kwargs)


def _image_from_mapping(data: Any, base: ImageOptions) -> ImageOptions:
    if not isinstance(data, Mapping):
        raise ConfigError("[calibration.image] must be a table")
    _check_keys(data, {"size", "mean", "std", "layout"}, "calibration.image")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "layout":
            kwargs[key] = _enum(ImageLayout, value, "calibration.image.layout")
            continue
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"calibration.image.{key} must be an array, e.g. {key} = [224, 224]")
        if key == "size":
            kwargs[key] = tuple(_int(v, "calibration.image.size") for v in value)
        else:
            kwargs[key] = tuple(_float(v, f"calibration.image.{key}") for v in value)
    return replace(base, **kwargs)


def from_toml(path: str | Path, base: CompileConfig | None = None) -> CompileConfig:
    """Read a TOML recipe. Missing file, bad TOML and unknown keys are ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    return config_from_mapping(data, base)
