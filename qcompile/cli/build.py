"""The command-line flags as one frozen CompileFlags, and the one builder that turns them into a CompileConfig.

Precedence: a flag given > the TOML recipe (--config) > CompileConfig()'s defaults. A flag not given (None, an
empty tuple, False for on-only switches) leaves the recipe's or default value; --exclude adds to the recipe's
patterns instead of replacing them; --workers sets only the address (shards, threads and retries come from the
recipe or the defaults).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qcompile.config import (AccuracyBudget, CalibrationMethod, CalibrationProvider, CompileConfig, ImageLayout,
                             LayerAnalysis, Preset, SmoothScope, Target, WeightOnlyAlgorithm, WeightOnlyForm,
                             WeightRounding, WorkersConfig, from_toml, parse_alpha, weight_only_from_mapping)
from qcompile.errors import ConfigError


class OutlierSides(enum.Enum):
    """Which MatMul/Gemm inputs --split-outliers splits."""

    WEIGHTS = "weights"
    ACTIVATIONS = "activations"
    BOTH = "both"


@dataclass(frozen=True)
class CompileFlags:
    """Every flag that changes the CompileConfig, as click parsed it; the defaults mean "not given"."""

    config_path: str | None = None
    # what is quantised
    op_types: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    quantize_classifier: bool = False
    keep_classifier_float: bool = False
    target: Target | None = None
    fidelity_samples: int | None = None
    # calibration
    method: CalibrationMethod | None = None
    percentile: float | None = None
    num_samples: int | None = None
    batch_size: int | None = None
    sample_time_limit: float | None = None
    image_size: str | None = None
    mean: str | None = None
    std: str | None = None
    layout: ImageLayout | None = None
    workers: str | None = None
    calib_provider: CalibrationProvider | None = None
    custom_op_library: str | None = None
    weight_rounding: WeightRounding | None = None
    # weight-only
    preset: Preset | None = None
    block_size: int | None = None
    algorithm: WeightOnlyAlgorithm | None = None
    form: WeightOnlyForm | None = None
    accuracy_level: int | None = None
    symmetric: bool | None = None
    act_order: bool | None = None
    clip_search: bool | None = None
    # accuracy budget and per-layer analysis
    min_cosine: float | None = None
    max_error: float | None = None
    min_top1_agreement: float | None = None
    eval_samples: int | None = None
    layer_analysis: LayerAnalysis | None = None
    analysis_samples: int | None = None
    no_latency_check: bool = False
    # transformer graphs
    smoothquant: str | None = None
    split_outliers: OutlierSides | None = None
    split_ratio: float | None = None
    quantize_attention: bool = False
    float_embeddings: bool = False


_WEIGHT_ONLY_KEYS = ("block_size", "algorithm", "form", "accuracy_level", "symmetric", "act_order", "clip_search")
_BUDGET_BOUNDS = ("min_cosine", "max_error", "min_top1_agreement")


def build_config(flags: CompileFlags) -> CompileConfig:
    """The CompileConfig of ``flags`` over the recipe over the defaults (module docstring).

    The flag groups are applied in a fixed order, each giving a validated CompileConfig (selection, target and
    calibration; weight-only; accuracy; runtime; transformer): the order decides which error a conflicting
    combination reports, so keep it.
    """
    config = from_toml(flags.config_path) if flags.config_path else CompileConfig()
    groups: tuple[Callable[[CompileConfig, CompileFlags], dict[str, Any]], ...] = (
        _selection_and_calibration, _weight_only, _accuracy, _runtime, _transformer)
    for changes in groups:
        config = dataclasses.replace(config, **changes(config, flags))
    return config


def _split_csv(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, got {text!r}") from None


def _image_size(text: str | None) -> tuple[int, int] | None:
    """``N`` or ``HxW`` (also ``H,W``) as (height, width)."""
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--image-size must be N or HxW, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ConfigError(f"--image-size must be N or HxW, got {text!r}")
    return values[0], values[1]


def _selection_and_calibration(config: CompileConfig, flags: CompileFlags) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if flags.op_types:
        changes["op_types"] = _split_csv(flags.op_types)
    if flags.weight_rounding is not None:
        changes["rounding"] = dataclasses.replace(config.rounding, method=flags.weight_rounding)
    if flags.exclude:
        changes["exclude"] = config.exclude + _split_csv(flags.exclude)
    if flags.quantize_classifier and flags.keep_classifier_float:
        raise ConfigError("--quantize-classifier and --keep-classifier-float contradict each other; give one")
    if flags.quantize_classifier:
        changes["quantize_classifier"] = True
    if flags.keep_classifier_float:
        changes["classifier"] = dataclasses.replace(config.classifier, measure=False)
    if flags.target is not None:
        changes["target"] = flags.target
    if flags.fidelity_samples is not None:
        changes["fidelity_samples"] = flags.fidelity_samples
    if flags.method is not None or flags.percentile is not None:
        activation = config.activation
        if flags.method is not None:
            activation = dataclasses.replace(activation, method=flags.method)
        if flags.percentile is not None:
            activation = dataclasses.replace(activation, percentile=flags.percentile)
        changes["activation"] = activation
    calibration = config.calibration
    if flags.num_samples is not None:
        calibration = dataclasses.replace(calibration, num_samples=flags.num_samples)
    if flags.batch_size is not None:
        calibration = dataclasses.replace(calibration, batch_size=flags.batch_size)
    if flags.sample_time_limit is not None:
        calibration = dataclasses.replace(calibration, sample_time_limit_s=flags.sample_time_limit)
    image_changes = {k: v for k, v in {"size": _image_size(flags.image_size), "mean": _floats(flags.mean, "--mean"),
                                       "std": _floats(flags.std, "--std")}.items() if v is not None}
    if flags.layout is not None:
        image_changes["layout"] = flags.layout
    if image_changes:
        calibration = dataclasses.replace(calibration, image=dataclasses.replace(calibration.image, **image_changes))
    if flags.workers is not None:
        calibration = dataclasses.replace(calibration, workers=dataclasses.replace(
            calibration.workers or WorkersConfig(), address=flags.workers))
    changes["calibration"] = calibration
    return changes


def _weight_only(config: CompileConfig, flags: CompileFlags) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if flags.preset is not None:
        changes["preset"] = flags.preset
    table = {key: getattr(flags, key) for key in _WEIGHT_ONLY_KEYS if getattr(flags, key) is not None}
    if table:
        changes["weight_only"] = weight_only_from_mapping(table, config.weight_only)
    return changes


def _accuracy(config: CompileConfig, flags: CompileFlags) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    bounds = {key: getattr(flags, key) for key in _BUDGET_BOUNDS if getattr(flags, key) is not None}
    if flags.eval_samples is not None:
        bounds["eval_samples"] = flags.eval_samples
    if bounds:
        if config.accuracy_budget is None and set(bounds) == {"eval_samples"}:
            raise ConfigError("--eval-samples needs a budget: --min-cosine, --max-error or --min-top1-agreement")
        changes["accuracy_budget"] = (dataclasses.replace(config.accuracy_budget, **bounds)
                                      if config.accuracy_budget else AccuracyBudget(**bounds))
    analysis: dict[str, Any] = {}
    if flags.layer_analysis is not None:
        analysis["layers"] = flags.layer_analysis
    if flags.analysis_samples is not None:
        analysis["samples"] = flags.analysis_samples
    if flags.no_latency_check:
        changes["latency_check"] = False
    if analysis:
        changes["analysis"] = dataclasses.replace(config.analysis, **analysis)
    return changes


def _runtime(config: CompileConfig, flags: CompileFlags) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if flags.calib_provider is not None:
        changes["calibration"] = dataclasses.replace(config.calibration, provider=flags.calib_provider)
    if flags.custom_op_library:
        changes["custom_op_library"] = str(flags.custom_op_library)
    return changes


def _transformer(config: CompileConfig, flags: CompileFlags) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if flags.smoothquant is not None:
        value = str(flags.smoothquant).strip().lower()
        scope = SmoothScope.OFF if value == "off" else SmoothScope.ALL
        alpha = config.smoothquant.alpha if value == "off" else parse_alpha(value, "--smoothquant")
        changes["smoothquant"] = dataclasses.replace(config.smoothquant, scope=scope, alpha=alpha)
    split = config.outlier_split
    if flags.split_outliers is not None:
        split = dataclasses.replace(split, weights=flags.split_outliers in (OutlierSides.WEIGHTS, OutlierSides.BOTH),
                                    activations=flags.split_outliers in (OutlierSides.ACTIVATIONS, OutlierSides.BOTH))
    if flags.split_ratio is not None:
        split = dataclasses.replace(split, expand_ratio=flags.split_ratio)
    if split != config.outlier_split:
        changes["outlier_split"] = split
    if flags.quantize_attention:
        changes["quantize_activation_matmuls"] = True
    if flags.float_embeddings:
        changes["embedding"] = dataclasses.replace(config.embedding, enabled=False)
    return changes
