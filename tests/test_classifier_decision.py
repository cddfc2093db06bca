"""The measured final-classifier decision (qcompile/accuracy/classifier.py): rule, report, node status."""

from __future__ import annotations

import pytest

from models.generate import if_subgraph_model, make_samples

from qcompile.accuracy.classifier import choose_classifier_precision, within_tolerance
from qcompile.api import compile_model
from qcompile.config import ClassifierConfig, CompileConfig
from qcompile.emitter import Emission
from qcompile.errors import CalibrationError, ConfigError
from qcompile.pass_infra import PassContext

SETTINGS = ClassifierConfig(measure=True)   # 1 dB, no agreement loss
MEASURED = CompileConfig(classifier=SETTINGS)


def _cost(drop, agreement=None):
    return {"sqnr_drop_db": drop, "top1_agreement_drop": agreement}


@pytest.mark.parametrize(("costs", "expected"), [
    ({"y": _cost(0.5)}, True), ({"y": _cost(1.0, 0.0)}, True), ({"y": _cost(-2.0, -0.1)}, True),
    ({"y": _cost(1.01)}, False), ({"y": _cost(0.1, 0.03)}, False), ({"y": _cost(None)}, False),
    ({"y": _cost(float("nan"))}, False), ({"a": _cost(0.2), "b": _cost(3.0)}, False)])
def test_tolerance_rule(costs, expected):
    assert within_tolerance(costs, SETTINGS) is expected


def test_bad_settings_are_config_errors():
    for kwargs in ({"max_sqnr_drop_db": -1.0}, {"max_agreement_drop": 2.0}, {"samples": 0}):
        with pytest.raises(ConfigError):
            ClassifierConfig(**kwargs)


def _classifier_status(result):
    section = result.report.data["classifier"]
    statuses = {n["name"]: n for n in result.report.data["nodes"]}
    return section, [statuses[name] for name in section["nodes"]]


def test_measured_compile_follows_the_rule(tiny_cnn_case):
    model, calib = tiny_cnn_case
    section, nodes = _classifier_status(compile_model(model, calib, MEASURED))
    # a quarter of the 16 calibration files is held out for fidelity; the measurement runs on the other 12
    assert section["nodes"] and section["samples"] == 12
    if within_tolerance(section["outputs"], SETTINGS):
        expected = "int8"
    elif "weight_only_outputs" in section and within_tolerance(section["weight_only_outputs"], SETTINGS):
        expected = "int8_weights"
    else:
        expected = "float"
    assert section["decision"] == expected
    assert all(n["status"] == ("skipped" if expected == "float" else "quantized") for n in nodes)
    assert all("measured" in n["reason"] for n in nodes)


def test_int8_weights_when_static_int8_costs_too_much(tiny_cnn_case):
    """A tolerance between the two measured drops: static int8 fails it, int8 weights with a float input
    pass, and that emission is kept: the Gemm's weight is an int8 DequantizeLinear, its input float."""
    model, calib = tiny_cnn_case
    first, _ = _classifier_status(compile_model(model, calib, CompileConfig(
        classifier=ClassifierConfig(max_sqnr_drop_db=0.0, max_agreement_drop=1.0))))
    static = next(iter(first["outputs"].values()))["sqnr_drop_db"]
    weights = next(iter(first["weight_only_outputs"].values()))["sqnr_drop_db"]
    assert weights < static            # the classifier's input quantisation is the larger part of its error
    between = ClassifierConfig(max_sqnr_drop_db=(static + weights) / 2, max_agreement_drop=1.0)
    result = compile_model(model, calib, CompileConfig(classifier=between))
    section, nodes = _classifier_status(result)
    assert section["decision"] == "int8_weights"
    assert [n["status"] for n in nodes] == ["quantized"] and nodes[0]["form"] == "int8_weights_float_input"
    graph = result.model.graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    producers = {o: n for n in graph.node for o in n.output}
    assert producers[gemm.input[1]].op_type == "DequantizeLinear"
    assert producers[gemm.input[0]].op_type != "DequantizeLinear"       # the input stays float
    assert result.report.data["summary"]["unfused_nodes"] == 0           # a float kernel by design


@pytest.mark.parametrize(("settings", "decision"), [
    (ClassifierConfig(measure=True, max_sqnr_drop_db=1e6, max_agreement_drop=1.0), "int8"),
    (ClassifierConfig(measure=True, max_sqnr_drop_db=0.0, max_agreement_drop=0.0), None)])
def test_tolerance_decides(tiny_cnn_case, settings, decision):
    model, calib = tiny_cnn_case
    section, nodes = _classifier_status(compile_model(model, calib, CompileConfig(classifier=settings)))
    drop = next(iter(section["outputs"].values()))["sqnr_drop_db"]
    assert section["decision"] == (decision or ("int8" if drop <= 0 else "float"))


def test_the_default_measures_it(tiny_cnn_case):
    model, calib = tiny_cnn_case
    section, _ = _classifier_status(compile_model(model, calib))
    assert section is not None and section["decision"] in ("int8", "int8_weights", "float")
    assert section["samples"] > 0 and section["outputs"]


def test_unmeasured_keeps_it_float_and_forced_quantises_it(tiny_cnn_case):
    model, calib = tiny_cnn_case
    result = compile_model(model, calib, CompileConfig(classifier=ClassifierConfig(measure=False)))
    assert result.report.data["classifier"] is None
    assert any(n["status"] == "skipped" and "final classifier" in n["reason"] for n in result.report.data["nodes"])
    forced = compile_model(model, calib, CompileConfig(quantize_classifier=True))
    assert forced.report.data["classifier"] is None
    assert not any("final classifier" in n["reason"] for n in forced.report.data["nodes"])


def _if_samples(count):
    return make_samples("if_subgraph_model", count)


def test_a_classifier_inside_an_if_branch_is_measured_too():
    """The measured nodes are those the selection rule keeps float, wherever they are (here: an If branch
    computing the logits, passes/quantize/quantize_subgraphs.py)."""
    result = compile_model(if_subgraph_model(), _if_samples(16), MEASURED)
    section = result.report.data["classifier"]
    assert section["nodes"] == ["then/MatMul_0"]
    status = {n["name"]: n for n in result.report.data["nodes"]}["then/MatMul_0"]["status"]
    assert status == ("quantized" if section["decision"] == "int8" else "skipped")


class _FailingEmitter:
    def emit(self):
        raise CalibrationError("tensor 'r1' on calibration data: calibration batch holds NaN or Inf values")


def test_a_classifier_that_cannot_be_calibrated_stays_float(tiny_cnn_case):
    """The int8 variant gathers the classifier's input range on top of the compile's; if that fails (NaN on
    a tensor only the classifier reads), the compile as the rule made it stands, with the reason reported."""
    model, calib = tiny_cnn_case
    baseline = compile_model(model, calib)
    emission = Emission(baseline.model, PassContext(config=CompileConfig(), target=None), (), CompileConfig(), ())
    choice = choose_classifier_precision(reference=baseline.model, kept_float=emission,
                                         int8_emitter=_FailingEmitter(), calibration=[], settings=SETTINGS)
    assert choice.emission is emission and choice.report["decision"] == "float"
    assert "NaN" in choice.report["reason"]


def test_no_classifier_kept_float_means_no_second_emission(tiny_cnn_case, monkeypatch):
    """Nothing for the measurement to decide (the Gemm excluded by name): no int8 re-emission is made."""
    import qcompile.api as api
    calls = []
    monkeypatch.setattr(api, "choose_classifier_precision", lambda **kw: calls.append(kw))
    model, calib = tiny_cnn_case
    result = compile_model(model, calib, CompileConfig(exclude=("Gemm_0",)))
    assert calls == [] and result.report.data["classifier"] is None
