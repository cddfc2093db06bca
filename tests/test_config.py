"""Tests for qcompile.config: defaults, TOML recipes, unknown keys, bad values, impossible combinations,
and JSON serialisation of enum values."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from qcompile.config import (DEFAULT_OP_TYPES, CalibrationConfig, CalibrationMethod, CompileConfig, Granularity,
                             ImageLayout, ImageOptions, NodeOverride, QuantSpec, Target, config_from_mapping,
                             from_toml)
from qcompile.errors import ConfigError
from qcompile.numerics.qparams import QuantDType


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- defaults


def test_defaults():
    config = CompileConfig()
    assert config.activation == QuantSpec(method=CalibrationMethod.MSE)
    assert config.activation.dtype is None  # the target profile chooses
    assert config.activation.symmetric is False
    assert config.activation.granularity is Granularity.TENSOR
    assert config.activation.method is CalibrationMethod.MSE   # the least expected error, guarded by min-max
    assert config.weight.dtype is QuantDType.INT8
    assert config.weight.symmetric is True
    assert config.weight.granularity is Granularity.CHANNEL
    assert config.op_types == DEFAULT_OP_TYPES == ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN")
    assert config.exclude == () and config.overrides == ()
    assert config.quantize_classifier is False
    assert config.target is Target.CPU
    assert config.calibration == CalibrationConfig()
    assert config.calibration.num_samples is None
    assert config.calibration.image.layout is ImageLayout.NCHW
    assert config.fidelity_samples == 8


def test_config_is_frozen():
    config = CompileConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.target = Target.CUDA  # type: ignore[misc]


def test_empty_recipe_gives_defaults(tmp_path):
    assert from_toml(_write(tmp_path, "")) == CompileConfig()


# ---------------------------------------------------------------------------------------------- from_toml


FULL_RECIPE = """
    op_types = ["Conv", "MatMul"]
    exclude = ["head", "block[0-9]+/proj"]
    quantize_classifier = true
    target = "cpu"
    fidelity_samples = 3

    [activation]
    dtype = "uint8"
    symmetric = false
    method = "percentile"
    percentile = 99.9

    [weight]
    dtype = "int8"
    symmetric = true
    granularity = "tensor"

    [[overrides]]
    pattern = "stem.*"
    skip = true

    [[overrides]]
    pattern = "attn_.*"
    activation = { method = "entropy" }
    weight = { granularity = "channel", axis = 0 }

    [calibration]
    num_samples = 64
    batch_size = 4
    memory_budget_mb = 256

    [calibration.image]
    size = [224, 192]
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    layout = "nhwc"
"""


def test_from_toml_happy_path(tmp_path):
    config = from_toml(_write(tmp_path, FULL_RECIPE))
    assert config.op_types == ("Conv", "MatMul")
    assert config.exclude == ("head", "block[0-9]+/proj")
    assert config.quantize_classifier is True
    assert config.target is Target.CPU
    assert config.fidelity_samples == 3
    assert config.activation == QuantSpec(dtype=QuantDType.UINT8, symmetric=False,
                                          method=CalibrationMethod.PERCENTILE, percentile=99.9)
    assert config.weight == QuantSpec(dtype=QuantDType.INT8, symmetric=True, granularity=Granularity.TENSOR)
    assert len(config.overrides) == 2
    skip, attn = config.overrides
    assert skip == NodeOverride(pattern="stem.*", skip=True)
    assert attn.pattern == "attn_.*" and attn.skip is False
    # override specs start from the defaults, not from the recipe's [activation]/[weight]
    assert attn.activation == dataclasses.replace(QuantSpec(), method=CalibrationMethod.ENTROPY)
    assert attn.weight == QuantSpec(dtype=QuantDType.INT8, symmetric=True, granularity=Granularity.CHANNEL, axis=0)
    assert config.calibration.num_samples == 64
    assert config.calibration.batch_size == 4
    assert config.calibration.memory_budget_mb == 256
    assert config.calibration.image == ImageOptions(size=(224, 192), mean=(0.485, 0.456, 0.406),
                                                    std=(0.229, 0.224, 0.225), layout=ImageLayout.NHWC)


def test_from_toml_enum_values_are_case_insensitive_and_single_string_lists(tmp_path):
    config = from_toml(_write(tmp_path, """
        op_types = "Gemm"
        exclude = "fc"
        [activation]
        method = "MinMax"
        [weight]
        dtype = "INT8"
    """))
    assert config.op_types == ("Gemm",)
    assert config.exclude == ("fc",)
    assert config.activation.method is CalibrationMethod.MINMAX
    assert config.weight.dtype is QuantDType.INT8


def test_from_toml_base_is_updated_not_replaced(tmp_path):
    base = CompileConfig(fidelity_samples=2, quantize_classifier=True)
    config = from_toml(_write(tmp_path, "[activation]\nsymmetric = true\n"), base)
    assert config.fidelity_samples == 2 and config.quantize_classifier is True
    assert config.activation.symmetric is True
    assert config.weight == base.weight


def test_from_toml_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        from_toml(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        from_toml(_write(tmp_path, "op_types = [\n"))


# ---------------------------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize("recipe, key", [
    ("opt_types = ['Conv']\n", "opt_types"),
    ("[activation]\nsymetric = true\n", "symetric"),
    ("[weight]\ngranularty = 'channel'\n", "granularty"),
    ("[[overrides]]\npattern = 'x'\nskipp = true\n", "skipp"),
    ("[[overrides]]\npattern = 'x'\n[overrides.activation]\nmethd = 'minmax'\n", "methd"),
    ("[[overrides]]\npattern = 'x'\n[overrides.weight]\nbits = 8\n", "bits"),
    ("[calibration]\nsamples = 8\n", "samples"),
    ("[calibration.image]\nresize = [224, 224]\n", "resize"),
    ("[smoothquant]\nalfa = 0.5\n", "alfa"),
])
def test_unknown_keys_are_errors_naming_the_key(tmp_path, recipe, key):
    with pytest.raises(ConfigError) as info:
        from_toml(_write(tmp_path, recipe))
    assert key in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("recipe, fragment", [
    ("[activation]\ndtype = 'int7'\n", "activation.dtype"),
    ("[activation]\nmethod = 'kl'\n", "activation.method"),
    ("[weight]\ngranularity = 'row'\n", "weight.granularity"),
    ("target = 'tpu'\n", "target"),
    ("[calibration.image]\nlayout = 'chw'\n", "layout"),
    ("[activation]\nsymmetric = 'yes'\n", "symmetric"),
    ("[activation]\npercentile = 'high'\n", "percentile"),
    ("[weight]\naxis = 1.5\n", "axis"),
    ("quantize_classifier = 1\n", "quantize_classifier"),
    ("fidelity_samples = -1\n", "fidelity_samples"),
    ("[calibration]\nnum_samples = 0\n", "num_samples"),
    ("[calibration]\nbatch_size = 0\n", "batch_size"),
    ("[calibration]\nmemory_budget_mb = 0\n", "memory_budget_mb"),
    ("[calibration]\nnum_samples = 'all'\n", "num_samples"),
    ("exclude = ['conv[']\n", "conv["),
    ("[[overrides]]\npattern = '('\n", "("),
    ("[[overrides]]\nskip = true\n", "pattern"),
    ("overrides = ['x']\n", "overrides"),
    ("activation = 'int8'\n", "activation"),
    ("op_types = [1, 2]\n", "op_types"),
    ("[calibration.image]\nsize = [0, 224]\n", "size"),
    ("[calibration.image]\nstd = [0.0, 1.0, 1.0]\n", "std"),
    ("[calibration.image]\nmean = [0.5, 0.5]\n", "mean"),
])
def test_bad_values_are_config_errors(tmp_path, recipe, fragment):
    with pytest.raises(ConfigError) as info:
        from_toml(_write(tmp_path, recipe))
    assert fragment in str(info.value)


@pytest.mark.parametrize("recipe", ["[calibration.image]\nsize = 224\n", "[calibration.image]\nmean = 0.5\n"])
def test_scalar_image_option_is_config_error(tmp_path, recipe):
    """`size = 224` (not an array) is a ConfigError, not a TypeError from iterating an int."""
    with pytest.raises(ConfigError, match="calibration.image"):
        from_toml(_write(tmp_path, recipe))


def test_override_spec_not_a_table_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="overrides"):
        from_toml(_write(tmp_path, "[[overrides]]\npattern = 'x'\nactivation = 3\n"))


# ---------------------------------------------------------------------------------------------- combinations


def test_block_size_without_block_granularity():
    with pytest.raises(ConfigError, match="block_size"):
        QuantSpec(granularity=Granularity.CHANNEL, block_size=32)


@pytest.mark.parametrize("block_size", [None, 8, 48])
def test_block_granularity_needs_power_of_two_block_size(block_size):
    with pytest.raises(ConfigError, match="block"):
        QuantSpec(granularity=Granularity.BLOCK, block_size=block_size)


def test_blocked_weights_rejected_for_static_int8():
    spec = QuantSpec(dtype=QuantDType.INT8, symmetric=True, granularity=Granularity.BLOCK, block_size=32)
    with pytest.raises(ConfigError, match="weight-only"):
        CompileConfig(weight=spec)


def test_block_size_without_block_granularity_in_toml(tmp_path):
    with pytest.raises(ConfigError, match="block_size"):
        from_toml(_write(tmp_path, "[weight]\nblock_size = 32\n"))


def test_empty_op_types():
    with pytest.raises(ConfigError, match="empty"):
        CompileConfig(op_types=())


def test_empty_op_types_in_toml(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        from_toml(_write(tmp_path, "op_types = []\n"))


def test_unknown_op_type():
    with pytest.raises(ConfigError, match="Softmax"):
        CompileConfig(op_types=("Conv", "Softmax"))


@pytest.mark.parametrize("percentile", [0.0, -1.0, 100.5])
def test_percentile_out_of_range(percentile):
    with pytest.raises(ConfigError, match="percentile"):
        QuantSpec(percentile=percentile)


def test_percentile_100_is_allowed():
    assert QuantSpec(percentile=100.0).percentile == 100.0


def test_percentile_zero_in_toml(tmp_path):
    with pytest.raises(ConfigError, match="percentile"):
        from_toml(_write(tmp_path, "[activation]\nmethod = 'percentile'\npercentile = 0\n"))


@pytest.mark.parametrize("dtype", [QuantDType.INT4, QuantDType.UINT4])
def test_int4_weights_rejected(dtype):
    with pytest.raises(ConfigError, match="4-bit"):
        CompileConfig(weight=QuantSpec(dtype=dtype, symmetric=True, granularity=Granularity.CHANNEL))


def test_int4_weights_in_toml(tmp_path):
    with pytest.raises(ConfigError, match="4-bit"):
        from_toml(_write(tmp_path, "[weight]\ndtype = 'int4'\n"))


def test_weight_dtype_must_be_set(tmp_path):
    with pytest.raises(ConfigError, match="weight dtype"):
        from_toml(_write(tmp_path, "[weight]\ndtype = 'auto'\n"))


def test_activation_combinations():
    with pytest.raises(ConfigError, match="per tensor"):
        CompileConfig(activation=QuantSpec(granularity=Granularity.CHANNEL))
    with pytest.raises(ConfigError, match="int4"):
        CompileConfig(activation=QuantSpec(dtype=QuantDType.INT4))
    assert CompileConfig(activation=QuantSpec(dtype=QuantDType.UINT16)).activation.dtype is QuantDType.UINT16


# ---------------------------------------------------------------------------------------------- to_json


def _drop_none(value):
    """TOML has no null: a recipe written from the JSON leaves the None entries out."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def test_to_json_writes_enum_values():
    config = CompileConfig(target=Target.CPU,
                           activation=QuantSpec(dtype=QuantDType.UINT8, method=CalibrationMethod.ENTROPY),
                           calibration=CalibrationConfig(image=ImageOptions(layout=ImageLayout.NHWC)))
    data = json.loads(json.dumps(config.to_json()))
    assert data["target"] == "cpu"
    assert data["activation"]["dtype"] == "uint8"
    assert data["activation"]["method"] == "entropy"
    assert data["activation"]["granularity"] == "tensor"
    assert data["weight"]["dtype"] == "int8"
    assert data["weight"]["granularity"] == "channel"
    assert data["calibration"]["image"]["layout"] == "nhwc"
    assert data["op_types"] == list(DEFAULT_OP_TYPES)
    # every enum value maps back to the same member
    assert Target(data["target"]) is Target.CPU
    assert QuantDType(data["activation"]["dtype"]) is QuantDType.UINT8
    assert CalibrationMethod(data["activation"]["method"]) is CalibrationMethod.ENTROPY
    assert Granularity(data["weight"]["granularity"]) is Granularity.CHANNEL
    assert ImageLayout(data["calibration"]["image"]["layout"]) is ImageLayout.NHWC


def test_to_json_round_trips_through_config_from_mapping(tmp_path):
    config = from_toml(_write(tmp_path, FULL_RECIPE))
    data = _drop_none(json.loads(json.dumps(config.to_json())))
    # the mapping schema takes lists where the dataclasses hold tuples
    assert config_from_mapping(data) == config
    default = CompileConfig()
    assert config_from_mapping(_drop_none(json.loads(json.dumps(default.to_json())))) == default
