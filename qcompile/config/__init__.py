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


class Target(enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


class CalibrationProvider(enum.Enum):
    """Where calibration runs the float graph: ORT's CPU EP, or its CUDA EP (needs onnxruntime-gpu)."""

    CPU = "cpu"
    CUDA = "cuda"

    @property
    def ort_providers(self) -> tuple[str, ...]:
        return ("CUDAExecutionProvider", "CPUExecutionProvider") if self is CalibrationProvider.CUDA \
            else ("CPUExecutionProvider",)


class ImageLayout(enum.Enum):
    NCHW = "nchw"
    NHWC = "nhwc"


class LayerAnalysis(enum.Enum):
    """How much per-layer error analysis a compile does (see qcompile/sensitivity.py)."""

    NONE = "none"
    SQNR = "sqnr"                    # per-layer SQNR on a few calibration items (two extra runs each)
    SENSITIVITY = "sensitivity"      # + end-to-end error with only that node quantised (one run per node each)


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


LOCAL_RAY = "ray"
_RAY_ADDRESS = re.compile(r"ray://[^\s/:]+:\d{1,5}")


@dataclass(frozen=True)
class WorkersConfig:
    """Calibration sharded over Ray tasks (``qcompile[distributed]``).

    ``address``: "ray" joins the local Ray cluster (or starts one), "ray://HOST:PORT" a remote one.
    ``shards``: pieces the calibration folder is cut into (None: one per task the cluster runs at once).
    ``threads``: ORT intra-op threads per task, which is also the CPUs a task reserves.
    ``max_retries``: re-runs of a task whose worker process dies.
    """

    address: str = LOCAL_RAY
    shards: int | None = None
    threads: int = 1
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.address != LOCAL_RAY and not _RAY_ADDRESS.fullmatch(self.address):
            raise ConfigError(f"workers must be 'ray' (a local cluster) or ray://HOST:PORT, got {self.address!r}")
        if self.shards is not None and self.shards < 1:
            raise ConfigError(f"workers.shards must be >= 1, got {self.shards}")
        if self.threads < 1:
            raise ConfigError(f"workers.threads must be >= 1, got {self.threads}")
        if self.max_retries < 0:
            raise ConfigError(f"workers.max_retries must be >= 0, got {self.max_retries}")


@dataclass(frozen=True)
class CalibrationConfig:
    num_samples: int | None = None
    batch_size: int = 1
    memory_budget_mb: int = 1024
    image: ImageOptions = field(default_factory=ImageOptions)
    workers: WorkersConfig | None = None  # None: calibrate in this process
    provider: CalibrationProvider = CalibrationProvider.CPU   # ORT EP the calibration runs on

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
        if not 0.0 < self.expand_ratio <= 1.0:
            raise ConfigError(f"outlier_split.expand_ratio must be in (0, 1], got {self.expand_ratio}")

    @property
    def enabled(self) -> bool:
        return self.weights or self.activations


@dataclass(frozen=True)
class EmbeddingQuantConfig:
    """Gather on a constant float table of at least ``min_elements`` -> int8 table, Gather on integers, then DQ."""

    enabled: bool = True
    granularity: Granularity = Granularity.CHANNEL   # CHANNEL: one scale per column (feature); TENSOR: one scale
    min_elements: int = 1 << 14

    def __post_init__(self) -> None:
        if self.granularity is Granularity.BLOCK:
            raise ConfigError("embedding tables are quantised per tensor or per channel (column)")
        if self.min_elements < 1:
            raise ConfigError(f"embedding.min_elements must be >= 1, got {self.min_elements}")


class Preset(enum.Enum):
    """What gets quantised how: static INT8 weights and activations (w8a8, the default), or weight-only
    INT4/INT8 weights with float activations (w4a16, w8a16: LLM decode is memory-bound, weight bytes decide)."""

    W8A8 = "w8a8"
    W4A16 = "w4a16"
    W8A16 = "w8a16"

    @property
    def weight_only_bits(self) -> int | None:
        return {"w8a8": None, "w4a16": 4, "w8a16": 8}[self.value]


class WeightOnlyAlgorithm(enum.Enum):
    RTN = "rtn"        # round to nearest, per block
    GPTQ = "gptq"      # Hessian-aware error feedback (Frantar et al., 2022)
    AWQ = "awq"        # activation-aware per-input-channel scale search (Lin et al., 2023)


class WeightOnlyForm(enum.Enum):
    AUTO = "auto"                              # the target profile picks (from measurement)
    DEQUANTIZE_LINEAR = "dequantize_linear"    # standard ONNX: blocked DequantizeLinear -> MatMul (opset 21)
    MATMUL_NBITS = "matmul_nbits"              # com.microsoft MatMulNBits (ORT only)


class NumberFormat(enum.Enum):
    INTEGER = "integer"    # uniform INT4/INT8 codes with per-block scale (and zero point)
    NF4 = "nf4"            # QLoRA normal-float: 16 N(0,1) quantiles × per-block absmax (com.microsoft MatMulBnb4)


class ScaleDType(enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"    # stored as fp16 and cast at load (ORT folds the Cast): half the scale bytes


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Settings of the weight-only presets (w4a16, w8a16); ignored by w8a8. The bits come from the preset.

    MatMul/Gemm weights are quantised in blocks of ``block_size`` along K. ``embedding_bits`` and
    ``lm_head_bits`` keep the token embedding table and the final classifier at 8 bits (None = float)
    unless ``quantize_classifier`` asks for the preset's bits on the classifier too. Defaults come from the
    MiniLM measurements in the README (GPTQ with act_order and clip search, asymmetric blocks of 32).
    """

    block_size: int = 32
    symmetric: bool = False
    scale_dtype: ScaleDType = ScaleDType.FLOAT32
    algorithm: WeightOnlyAlgorithm = WeightOnlyAlgorithm.GPTQ   # MiniLM w4a16: cosine .989 vs RTN .973
    clip_search: bool = True            # MiniLM w4a16: lower output error for RTN, GPTQ and AWQ alike
    act_order: bool = True              # GPTQ, static groups: MiniLM output error .00142 vs .00176
    damping: float = 0.01
    gptq_batch: int = 128
    awq_grid: int = 20
    number_format: NumberFormat = NumberFormat.INTEGER
    form: WeightOnlyForm = WeightOnlyForm.AUTO
    accuracy_level: int | None = None
    embedding_bits: int | None = 8
    lm_head_bits: int | None = 8

    def __post_init__(self) -> None:
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"weight_only.block_size must be a power of two >= 16, got {self.block_size}")
        if not 0.0 < self.damping < 1.0:
            raise ConfigError(f"weight_only.damping must be in (0, 1), got {self.damping}")
        if self.gptq_batch < 1 or self.awq_grid < 2:
            raise ConfigError("weight_only.gptq_batch must be >= 1 and weight_only.awq_grid >= 2")
        if self.accuracy_level is not None and self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"weight_only.accuracy_level must be 0..4, got {self.accuracy_level}")
        if self.accuracy_level is not None and self.form is WeightOnlyForm.DEQUANTIZE_LINEAR:
            raise ConfigError("accuracy_level is a MatMulNBits attribute: use form matmul_nbits or auto")
        if self.embedding_bits not in (None, 8):
            raise ConfigError(f"weight_only.embedding_bits must be 8 or none (float), got {self.embedding_bits}")
        if self.lm_head_bits not in (None, 4, 8):
            raise ConfigError(f"weight_only.lm_head_bits must be 4, 8 or none (float), got {self.lm_head_bits}")
        if self.number_format is NumberFormat.NF4 and self.algorithm is WeightOnlyAlgorithm.AWQ:
            raise ConfigError("nf4 weights support the rtn and gptq algorithms")


@dataclass(frozen=True)
class AnalysisConfig:
    """Per-layer error analysis: which kind, on how many calibration items (the first ``samples``)."""

    layers: LayerAnalysis = LayerAnalysis.SQNR
    samples: int = 8

    def __post_init__(self) -> None:
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
    smoothquant: SmoothQuantConfig = field(default_factory=SmoothQuantConfig)
    outlier_split: OutlierSplitConfig = field(default_factory=OutlierSplitConfig)
    embedding: EmbeddingQuantConfig = field(default_factory=EmbeddingQuantConfig)
    preset: Preset = Preset.W8A8
    weight_only: WeightOnlyConfig = field(default_factory=WeightOnlyConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    accuracy_budget: AccuracyBudget | None = None
    # a shared library of ORT custom ops, loaded into qcompile's sessions: code execution, so only from the CLI
    # flag or the API, never from a TOML recipe (not in config_from_mapping's keys)
    custom_op_library: str | None = None
    # MatMuls of two activations (attention QKᵀ, P·V): float by default (measured slower and less accurate
    # on MiniLM at INT8, see notes/issue-5); True puts Q/DQ on both inputs
    quantize_activation_matmuls: bool = False

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
        if self.weight.granularity is Granularity.BLOCK and self.preset is Preset.W8A8:
            raise ConfigError("blocked weights are only available with weight-only presets")
        if self.activation.granularity is not Granularity.TENSOR:
            raise ConfigError("activations are quantised per tensor")
        if self.activation.dtype is not None and self.activation.dtype.bits != 8 \
                and self.activation.dtype not in (QuantDType.INT16, QuantDType.UINT16):
            raise ConfigError(f"activation dtype {self.activation.dtype.value} is not supported")
        if self.weight.dtype in (QuantDType.INT4, QuantDType.UINT4) and self.preset is Preset.W8A8:
            raise ConfigError("4-bit weights are only available with weight-only presets")
        if self.weight_only.number_format is NumberFormat.NF4 and self.preset is not Preset.W4A16:
            raise ConfigError("nf4 weights need the w4a16 preset")
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
               "calibration", "fidelity_samples", "smoothquant", "outlier_split", "embedding",
               "preset", "weight_only", "analysis", "accuracy_budget", "quantize_activation_matmuls"}
    _check_keys(data, allowed, "config")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("activation", "weight"):
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{key}] must be a table")
            kwargs[key] = quant_spec_from_mapping(value, getattr(base, key), key)
        elif key in ("op_types", "exclude"):
            kwargs[key] = _str_tuple(value, key)
        elif key in ("quantize_classifier", "bias_correction", "quantize_activation_matmuls"):
            kwargs[key] = _bool(value, key)
        elif key == "target":
            kwargs[key] = _enum(Target, value, key)
        elif key == "fidelity_samples":
            kwargs[key] = _int(value, key)
        elif key == "calibration":
            kwargs[key] = _calibration_from_mapping(value, base.calibration)
        elif key == "overrides":
            kwargs[key] = tuple(_override_from_mapping(o, i) for i, o in enumerate(_list_of_tables(value, key)))
        elif key == "smoothquant":
            kwargs[key] = smoothquant_from_mapping(value, base.smoothquant)
        elif key == "outlier_split":
            kwargs[key] = _outlier_split_from_mapping(value, base.outlier_split)
        elif key == "embedding":
            kwargs[key] = _embedding_from_mapping(value, base.embedding)
        elif key == "preset":
            kwargs[key] = _enum(Preset, value, key)
        elif key == "weight_only":
            kwargs[key] = weight_only_from_mapping(value, base.weight_only)
        elif key == "analysis":
            kwargs[key] = _analysis_from_mapping(value)
        elif key == "accuracy_budget":
            kwargs[key] = _budget_from_mapping(value)
    return replace(base, **kwargs)


def _analysis_from_mapping(data: Any) -> AnalysisConfig:
    if not isinstance(data, Mapping):
        raise ConfigError("[analysis] must be a table")
    _check_keys(data, {"layers", "samples"}, "analysis")
    kwargs: dict[str, Any] = {}
    if "layers" in data:
        kwargs["layers"] = _enum(LayerAnalysis, data["layers"], "analysis.layers")
    if "samples" in data:
        kwargs["samples"] = _int(data["samples"], "analysis.samples")
    return AnalysisConfig(**kwargs)


def _budget_from_mapping(data: Any) -> AccuracyBudget:
    if not isinstance(data, Mapping):
        raise ConfigError("[accuracy_budget] must be a table")
    _check_keys(data, {f.name for f in fields(AccuracyBudget)}, "accuracy_budget")
    return AccuracyBudget(**{key: _int(value, f"accuracy_budget.{key}") if key == "eval_samples"
                             else _float(value, f"accuracy_budget.{key}") for key, value in data.items()})


def weight_only_from_mapping(data: Any, base: WeightOnlyConfig) -> WeightOnlyConfig:
    """The [weight_only] table; unknown keys are errors, "none" means float for the *_bits keys."""
    if not isinstance(data, Mapping):
        raise ConfigError("[weight_only] must be a table")
    _check_keys(data, {f.name for f in fields(WeightOnlyConfig)}, "weight_only")
    enums = {"scale_dtype": ScaleDType, "algorithm": WeightOnlyAlgorithm, "number_format": NumberFormat,
             "form": WeightOnlyForm}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"weight_only.{key}"
        if key in enums:
            kwargs[key] = _enum(enums[key], value, where)
        elif key in ("symmetric", "clip_search", "act_order"):
            kwargs[key] = _bool(value, where)
        elif key == "damping":
            kwargs[key] = _float(value, where)
        elif key in ("accuracy_level", "embedding_bits", "lm_head_bits"):
            kwargs[key] = None if value in (None, "none") else _int(value, where)
        else:
            kwargs[key] = _int(value, where)
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
        elif key == "workers":
            kwargs[key] = _workers_from_mapping(value)
        elif key == "provider":
            kwargs[key] = _enum(CalibrationProvider, value, "calibration.provider")
        elif key == "num_samples":
            kwargs[key] = None if value is None else _int(value, f"calibration.{key}")
        else:
            kwargs[key] = _int(value, f"calibration.{key}")
    return replace(base, **kwargs)


def _workers_from_mapping(data: Any) -> WorkersConfig:
    """``workers = "ray://head:10001"`` or a ``[calibration.workers]`` table of WorkersConfig's fields."""
    if isinstance(data, str):
        return WorkersConfig(address=data)
    if not isinstance(data, Mapping):
        raise ConfigError("calibration.workers must be an address string or a table")
    _check_keys(data, {f.name for f in fields(WorkersConfig)}, "calibration.workers")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "address":
            if not isinstance(value, str):
                raise ConfigError(f"calibration.workers.address must be a string, got {value!r}")
            kwargs[key] = value
        else:
            kwargs[key] = None if key == "shards" and value is None else _int(value, f"calibration.workers.{key}")
    return WorkersConfig(**kwargs)


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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    return config_from_mapping(data, base)


def parse_alpha(value: Any, key: str) -> float | None:
    """An α value: a number in [0, 1] or "auto" (None: search per layer)."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number in [0, 1] or 'auto', got {value!r}") from None
    return _float(value, key)


def smoothquant_from_mapping(data: Any, base: SmoothQuantConfig) -> SmoothQuantConfig:
    if not isinstance(data, Mapping):
        raise ConfigError("[smoothquant] must be a table")
    _check_keys(data, {f.name for f in fields(SmoothQuantConfig)}, "smoothquant")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "scope":
            kwargs[key] = _enum(SmoothScope, value, "smoothquant.scope")
        elif key == "alpha":
            kwargs[key] = parse_alpha(value, "smoothquant.alpha")
        elif key == "op_alpha":
            # a table (TOML) or [op, alpha] pairs (the JSON form of the config in reports)
            pairs = value.items() if isinstance(value, Mapping) else value
            if not isinstance(pairs, (list, tuple, type({}.items()))) or \
                    not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
                raise ConfigError("smoothquant.op_alpha must be a table, e.g. op_alpha = { Gemm = 0.7 }")
            kwargs[key] = tuple((str(op), parse_alpha(a, f"smoothquant.op_alpha.{op}")) for op, a in pairs)
        elif key == "auto_grid":
            if not isinstance(value, (list, tuple)):
                raise ConfigError("smoothquant.auto_grid must be an array of numbers")
            kwargs[key] = tuple(_float(v, "smoothquant.auto_grid") for v in value)
        else:
            kwargs[key] = _int(value, f"smoothquant.{key}")
    return replace(base, **kwargs)


def _outlier_split_from_mapping(data: Any, base: OutlierSplitConfig) -> OutlierSplitConfig:
    if not isinstance(data, Mapping):
        raise ConfigError("[outlier_split] must be a table")
    _check_keys(data, {f.name for f in fields(OutlierSplitConfig)}, "outlier_split")
    kwargs = {k: _float(v, f"outlier_split.{k}") if k == "expand_ratio" else _bool(v, f"outlier_split.{k}")
              for k, v in data.items()}
    return replace(base, **kwargs)


def _embedding_from_mapping(data: Any, base: EmbeddingQuantConfig) -> EmbeddingQuantConfig:
    if not isinstance(data, Mapping):
        raise ConfigError("[embedding] must be a table")
    _check_keys(data, {f.name for f in fields(EmbeddingQuantConfig)}, "embedding")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "enabled":
            kwargs[key] = _bool(value, "embedding.enabled")
        elif key == "granularity":
            kwargs[key] = _enum(Granularity, value, "embedding.granularity")
        else:
            kwargs[key] = _int(value, f"embedding.{key}")
    return replace(base, **kwargs)
