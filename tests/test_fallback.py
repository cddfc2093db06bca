"""Accuracy-budgeted fallback (qcompile/fallback.py), the re-emitter (qcompile/emitter.py), eval data loading
(qcompile/evaluation.py) and the budget flags of the CLI: the node built to be sensitive is the one that falls
back, the budget then holds on the eval data, the node is really float in ORT, statistics are reused, and
impossible or inconsistent budgets are one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from qcompile import compile_model
from qcompile.api import model_input_specs
from qcompile.cli import main
from qcompile.config import (AccuracyBudget, AnalysisConfig, ClassifierConfig, CompileConfig, LayerAnalysis,
                             config_from_mapping)
from qcompile.emitter import Emitter, StatisticsRecorder, keep_float_config
from qcompile.errors import AccuracyBudgetError, CalibrationDataError, ConfigError
from qcompile.accuracy.budget import budget_violations
from qcompile.data import load_eval_data
from qcompile.accuracy.fidelity import Fidelity, compare_outputs, run_outputs
from qcompile.numerics.metrics import relative_error_from_power as relative_error
from qcompile.runtime_ext.target import resolve_profile
from tests._analysis_models import SENSITIVE_NODE, outlier_cnn, outlier_samples

NO_LAYERS = AnalysisConfig(layers=LayerAnalysis.NONE)
# the selection rule's float classifier: the fallback search over the layers it quantises is what is tested
RULE = ClassifierConfig(measure=False)


def _cosine_on(model: onnx.ModelProto, reference: onnx.ModelProto, items) -> float:
    _, ref = run_outputs(reference, items)
    _, out = run_outputs(model, items)
    return compare_outputs(ref, out).cosine


def test_the_sensitive_node_falls_back_and_the_budget_then_holds():
    model, calib, eval_items = outlier_cnn(), outlier_samples(16, 1), outlier_samples(24, 2)
    baseline = compile_model(model, calib, CompileConfig(classifier=RULE, analysis=NO_LAYERS))
    without = compile_model(model, calib, CompileConfig(classifier=RULE, exclude=(SENSITIVE_NODE,), analysis=NO_LAYERS))
    before, after = _cosine_on(baseline.model, model, eval_items), _cosine_on(without.model, model, eval_items)
    assert after > before                                   # the model is built so that this node matters
    budget = (before + after) / 2

    result = compile_model(model, calib, CompileConfig(classifier=RULE, accuracy_budget=AccuracyBudget(min_cosine=budget)),
                           eval_data=eval_items)
    data = result.report.data
    fallback = data["fallback"]
    assert [n["name"] for n in fallback["nodes"]] == [SENSITIVE_NODE]
    assert fallback["nodes"][0]["sensitivity_rank"] == 1
    assert fallback["before"]["cosine_mean"] == pytest.approx(before, abs=1e-6)
    assert fallback["after"]["cosine_mean"] >= budget > fallback["before"]["cosine_mean"]
    assert fallback["eval"] == {"source": fallback["eval"]["source"], "items": 24, "held_out": True}
    assert [t["fallback_nodes"] for t in fallback["trials"]] == [0, 1]          # binary search on [0, 3]
    assert [t["passed"] for t in fallback["trials"]] == [False, True]
    assert fallback["size"]["cost_bytes"] == fallback["size"]["after_bytes"] - fallback["size"]["before_bytes"] > 0
    assert fallback["latency"]["fp32_ms"] > 0 and fallback["latency"]["after_ms"] > 0
    # the report and the model agree: the node is float, its decision says why, the config reproduces it
    node = next(n for n in data["nodes"] if n["name"] == SENSITIVE_NODE)
    assert node["status"] == "skipped" and "accuracy budget" in node["reason"]
    assert data["summary"]["quantized_nodes"] == 2
    assert SENSITIVE_NODE in data["config"]["exclude"]
    assert all("output_sqnr_db_after" in e for e in data["layers"]["nodes"])
    assert any(p["step"] == "fallback" for p in data["passes"])
    assert _cosine_on(result.model, model, eval_items) == pytest.approx(fallback["after"]["cosine_mean"], abs=1e-9)
    conv = next(n for n in result.model.graph.node if n.name == SENSITIVE_NODE)
    assert conv.input[1] == "wb"                            # the float weight, not a DequantizeLinear output


def test_a_budget_already_met_keeps_every_node_quantised():
    model, calib = outlier_cnn(), outlier_samples(8, 1)
    result = compile_model(model, calib, CompileConfig(classifier=RULE, accuracy_budget=AccuracyBudget(min_cosine=-1.0,
                                                                                      eval_samples=5)))
    fallback = result.report.data["fallback"]
    assert fallback["nodes"] == [] and len(fallback["trials"]) == 1 and fallback["trials"][0]["passed"]
    assert fallback["eval"]["items"] == 5 and fallback["eval"]["held_out"] is False
    assert any("not held-out" in w for w in result.report.data["warnings"])
    assert result.report.data["summary"]["quantized_nodes"] == 3


def test_the_metric_gets_every_eval_output_and_bounds_the_search():
    model, calib, eval_items = outlier_cnn(), outlier_samples(8, 1), outlier_samples(6, 3)
    calls = []

    def agreement(reference, quantized):
        calls.append((len(reference), len(quantized), sorted(reference[0])))
        return float(np.mean([np.argmax(r["logits"]) == np.argmax(q["logits"]) for r, q in zip(reference, quantized)]))

    result = compile_model(model, calib, CompileConfig(classifier=RULE, accuracy_budget=AccuracyBudget(min_metric=0.5)),
                           eval_data=eval_items, metric=agreement)
    assert calls and all(c == (6, 6, ["logits"]) for c in calls)
    assert result.report.data["fallback"]["after"]["metric"] >= 0.5


def test_an_unreachable_budget_is_an_error():
    with pytest.raises(AccuracyBudgetError, match="cannot be met even with all 3"):
        compile_model(outlier_cnn(), outlier_samples(8, 1),
                      CompileConfig(classifier=RULE, accuracy_budget=AccuracyBudget(min_metric=1.0)), metric=lambda r, q: 0.0)


@pytest.mark.parametrize("kwargs, config, message", [
    ({"metric": lambda r, q: 1.0}, CompileConfig(classifier=RULE), "used by an accuracy budget"),
    ({}, CompileConfig(classifier=RULE, accuracy_budget=AccuracyBudget(min_metric=0.5)), "needs a metric function"),
])
def test_inconsistent_budget_arguments_are_config_errors(kwargs, config, message):
    with pytest.raises(ConfigError, match=message):
        compile_model(outlier_cnn(), outlier_samples(4, 1), config, **kwargs)


def test_top1_budget_needs_logits():
    weight = numpy_helper.from_array(np.full((2, 3, 1, 1), 0.5, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": np.random.default_rng(i).uniform(0, 1, (1, 3, 4, 4)).astype(np.float32)} for i in range(4)]
    with pytest.raises(ConfigError, match="needs a class-score"):
        compile_model(model, feeds, CompileConfig(classifier=RULE, accuracy_budget=AccuracyBudget(min_top1_agreement=0.9)))


def test_budget_violations():
    fidelity = Fidelity(outputs={"a": {"cosine_mean": 0.99, "relative_error": 0.1, "top1_agreement": 0.9},
                                 "b": {"cosine_mean": 0.995, "relative_error": 0.05}}, metric=0.7)
    assert budget_violations(AccuracyBudget(min_cosine=0.99, max_error=0.1, min_top1_agreement=0.9,
                                            min_metric=0.7), fidelity) == []
    missed = budget_violations(AccuracyBudget(min_cosine=0.991, max_error=0.09, min_top1_agreement=0.95,
                                              min_metric=0.8), fidelity)
    assert len(missed) == 4 and missed[0].startswith("cosine 0.99000 <")     # the worst output decides


def test_relative_error():
    assert relative_error(4.0, 1.0) == pytest.approx(0.5)
    assert relative_error(0.0, 0.0) == 0.0 and math.isinf(relative_error(0.0, 1.0))


@pytest.mark.parametrize("value", [{}, {"min_cosine": 2.0}, {"max_error": 0.0}, {"min_top1_agreement": 1.5},
                                   {"min_cosine": 0.9, "eval_samples": 0}])
def test_invalid_budgets(value):
    with pytest.raises(ConfigError):
        AccuracyBudget(**value)


def test_budget_and_analysis_from_toml_mapping():
    config = config_from_mapping({"accuracy_budget": {"min_cosine": 0.99, "eval_samples": 50},
                                  "analysis": {"layers": "sensitivity", "samples": 4}})
    assert config.accuracy_budget == AccuracyBudget(min_cosine=0.99, eval_samples=50)
    assert config.analysis == AnalysisConfig(layers=LayerAnalysis.SENSITIVITY, samples=4)
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_mapping({"accuracy_budget": {"min_cosine": 0.99, "cosine": 1}})
    with pytest.raises(ConfigError):
        config_from_mapping({"analysis": {"layers": "everything"}})


def test_emitter_reuses_statistics_and_excludes_by_exact_name():
    model, calib = outlier_cnn(), outlier_samples(8, 1)
    from qcompile.calibrators.collector import collect_statistics
    from qcompile.data import open_calibration_source
    import onnx_graphsurgeon as gs
    source = open_calibration_source(calib, model_input_specs(model))
    calls = []

    def collect(graph, requests):
        calls.append(len(requests))
        return collect_statistics(graph, requests, source)

    recorder = StatisticsRecorder(reuse=True)
    config = CompileConfig(classifier=RULE)
    emitter = Emitter(model, config, resolve_profile(config.target), recorder.wrap(collect),
                      lambda g, _m: gs.export_onnx(g.cleanup().toposort()))
    first = emitter.emit()
    second = emitter.emit(keep_float=[SENSITIVE_NODE])
    assert len(calls) == 1 and recorder.reused > 0
    assert recorder.last_graph is not None
    assert {n for n, d in first.ctx.decisions.items() if d.status.value == "quantized"} == {"conv_a", "conv_b",
                                                                                          "conv_c"}
    assert second.ctx.decisions[SENSITIVE_NODE].status.value == "skipped"
    assert keep_float_config(config, ["a.b(1)"]).exclude == (r"a\.b\(1\)",)


def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_eval_data_from_npz_folder_and_iterable(tmp_path):
    specs = model_input_specs(outlier_cnn())
    x = np.random.default_rng(0).uniform(0, 1, (5, 4, 8, 8)).astype(np.float32)
    data = load_eval_data(_write_npz(tmp_path / "eval.npz", input=x, labels=np.arange(5)), specs, 3)
    assert len(data.items) == 3 and data.held_out
    np.testing.assert_array_equal(data.items[1]["input"], x[1:2])
    renamed = load_eval_data(_write_npz(tmp_path / "renamed.npz", images=x, labels=np.arange(5)), specs, 10)
    assert len(renamed.items) == 5 and "images" in renamed.description
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(4):
        _write_npz(folder / f"{i}.npz", input=x[i:i + 1])
    assert len(load_eval_data(folder, specs, 2).items) == 2
    assert len(load_eval_data(outlier_samples(3, 0), specs, 10).items) == 3
    with pytest.raises(CalibrationDataError, match="no array for input"):
        load_eval_data(_write_npz(tmp_path / "bad.npz", a=x, b=x), specs, 3)
    (tmp_path / "eval.txt").write_text("x")
    with pytest.raises(CalibrationDataError, match="folder or an .npz"):
        load_eval_data(tmp_path / "eval.txt", specs, 3)


def test_cli_budget_flags(tmp_path):
    model_path = tmp_path / "outlier.onnx"
    onnx.save(outlier_cnn(), str(model_path))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feed in enumerate(outlier_samples(8, 1)):
        np.savez(calib / f"{i:03d}.npz", **feed)
    eval_npz = _write_npz(tmp_path / "eval.npz", input=np.concatenate([f["input"] for f in outlier_samples(12, 2)]))
    runner = CliRunner()
    result = runner.invoke(main, [str(model_path), "--calib", str(calib), "--eval-data", str(eval_npz),
                                  "--min-cosine", "0.9999", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "accuracy budget met on 12 eval item(s): 1 node(s) fell back" in result.output
    report = json.loads((tmp_path / "outlier.qdq.report.json").read_text())
    assert report["fallback"]["nodes"][0]["name"] == SENSITIVE_NODE
    assert report["config"]["accuracy_budget"]["min_cosine"] == 0.9999

    alone = runner.invoke(main, [str(model_path), "--calib", str(calib), "-o", str(tmp_path / "e.onnx"),
                                 "--no-progress", "--eval-data", str(eval_npz)])   # no budget: fidelity only
    assert alone.exit_code == 0 and "on 8 held-out items" in alone.output, alone.output
    fidelity = json.loads((tmp_path / "e.report.json").read_text())["fidelity"]
    assert fidelity["held_out"] is True and fidelity["items"] == 8 and "eval.npz" in fidelity["source"]
    for args, message in ((["--eval-samples", "4"], "--eval-samples needs a budget"),
                          (["--min-cosine", "3"], "min_cosine must be in")):
        failed = runner.invoke(main, [str(model_path), "--calib", str(calib), "-o", str(tmp_path / "x.onnx"),
                                      "--no-progress", *args])
        assert failed.exit_code == 2 and message in failed.output, failed.output
        assert not (tmp_path / "x.onnx").exists()


def test_models_over_the_in_memory_limit_skip_the_analysis(monkeypatch):
    # stands in for a > 2 GB model: no copy of the graph is kept, the analysis says why it did not run
    import qcompile.emitter
    monkeypatch.setattr(qcompile.emitter, "SERIALISABLE_BYTES", 1000)
    model, calib = outlier_cnn(), outlier_samples(4, 1)
    result = compile_model(model, calib)
    assert result.report.data["layers"] is None
    assert "per-layer analysis skipped: the model is over 2 GB" in result.report.data["warnings"]
    from qcompile.errors import UnsupportedModelError
    with pytest.raises(UnsupportedModelError, match="under 2 GB"):
        compile_model(model, calib, CompileConfig(classifier=RULE, accuracy_budget=AccuracyBudget(min_cosine=0.9)))
