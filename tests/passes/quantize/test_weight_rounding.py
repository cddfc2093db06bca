"""Learned weight rounding inside InsertQDQPass (passes/quantize/weight_rounding.py), through compile_model:
same graph structure as nearest rounding, codes within one level of nearest, per-layer error recorded in the
report and never above nearest, and the model's output error vs FP32 lower than with nearest rounding."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from models.generate import make_samples, tiny_cnn
from qcompile.api import compile_model
from qcompile.cli import main
from qcompile.cli.build import CompileFlags, build_config
from qcompile.config import ClassifierConfig, CompileConfig, RoundingConfig, WeightRounding, config_from_mapping
from qcompile.errors import ConfigError


def _config(method: WeightRounding, **rounding) -> CompileConfig:
    # the selection rule's classifier: both roundings compile the same nodes (its measured choice could differ)
    return CompileConfig(fidelity_samples=0, rounding=RoundingConfig(method=method, **rounding),
                         classifier=ClassifierConfig(measure=False))


@pytest.fixture(scope="module")
def compiled():
    model = tiny_cnn()
    calib = make_samples("tiny_cnn", 16)
    return model, {method: compile_model(model, calib, _config(method)) for method in WeightRounding}


def _run(model: onnx.ModelProto, feeds) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, feed)[0] for feed in feeds])


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8}


def test_same_structure_and_codes_within_one_level(compiled):
    _, results = compiled
    nearest, learned = results[WeightRounding.NEAREST].model, results[WeightRounding.LEARNED].model
    assert Counter(n.op_type for n in nearest.graph.node) == Counter(n.op_type for n in learned.graph.node)
    near_codes, learned_codes = _weights(nearest), _weights(learned)
    assert near_codes.keys() == learned_codes.keys() and near_codes
    changed = 0
    for name, codes in near_codes.items():
        diff = learned_codes[name].astype(np.int64) - codes
        assert np.abs(diff).max() <= 1, name
        changed += int(np.count_nonzero(diff))
    assert changed > 0


def test_report_records_per_layer_error(compiled):
    _, results = compiled
    nodes = results[WeightRounding.LEARNED].report.data["nodes"]
    details = [n for n in nodes if n.get("rounding") == "learned"]
    assert len(details) == 4          # the four Convs; the classifier Gemm stays float
    for detail in details:
        assert detail["rounding_mse_learned"] <= detail["rounding_mse_nearest"]
        assert detail["rounding_objective"] == "covariance"   # bias correction is on
    assert sum(d["rounding_mse_learned"] for d in details) < 0.9 * sum(d["rounding_mse_nearest"] for d in details)
    passes = {p["name"]: p["stats"] for p in results[WeightRounding.LEARNED].report.data["passes"]}
    assert passes["QuantizeAllGraphsPass"]["learned_rounding"] == 4


def test_output_error_vs_fp32_decreases(compiled):
    model, results = compiled
    held_out = make_samples("tiny_cnn", 32, seed=12345)
    reference = _run(model, held_out)
    error = {m: float(np.mean((_run(r.model, held_out) - reference) ** 2)) for m, r in results.items()}
    assert error[WeightRounding.LEARNED] < 0.95 * error[WeightRounding.NEAREST], error


def test_max_patch_declines_with_a_reason():
    result = compile_model(tiny_cnn(), make_samples("tiny_cnn", 4), _config(WeightRounding.LEARNED, max_patch=8))
    nodes = result.report.data["nodes"]
    reasons = [n.get("rounding", "") for n in nodes if n["op_type"] == "Conv"]
    assert reasons and all("max_patch 8" in r or r == "learned" for r in reasons)
    assert any("max_patch 8" in r for r in reasons)


def test_config_from_cli_and_toml():
    assert build_config(CompileFlags(weight_rounding=WeightRounding.NEAREST)).rounding.method is WeightRounding.NEAREST
    assert config_from_mapping({"rounding": {"method": "nearest", "max_sweeps": 2}}).rounding == RoundingConfig(
        method=WeightRounding.NEAREST, max_sweeps=2)
    with pytest.raises(ConfigError):
        config_from_mapping({"rounding": {"method": "stochastic"}})
    with pytest.raises(ConfigError, match="rows_per_batch"):
        RoundingConfig(rows_per_batch=1)


def test_cli_flag_reaches_the_report(tiny_cnn_case):
    model, calib = tiny_cnn_case
    report = model.with_name("nearest.json")
    result = CliRunner().invoke(main, [str(model), "--calib", str(calib), "--weight-rounding", "nearest",
                                       "-o", str(model.with_name("nearest.onnx")), "--report", str(report),
                                       "--no-progress", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["config"]["rounding"]["method"] == "nearest"
    assert not any(n.get("rounding") == "learned" for n in data["nodes"])
    bad = CliRunner().invoke(main, [str(model), "--calib", str(calib), "--weight-rounding", "stochastic"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
