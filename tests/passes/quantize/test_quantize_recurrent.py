"""QuantizeRecurrentPass: int8 LSTM/GRU/RNN weights per gate row — the rounding bound (hypothesis), the emitted
forms (DequantizeLinear [+ Reshape], com.microsoft DynamicQuantizeLSTM), their numbers against ORT's float kernel
on the dequantised weights (exact) and against FP32 (tolerance), the form rule, and what stays float."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from qcompile.api import compile_model
from qcompile.cli import main
from qcompile.config import CompileConfig, Preset, Target
from qcompile.graph.scopes import proto_graphs
from qcompile.passes.quantize.quantize_recurrent import (DYNAMIC_MIN_HIDDEN, GATES, RecurrentForm, choose_form,
                                                         dequantize_rows, pair_limited_rows, quantize_rows)
from qcompile.tools.inspect_model import inspect_model
from qcompile.runtime_ext.target import resolve_profile
from models.generate import control_flow_samples, nested_if_lstm_model
from tests.passes.ort_reference import run_unoptimized

STEPS, INPUTS = 6, 8


@given(weight=arrays(np.float32, st.tuples(st.integers(1, 2), st.integers(1, 12), st.integers(1, 9)),
                     elements=st.floats(-20, 20, allow_nan=False, width=32)))
@settings(max_examples=80, deadline=None)
def test_rows_round_to_within_half_a_step(weight):
    codes, scale = quantize_rows(weight)
    assert codes.dtype == np.int8 and codes.shape == weight.shape and scale.shape == weight.shape[:2]
    assert np.abs(codes.astype(int)).max(initial=0) <= 127
    error = np.abs(dequantize_rows(codes, scale) - weight)
    assert np.all(error <= scale[..., None] / 2 * (1 + 1e-5) + 1e-6)
    normal = np.abs(weight).max(axis=-1) >= 127 * np.finfo(np.float32).tiny   # below: the scale floor holds
    assert np.all(np.abs(codes).max(axis=-1)[normal] == 127)       # each row's largest weight is ±127


def _recurrent_model(op: str, hidden: int, directions: int = 1, seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """x [T, 1, 8] -> op (random weights, PyTorch's uniform ±1/sqrt(H) init) -> Y; returns (model, weights)."""
    rng = np.random.default_rng(seed)
    gates, bound = GATES[op], 1.0 / math.sqrt(hidden)
    weights = {"W": rng.uniform(-bound, bound, (directions, gates * hidden, INPUTS)),
               "R": rng.uniform(-bound, bound, (directions, gates * hidden, hidden)),
               "B": rng.uniform(-bound, bound, (directions, 2 * gates * hidden))}
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if directions == 2 else "forward"}
    node = helper.make_node(op, ["x", "W", "R", "B"], ["y"], name=f"{op.lower()}0", **attrs)
    graph = helper.make_graph([node], "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, 1, INPUTS])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [STEPS, directions, 1, hidden])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), weights


def _samples(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((STEPS, 1, INPUTS)).astype(np.float32)} for _ in range(n)]


def _with_weights(model: onnx.ModelProto, replacements: dict[str, np.ndarray]) -> onnx.ModelProto:
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    for init in copy.graph.initializer:
        if init.name in replacements:
            init.CopyFrom(numpy_helper.from_array(replacements[init.name], init.name))
    return copy


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("op,directions", [("LSTM", 1), ("LSTM", 2), ("GRU", 1), ("GRU", 2), ("RNN", 2)])
def test_dequantize_form_is_the_float_kernel_on_rounded_weights(op, directions):
    model, weights = _recurrent_model(op, hidden=8, directions=directions)
    result = compile_model(model, _samples(4), CompileConfig())
    graph = result.model.graph
    ops = [n.op_type for n in graph.node]
    assert ops.count(op) == 1 and ops.count("DequantizeLinear") == 2
    assert ops.count("Reshape") == (2 if directions == 2 else 0)       # [D·G·H, K] rows back to [D, G·H, K]
    codes = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.data_type == TensorProto.INT8}
    assert sum(c.size for c in codes.values()) == weights["W"].size + weights["R"].size + 2 * directions * GATES[op] * 8
    rounded = _with_weights(model, {k: dequantize_rows(*quantize_rows(weights[k])) for k in ("W", "R")})
    entry = next(n for n in result.report.data["nodes"] if n["name"] == f"{op.lower()}0")
    assert entry["status"] == "quantized" and entry["form"] == "dequantize_linear"
    for feed in _samples(3, seed=7):
        got = run_unoptimized(result.model, feed)[0]
        np.testing.assert_allclose(got, run_unoptimized(rounded, feed)[0], atol=2e-6)   # same math, exactly
        # 8-bit weights (step max|row|/127): the outputs stay within 2 % of FP32
        assert _relative_error(got, run_unoptimized(model, feed)[0]) < 0.02


def test_large_lstm_becomes_dynamic_quantize_lstm_on_the_cpu():
    hidden = DYNAMIC_MIN_HIDDEN
    model, weights = _recurrent_model("LSTM", hidden=hidden, directions=2)
    result = compile_model(model, _samples(4), CompileConfig())
    graph = result.model.graph
    (node,) = [n for n in graph.node if n.op_type == "DynamicQuantizeLSTM"]
    assert node.domain == "com.microsoft" and node.name == "lstm0"
    assert not [n for n in graph.node if n.op_type in ("LSTM", "DequantizeLinear")]
    assert any(o.domain == "com.microsoft" for o in result.model.opset_import)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    entry = next(n for n in result.report.data["nodes"] if n["name"] == "lstm0")
    # limited code pairs exactly where this host's u8s8 GEMM saturates (x86 without VNNI)
    assert entry["pair_limited"] == resolve_profile(Target.CPU).saturating_pair_sums and not entry["reduce_range"]
    codes, scale = quantize_rows(weights["W"])
    if entry["pair_limited"]:
        codes, scale = pair_limited_rows(weights["W"], scale)
        pairs = np.abs(codes.astype(np.int32).reshape(*codes.shape[:-1], -1, 2))
        same_sign = (codes.reshape(pairs.shape) > 0).all(-1) | (codes.reshape(pairs.shape) < 0).all(-1)
        assert (pairs.sum(-1)[same_sign] <= 128).all()
    np.testing.assert_array_equal(inits[node.input[1]], codes.transpose(0, 2, 1))   # W_qᵀ [D, I, 4H]
    np.testing.assert_array_equal(inits[node.input[8]], scale)                      # s_W [D, 4H]
    assert not inits[node.input[9]].any()                                            # zero points 0
    assert entry["op_type"] == "LSTM" and entry["form"] == "dynamic_quantize"
    assert entry["ort_kernel"] == "DynamicQuantizeLSTM" and entry["fused"]
    for feed in _samples(3, seed=7):
        # x and h_t quantised per tensor to 8 bits at run time as well: within 3 % of FP32 (measured ~1 %)
        assert _relative_error(run_unoptimized(result.model, feed)[0], run_unoptimized(model, feed)[0]) < 0.03


@given(st.integers(1, 127), st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_row_codes_stay_within_the_asked_range_and_round_to_half_a_step(q_max, seed):
    weight = np.random.default_rng(seed).normal(size=(2, 8, 5)).astype(np.float32)
    codes, scale = quantize_rows(weight, q_max)
    assert np.abs(codes.astype(np.int32)).max(axis=-1).min() == q_max        # every row's extreme hits the grid end
    assert np.all(np.abs(dequantize_rows(codes, scale) - weight) <= scale[..., None] / 2 * (1 + 1e-5))


def _lstm_node(hidden: int, layout: int = 0) -> gs.Node:
    r = gs.Constant("R", np.zeros((1, 4 * hidden, hidden), np.float32))
    return gs.Node("LSTM", attrs={"hidden_size": hidden, "layout": layout},
                   inputs=[gs.Variable("x"), gs.Constant("W", np.zeros((1, 4 * hidden, 8), np.float32)), r])


def test_form_rule():
    dynamic, dq = RecurrentForm.DYNAMIC_QUANTIZE, RecurrentForm.DEQUANTIZE_LINEAR
    assert choose_form(_lstm_node(DYNAMIC_MIN_HIDDEN), Target.CPU)[0] is dynamic
    assert choose_form(_lstm_node(DYNAMIC_MIN_HIDDEN - 1), Target.CPU)[0] is dq
    assert choose_form(_lstm_node(DYNAMIC_MIN_HIDDEN, layout=1), Target.CPU)[0] is dq
    for target in (Target.CUDA, Target.TENSORRT):
        assert choose_form(_lstm_node(512), target)[0] is dq
    gru = _lstm_node(512)
    gru.op = "GRU"
    assert choose_form(gru, Target.CPU) == (dq, "ORT has no integer GRU kernel")


def test_excluded_and_unlisted_recurrent_nodes_stay_float_with_a_reason():
    model, _ = _recurrent_model("GRU", hidden=8)
    for config, reason in ((CompileConfig(exclude=("gru0",)), "excluded by --exclude"),
                           (CompileConfig(op_types=("Conv", "MatMul")), "not a compute op")):
        result = compile_model(model, _samples(2), config)
        assert not [n for n in result.model.graph.node if n.op_type == "DequantizeLinear"]
        entry = next(n for n in result.report.data["nodes"] if n["name"] == "gru0")
        assert entry["status"] == "skipped" and reason in entry["reason"]


def test_inspect_lists_recurrent_nodes_with_their_plan():
    model, _ = _recurrent_model("LSTM", hidden=DYNAMIC_MIN_HIDDEN, directions=2)
    (entry,) = [n for n in inspect_model(model)["nodes"] if n["name"] == "lstm0"]
    assert entry["plan"] == "quantize" and entry["op_type"] == "LSTM" and "dynamic_quantize" in entry["reason"]
    (entry,) = [n for n in inspect_model(model, CompileConfig(exclude=("lstm0",)))["nodes"] if n["name"] == "lstm0"]
    assert entry["plan"] == "float" and "excluded" in entry["reason"]


def test_recurrent_weights_in_nested_if_bodies_are_quantised():
    model = nested_if_lstm_model()
    result = compile_model(model, control_flow_samples("LSTM", 8), CompileConfig())
    recurrent = [n for n in result.report.data["nodes"] if n["op_type"] == "LSTM"]
    assert len(recurrent) == 2 and all(n["status"] == "quantized" for n in recurrent)
    bodies = list(proto_graphs(result.model.graph))[1:]
    in_bodies = [n for g in bodies for n in g.node if n.op_type == "LSTM"]   # hidden 8 and 4: the DQ form
    assert len(in_bodies) == 2
    produced = {o: n for g in bodies for n in g.node for o in n.output}
    for node in in_bodies:                       # W and R come from DequantizeLinear (through a Reshape: D = 2)
        for name in node.input[1:3]:
            producer = produced[name]
            if producer.op_type == "Reshape":
                producer = produced[producer.input[0]]
            assert producer.op_type == "DequantizeLinear"


def test_cli_accepts_recurrent_op_types(tmp_path):
    model, _ = _recurrent_model("LSTM", hidden=8)
    path = tmp_path / "lstm.onnx"
    path.write_bytes(model.SerializeToString())
    calib = tmp_path / "calib"
    calib.mkdir()
    for index, feed in enumerate(_samples(2)):
        np.savez(calib / f"{index}.npz", **feed)
    result = CliRunner().invoke(main, [str(path), "--calib", str(calib), "--no-progress", "--op-types", "Conv,LSTM"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "lstm.qdq.report.json").read_text())
    assert [n["status"] for n in report["nodes"] if n["name"] == "lstm0"] == ["quantized"]


@pytest.mark.parametrize("config", [CompileConfig(target=Target.CUDA), CompileConfig(target=Target.TENSORRT),
                                    CompileConfig(preset=Preset.W4A16)], ids=["cuda", "tensorrt", "w4a16-cpu"])
def test_other_targets_and_weight_only_presets_quantise_recurrent_weights(config):
    model, _ = _recurrent_model("LSTM", hidden=DYNAMIC_MIN_HIDDEN, directions=2)
    result = compile_model(model, _samples(4), config)
    (entry,) = [n for n in result.report.data["nodes"] if n["name"] == "lstm0"]
    expected = "dynamic_quantize" if config.target is Target.CPU else "dequantize_linear"
    assert entry["status"] == "quantized" and entry["form"] == expected
    for feed in _samples(2, seed=7):         # every emitted model runs on ORT's CPU EP (CUDA: float16 LSTM)
        assert _relative_error(run_unoptimized(result.model, feed)[0], run_unoptimized(model, feed)[0]) < 0.03
