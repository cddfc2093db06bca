"""Compile configuration: frozen dataclasses and Enums, built by the CLI, TOML recipes or the Python API.

Every way of configuring qcompile ends in one ``CompileConfig`` (compile.py), made of the settings in
quant.py, calibration.py, transforms.py, weight_only.py and accuracy.py; mapping.py reads recipes into it;
target.py holds the target profile type the passes read. Invalid values and impossible combinations raise
``ConfigError`` when the object is built, never later in a pass.
"""

from qcompile.config.accuracy import AccuracyBudget, AnalysisConfig, LayerAnalysis
from qcompile.config.calibration import (LOCAL_RAY, CalibrationConfig, CalibrationProvider, ImageLayout,
                                         ImageOptions, WorkersConfig)
from qcompile.config.classifier import ClassifierConfig
from qcompile.config.compile import (DEFAULT_OP_TYPES, QUANTIZABLE_OP_TYPES, RECURRENT_OP_TYPES,
                                     STATIC_COMPUTE_OP_TYPES, CompileConfig, config_from_mapping, from_toml)
from qcompile.config.mapping import parse_alpha, weight_only_from_mapping
from qcompile.config.quant import CalibrationMethod, EmbeddingQuantConfig, Granularity, NodeOverride, QuantSpec
from qcompile.config.rounding import RoundingConfig, WeightRounding
from qcompile.config.target import CpuFeatures, Target, TargetProfile
from qcompile.config.transforms import AUTO_ALPHA_GRID, OutlierSplitConfig, SmoothQuantConfig, SmoothScope
from qcompile.config.weight_only import (NumberFormat, Preset, ScaleDType, WeightOnlyAlgorithm, WeightOnlyConfig,
                                         WeightOnlyForm)

__all__ = [
    "AUTO_ALPHA_GRID", "DEFAULT_OP_TYPES", "LOCAL_RAY", "QUANTIZABLE_OP_TYPES", "RECURRENT_OP_TYPES",
    "STATIC_COMPUTE_OP_TYPES",
    "AccuracyBudget", "AnalysisConfig", "CalibrationConfig", "ClassifierConfig", "CalibrationMethod", "CalibrationProvider",
    "CompileConfig", "CpuFeatures", "EmbeddingQuantConfig", "Granularity", "ImageLayout", "ImageOptions",
    "LayerAnalysis", "NodeOverride", "NumberFormat", "OutlierSplitConfig", "Preset", "QuantSpec", "RoundingConfig",
    "ScaleDType", "SmoothQuantConfig", "SmoothScope", "Target", "TargetProfile", "WeightOnlyAlgorithm",
    "WeightOnlyConfig",
    "WeightOnlyForm", "WeightRounding", "WorkersConfig",
    "config_from_mapping", "from_toml", "parse_alpha", "weight_only_from_mapping",
]
