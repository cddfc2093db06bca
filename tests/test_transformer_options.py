"""The transformer settings (SmoothQuant, outlier splitting, attention MatMuls, embeddings) through TOML and the
CLI: what they build, and the errors they raise."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qcompile.cli import main
from qcompile.config import CompileConfig, Granularity, SmoothScope, config_from_mapping, from_toml
from qcompile.errors import ConfigError


def test_toml_keys(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("""
quantize_activation_matmuls = true
[smoothquant]
scope = "all"
alpha = 0.6
op_alpha = { Gemm = "auto", MatMul = 0.8 }
auto_grid = [0.5, 0.75, 1.0]
sample_rows = 128
[outlier_split]
weights = true
expand_ratio = 0.05
[embedding]
granularity = "tensor"
min_elements = 1000
""")
    config = from_toml(recipe)
    sq = config.smoothquant
    assert sq.scope is SmoothScope.ALL and sq.alpha == 0.6 and sq.sample_rows == 128
    assert sq.alpha_for("Gemm") is None and sq.alpha_for("MatMul") == 0.8
    assert config.outlier_split.weights and not config.outlier_split.activations
    assert config.embedding.granularity is Granularity.TENSOR and config.embedding.enabled
    assert config.quantize_activation_matmuls
    # the report's JSON form ([op, alpha] pairs, None for auto) reads back
    pairs = json.loads(json.dumps(config.to_json()["smoothquant"]["op_alpha"]))
    assert config_from_mapping({"smoothquant": {"op_alpha": pairs}}).smoothquant.op_alpha == sq.op_alpha


def test_defaults():
    config = CompileConfig()
    assert config.smoothquant.scope is SmoothScope.TRANSFORMER and config.smoothquant.alpha is None
    assert not config.outlier_split.enabled and config.embedding.enabled
    assert not config.quantize_activation_matmuls


@pytest.mark.parametrize("mapping, message", [
    ({"smoothquant": {"alpha": 1.5}}, "[0, 1]"),
    ({"smoothquant": {"alpha": "half"}}, "'auto'"),
    ({"smoothquant": {"op_alpha": {"Conv": 0.5}}}, "not smoothable"),
    ({"smoothquant": {"scope": "everywhere"}}, "scope"),
    ({"smoothquant": {"sample_rows": 4}}, "sample_rows"),
    ({"smoothquant": {"alfa": 0.5}}, "alfa"),
    ({"outlier_split": {"expand_ratio": 0.0}}, "expand_ratio"),
    ({"outlier_split": {"weights": "yes"}}, "true or false"),
    ({"embedding": {"granularity": "block"}}, "per tensor or per channel"),
])
def test_invalid_settings_are_config_errors(mapping, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_mapping(mapping)


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_flags_reach_the_report(tiny_transformer_case, tmp_path):
    model, calib = tiny_transformer_case
    out = tmp_path / "out.onnx"
    result = _run(model, "--calib", calib, "-o", out, "--smoothquant", "0.5", "--split-outliers", "activations",
                  "--split-ratio", "0.05", "--quantize-attention", "--float-embeddings", "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_name("out.report.json").read_text())
    config = report["config"]
    assert config["smoothquant"]["scope"] == "all" and config["smoothquant"]["alpha"] == 0.5
    assert config["outlier_split"] == {"weights": False, "activations": True, "expand_ratio": 0.05}
    assert config["quantize_activation_matmuls"] is True and config["embedding"]["enabled"] is False
    kinds = {n["name"]: n for n in report["nodes"]}
    assert sum(1 for n in kinds.values() if n.get("reason") == "static int8, activation x activation") == 4
    assert sum(1 for n in kinds.values() if "outlier_split" in n) > 0


def test_cli_smoothquant_off_and_bad_value(tiny_transformer_case, tmp_path):
    model, calib = tiny_transformer_case
    out = tmp_path / "off.onnx"
    result = _run(model, "--calib", calib, "-o", out, "--smoothquant", "off", "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_name("off.report.json").read_text())
    assert not any("smoothquant" in n for n in report["nodes"])
    bad = _run(model, "--calib", calib, "-o", tmp_path / "bad.onnx", "--smoothquant", "lots")
    assert bad.exit_code == 2 and bad.output.startswith("error: --smoothquant")
    assert not (tmp_path / "bad.onnx").exists()
