"""Per-layer analysis (qcompile/sensitivity.py): the switchable graph computes FP32 with every switch off and
the Q/DQ graph with every switch on; one node's group on equals the model compiled with only that node
quantised; the SQNRs match numpy on exposed tensors; the node built to be sensitive ranks first; the
fake-quantisation and code histogram match ONNX Runtime / numpy."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from models.generate import read_calibration
from qcompile import compile_model
from qcompile.api import model_input_specs
from qcompile.calibrators.collector import collect_statistics
from qcompile.config import AnalysisConfig, ClassifierConfig, CompileConfig, LayerAnalysis
from qcompile.data import open_calibration_source
from qcompile.emitter import Emitter, StatisticsRecorder
from qcompile.pass_infra import NodeStatus
from qcompile.runtime_ext.session import GraphOptimization, make_session
from qcompile.runtime_ext.target import resolve_profile
from qcompile.accuracy.sensitivity import code_histogram, fake_quantize, ranking
from qcompile.accuracy.switchable import SwitchableModel
from qcompile.numerics.metrics import sqnr_db_from_power as sqnr_db
from tests._analysis_models import SENSITIVE_NODE, outlier_cnn, outlier_samples

ATOL = 1e-4     # float32 reassociation between graphs that compute the same values


def _export(graph: gs.Graph, _original: onnx.ModelProto) -> onnx.ModelProto:
    return gs.export_onnx(graph.cleanup().toposort())


def _emitter(model: onnx.ModelProto, calib) -> tuple[Emitter, StatisticsRecorder]:
    config = CompileConfig()
    source = open_calibration_source(calib, model_input_specs(model))
    recorder = StatisticsRecorder(reuse=True)
    emitter = Emitter(model, config, resolve_profile(config.target),
                      recorder.wrap(lambda g, r: collect_statistics(g, r, source)), _export)
    return emitter, recorder


def _switchable(model: onnx.ModelProto, calib):
    emitter, recorder = _emitter(model, calib)
    baseline = emitter.emit()
    names = [n for n, d in baseline.ctx.decisions.items() if d.status is NodeStatus.QUANTIZED]
    return SwitchableModel(recorder.last_graph, baseline.model, names, emitter.profile.fusable_activations), \
        emitter, baseline, names


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12))


@pytest.fixture
def tiny_cnn(tiny_cnn_case):
    model_path, calib_dir = tiny_cnn_case
    return onnx.load(str(model_path)), read_calibration(calib_dir)


def test_all_off_is_fp32_and_all_on_is_the_qdq_graph(tiny_cnn):
    model, calib = tiny_cnn
    switchable, _, baseline, names = _switchable(model, calib)
    assert [layer.name for layer in switchable.layers] == names and not switchable.unmeasured
    fp32 = make_session(model)
    simulated = make_session(baseline.model, optimization=GraphOptimization.DISABLED)
    for feed in calib[:4]:
        off = switchable.run(switchable.output_names, feed, ())["logits"]
        on = switchable.run(switchable.output_names, feed, switchable.switches)["logits"]
        assert _max_rel(fp32.run(None, feed)[0], off) < ATOL
        assert _max_rel(simulated.run(None, feed)[0], on) < ATOL
        assert _max_rel(off, on) > 10 * ATOL            # quantisation does change the output


def _single_node_runs(model: onnx.ModelProto, calib):
    """(layer, output of the switchable graph with its group on, output of the model compiled with only that
    node quantised, FP32 output) for each layer and the first two items."""
    switchable, emitter, _, names = _switchable(model, calib)
    fp32 = make_session(model)
    for layer in switchable.layers:
        alone = emitter.emit(keep_float=[n for n in names if n != layer.name])
        session = make_session(alone.model, optimization=GraphOptimization.DISABLED)
        for feed in calib[:2]:
            yield (layer, switchable.run(switchable.output_names, feed, layer.group)[switchable.output_names[0]],
                   session.run(None, feed)[0], fp32.run(None, feed)[0])


def test_one_group_equals_the_model_compiled_with_only_that_node_on_a_chain():
    for layer, switched, alone, _ in _single_node_runs(outlier_cnn(), outlier_samples(8, 1)):
        assert _max_rel(alone, switched) < ATOL, layer.name


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return copy


def test_sqnrs_match_numpy_and_the_sensitive_node_ranks_first():
    model, calib = outlier_cnn(), outlier_samples(12, 1)
    # the selection rule's float classifier: the analysis of the layers it quantises is what is checked here
    config = CompileConfig(analysis=AnalysisConfig(layers=LayerAnalysis.SENSITIVITY, samples=6),
                           classifier=ClassifierConfig(measure=False))
    result = compile_model(model, calib, config)
    layers = result.report.data["layers"]
    assert layers["items"] == 6 and layers["mode"] == "sensitivity"
    assert ranking(layers)[0] == SENSITIVE_NODE
    by_name = {e["name"]: e for e in layers["nodes"]}
    assert set(by_name) == set(result.report.quantized_nodes)

    # output SQNR of each layer: FP32 tensor vs the quantised graph's DQ of it, as float simulation
    outputs = {name: entry["output"] for name, entry in by_name.items()}
    fp32_names = {name: out[: -len("_dq")] for name, out in outputs.items()}       # x_dq is DQ(Q(x))
    fp32 = make_session(_with_outputs(model, list(fp32_names.values())))
    quantized = make_session(_with_outputs(result.model, list(outputs.values())),
                             optimization=GraphOptimization.DISABLED)
    signal = dict.fromkeys(outputs, 0.0)
    noise = dict.fromkeys(outputs, 0.0)
    for feed in calib[:6]:
        ref = dict(zip([o.name for o in fp32.get_outputs()], fp32.run(None, feed)))
        got = dict(zip([o.name for o in quantized.get_outputs()], quantized.run(None, feed)))
        for name in outputs:
            r, q = ref[fp32_names[name]].astype(np.float64), got[outputs[name]].astype(np.float64)
            signal[name] += float(np.sum(r * r))
            noise[name] += float(np.sum((r - q) ** 2))
    for name, entry in by_name.items():
        assert entry["output_sqnr_db"] == pytest.approx(10 * math.log10(signal[name] / noise[name]), abs=0.05)
    # the sensitive node is where the error enters: its output SQNR is far below its input's
    assert by_name[SENSITIVE_NODE]["output_sqnr_db"] < by_name["conv_a"]["output_sqnr_db"] - 20


def test_weight_sqnr_matches_numpy():
    model, calib = outlier_cnn(), outlier_samples(8, 1)
    result = compile_model(model, calib, CompileConfig())
    entry = next(e for e in result.report.data["layers"]["nodes"] if e["name"] == "conv_a")
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    original = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "wa")).astype(np.float64)
    dq = next(n for n in result.model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("wa"))
    scale = weights[dq.input[1]].reshape(-1, 1, 1, 1)
    values = weights[dq.input[0]].astype(np.float64) * scale
    expected = 10 * math.log10(np.sum(original ** 2) / np.sum((original - values) ** 2))
    assert entry["weight_sqnr_db"] == pytest.approx(expected, abs=0.01)


def test_default_is_sqnr_only_and_none_turns_it_off(tiny_cnn_case):
    model_path, calib_dir = tiny_cnn_case
    layers = compile_model(model_path, calib_dir).report.data["layers"]
    assert layers["mode"] == "sqnr" and layers["items"] == AnalysisConfig().samples
    assert layers["nodes"] and all(isinstance(e["output_sqnr_db"], float) for e in layers["nodes"])
    assert all("sensitivity" not in e for e in layers["nodes"])
    assert layers["histograms"] and all(sum(h["counts"]) + h["below"] + h["above"] > 0 for h in layers["histograms"])
    off = compile_model(model_path, calib_dir, CompileConfig(analysis=AnalysisConfig(layers=LayerAnalysis.NONE)))
    assert off.report.data["layers"] is None
    assert not any(p["step"] == "analyse" for p in off.report.data["passes"])


def _qdq_model(scale: float, zero_point: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"),
         numpy_helper.from_array(np.array(zero_point, np.uint8), "z")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1e-3, 10.0), zero_point=st.integers(0, 255), seed=st.integers(0, 2**32 - 1))
def test_fake_quantize_matches_onnxruntime_and_histogram_counts(scale, zero_point, seed):
    scale = float(np.float32(scale))
    x = np.random.default_rng(seed).normal(0, 150 * scale, 257).astype(np.float32)
    expected = make_session(_qdq_model(scale, zero_point)).run(None, {"x": x})[0]
    dequantized, codes = fake_quantize(x, scale, zero_point, 0, 255)
    np.testing.assert_array_equal(dequantized, expected)
    counts = code_histogram(codes, 0, 255)
    assert counts[-2] == np.sum(codes < 0) and counts[-1] == np.sum(codes > 255)
    assert counts.sum() == x.size and len(counts) == 256 + 2
    inside = codes[(codes >= 0) & (codes <= 255)].astype(int)
    np.testing.assert_array_equal(counts[:-2], np.bincount(inside, minlength=256))


def test_sqnr_db_edge_cases():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == "inf"
    assert sqnr_db(0.0, 0.0) is None
