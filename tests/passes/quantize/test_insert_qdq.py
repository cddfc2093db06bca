"""Tests for passes/insert_qdq.py through the public compile_model: where Q/DQ pairs land, weight/bias formats,
the classifier staying float, and data-movement ops inheriting their input's (scale, zero point)."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.api import compile_model
from qcompile.config import ClassifierConfig, CompileConfig


def _index(model: onnx.ModelProto):
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return producers, consumers, inits


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@pytest.fixture(scope="module")
def tiny_cnn_compiled():
    from models.generate import make_samples, tiny_cnn
    model = tiny_cnn()
    # the selection rule's float classifier (its measured precision: tests/test_classifier_decision.py)
    result = compile_model(model, make_samples("tiny_cnn", 8),
                           CompileConfig(fidelity_samples=2, classifier=ClassifierConfig(measure=False)))
    return model, result


def test_qdq_counts_on_tiny_cnn(tiny_cnn_compiled):
    _, result = tiny_cnn_compiled
    ops = Counter(n.op_type for n in result.model.graph.node)
    # 5 activation points: the graph input, the three Conv->(Relu|Clip) chain ends that feed the next Conv,
    # and the last Conv's output (it feeds the residual Add, not a fusable activation)
    assert ops["QuantizeLinear"] == 5
    # 5 activation DQs + 4 weight DQs + 4 bias DQs
    assert ops["DequantizeLinear"] == 13
    assert ops["Conv"] == 4 and ops["Gemm"] == 1
    assert "BatchNormalization" not in ops
    onnx.checker.check_model(result.model)


def test_conv_weights_int8_per_channel_and_int32_bias(tiny_cnn_compiled):
    _, result = tiny_cnn_compiled
    producers, _, inits = _index(result.model)
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 4
    for conv in convs:
        x_dq = producers[conv.input[0]]
        assert x_dq.op_type == "DequantizeLinear"
        assert producers[x_dq.input[0]].op_type == "QuantizeLinear"
        assert inits[x_dq.input[2]].dtype == np.uint8  # CPU profile: u8 activations

        w_dq = producers[conv.input[1]]
        assert w_dq.op_type == "DequantizeLinear"
        w_q = inits[w_dq.input[0]]
        assert w_q.dtype == np.int8
        assert _attr(w_dq, "axis") == 0
        out_channels = w_q.shape[0]
        assert inits[w_dq.input[1]].shape == (out_channels,)
        assert np.all(inits[w_dq.input[2]] == 0)  # symmetric weights
        assert np.all(np.abs(w_q.astype(np.int32)) <= 127)  # never the lone -128

        b_dq = producers[conv.input[2]]
        assert b_dq.op_type == "DequantizeLinear"
        b_q = inits[b_dq.input[0]]
        assert b_q.dtype == np.int32 and b_q.shape == (out_channels,)
        # bias scale = input scale * weight scale, zero point 0
        np.testing.assert_allclose(inits[b_dq.input[1]],
                                   inits[x_dq.input[1]] * inits[w_dq.input[1]], rtol=1e-6)
        assert np.all(inits[b_dq.input[2]] == 0)


def test_weights_dequantize_close_to_the_folded_fp32_weights(tiny_cnn_compiled):
    """Each dequantised weight is within one step (its channel's scale) of the FP32 weight: learned rounding,
    the default, picks floor or ceil (nearest would be within half a step, tests/passes/quantize/
    test_weight_rounding.py checks the codes against it). The BN-folded first conv is compared against
    W·γ/√(σ²+ε). On an x86 host without VNNI the codes of pairs limited against int16 saturation
    (passes/quantize/pair_sums.py) may move further: at most the count the report gives."""
    model, result = tiny_cnn_compiled
    limited = {n["name"]: n.get("pair_limited_codes", 0) for n in result.report.data["nodes"]}
    producers, _, inits = _index(result.model)
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    expected = {1: original["conv2.weight_0"], 2: original["res.conv1.weight_0"], 3: original["res.conv2.weight_0"]}
    k = original["bn1.scale_0"] / np.sqrt(original["bn1.var_0"] + 1e-5)
    expected[0] = original["conv1.weight_0"] * k[:, None, None, None]
    for i, conv in enumerate(convs):
        w_dq = producers[conv.input[1]]
        scale = inits[w_dq.input[1]].reshape(-1, 1, 1, 1)
        deq = inits[w_dq.input[0]].astype(np.float32) * scale
        beyond = int(np.count_nonzero(np.abs(deq - expected[i]) > scale * (1 + 1e-4) + 1e-7))
        assert beyond <= limited[conv.name], (i, beyond)


def test_classifier_gemm_stays_float(tiny_cnn_compiled):
    model, result = tiny_cnn_compiled
    producers, _, inits = _index(result.model)
    gemm = next(n for n in result.model.graph.node if n.op_type == "Gemm")
    for name in gemm.input:
        assert name not in producers or producers[name].op_type != "DequantizeLinear"
    assert inits[gemm.input[1]].dtype == np.float32
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(inits[gemm.input[1]], original["fc.weight_0"])
    nodes = {n["name"]: n for n in result.report.data["nodes"]}
    gemm_entry = next(n for n in nodes.values() if n["op_type"] == "Gemm")
    assert gemm_entry["status"] == "skipped" and "classifier" in gemm_entry["reason"]


def test_quantize_classifier_quantizes_the_gemm():
    from models.generate import make_samples, tiny_cnn
    result = compile_model(tiny_cnn(), make_samples("tiny_cnn", 4),
                           CompileConfig(quantize_classifier=True, fidelity_samples=0))
    producers, _, inits = _index(result.model)
    gemm = next(n for n in result.model.graph.node if n.op_type == "Gemm")
    w_dq = producers[gemm.input[1]]
    assert w_dq.op_type == "DequantizeLinear" and inits[w_dq.input[0]].dtype == np.int8
    assert _attr(w_dq, "axis") == 0  # transB=1: output channels on axis 0
    assert result.report.data["summary"]["quantized_nodes"] == 5


def _conv_pool_conv() -> onnx.ModelProto:
    """x -> Conv -> Relu -> MaxPool -> Conv -> Relu -> GAP -> Flatten -> Gemm -> y"""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.uniform(0, 0.2, 8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
             numpy_helper.from_array(rng.uniform(0, 0.2, 8).astype(np.float32), "b2"),
             numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "wf"),
             numpy_helper.from_array(np.zeros(4, np.float32), "bf")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_maxpool_inherits_scale_and_zero_point():
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    result = compile_model(_conv_pool_conv(), calib, CompileConfig(fidelity_samples=2))
    producers, consumers, inits = _index(result.model)
    pool = next(n for n in result.model.graph.node if n.op_type == "MaxPool")
    in_dq = producers[pool.input[0]]
    assert in_dq.op_type == "DequantizeLinear"
    out_q = [c for c in consumers[pool.output[0]] if c.op_type == "QuantizeLinear"]
    assert len(out_q) == 1 and len(consumers[pool.output[0]]) == 1
    out_q = out_q[0]
    assert inits[in_dq.input[1]] == inits[out_q.input[1]]
    assert inits[in_dq.input[2]] == inits[out_q.input[2]]
    assert inits[in_dq.input[2]].dtype == inits[out_q.input[2]].dtype == np.uint8
    ranges = result.report.data["tensor_ranges"]
    assert ranges["p1"]["method"] == "inherited" and ranges["p1"]["inherited_from"] == "r1"
    assert ranges["p1"]["scale"] == ranges["r1"]["scale"]
    # the output of Relu1 (after the Conv+Relu chain) is non-negative: its range starts at 0
    assert ranges["r1"]["min"] >= 0.0
    # both convs become integer kernels in ORT
    kernels = {n["name"]: n.get("ort_kernel") for n in result.report.data["nodes"]}
    assert kernels["conv1"] == kernels["conv2"] == "QLinearConv"
    # and the model still computes nearly the same thing
    fid = result.report.data["fidelity"]["outputs"]["y"]
    assert fid["cosine_min"] >= 0.99


def test_activation_scale_matches_calibrated_range():
    """With --method minmax, the input point's (scale, zp) is compute_qparams of the min/max of the calibration
    data."""
    from qcompile.config import CalibrationMethod, QuantSpec
    from qcompile.numerics.qparams import QuantDType, compute_qparams
    rng = np.random.default_rng(2)
    calib = [{"x": rng.uniform(-1.5, 3.0, (2, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    config = CompileConfig(activation=QuantSpec(method=CalibrationMethod.MINMAX), fidelity_samples=0)
    result = compile_model(_conv_pool_conv(), calib, config)
    lo = min(float(c["x"].min()) for c in calib)
    hi = max(float(c["x"].max()) for c in calib)
    entry = result.report.data["tensor_ranges"]["x"]
    assert entry["min"] == pytest.approx(lo, rel=1e-6) and entry["max"] == pytest.approx(hi, rel=1e-6)
    expected = compute_qparams(lo, hi, QuantDType.UINT8, symmetric=False)
    assert entry["scale"] == pytest.approx(float(expected.scale), rel=1e-6)
    assert entry["zero_point"] == int(expected.zero_point)


def test_compiled_model_runs_in_ort_and_matches_fp32_closely():
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    model = _conv_pool_conv()
    result = compile_model(model, calib, CompileConfig(fidelity_samples=0))
    held_out = np.random.default_rng(4).standard_normal((4, 3, 8, 8)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(result.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y_ref = ref.run(None, {"x": held_out})[0]
    y_q = q.run(None, {"x": held_out})[0]
    cos = np.sum(y_ref * y_q, axis=1) / (np.linalg.norm(y_ref, axis=1) * np.linalg.norm(y_q, axis=1))
    assert np.all(cos >= 0.99)


def test_per_tensor_weight_scale_bounds_the_most_negative_bias():
    """A per-tensor weight scale must keep every int32 bias in range, negative ones included."""
    import onnx_graphsurgeon as gs

    from qcompile.config import Granularity, QuantSpec
    from qcompile.passes.quantize.insert_qdq import InsertQDQPass
    from qcompile.numerics.qparams import BIAS_INT32_LIMIT, QParams, QuantDType

    weight = gs.Constant("w", np.full((2, 1, 1, 1), 1e-12, dtype=np.float32))
    bias = gs.Constant("b", np.array([1.0, -1000.0], dtype=np.float32))
    x_params = QParams(scale=np.float32(0.01), zero_point=np.uint8(0), dtype=QuantDType.UINT8)
    graph = gs.Graph()
    _, w_params, _ = InsertQDQPass._insert_weight_dq(
        graph, weight, None, QuantSpec(dtype=QuantDType.INT8, symmetric=True, granularity=Granularity.TENSOR),
        False, bias, x_params)
    assert np.max(np.abs(bias.values)) / (0.01 * float(w_params.scale)) <= BIAS_INT32_LIMIT * (1 + 1e-6)


def test_bias_scale_overflowing_float32_is_a_clear_error():
    # |x| ~ 1e30 and |W| ~ 1e30: x_scale * w_scale has no float32 value, so no int32 bias exists (the FP32 Gemm
    # overflows too); a one-line UnsupportedModelError naming the node, not a RuntimeWarning and a NaN model
    from qcompile.errors import UnsupportedModelError
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.standard_normal((8, 4)) * 1e30).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.ones(4, np.float32), "B")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": (rng.standard_normal((1, 8)) * 1e30).astype(np.float32)} for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(UnsupportedModelError, match=r"node fc: .* overflows float32"):
            compile_model(model, calib, CompileConfig(quantize_classifier=True))


def _depthwise_then_pointwise() -> onnx.ModelProto:
    """x [1, 8, 10, 10] → depthwise Conv (group 8, W [8, 1, 3, 3]) → Relu → pointwise Conv (W [4, 8, 1, 1]) → y."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "w_dw"),
             numpy_helper.from_array(rng.normal(size=(4, 8, 1, 1)).astype(np.float32), "w_pw")]
    nodes = [helper.make_node("Conv", ["x", "w_dw"], ["d"], group=8, pads=[1, 1, 1, 1], name="depthwise"),
             helper.make_node("Relu", ["d"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w_pw"], ["y"], name="pointwise")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 10, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_depthwise_weights_keep_8_bits_and_gemm_weights_limit_their_pairs(monkeypatch):
    """x86 without VNNI: GEMM-kernel weights get pair-limited codes (u8s8 pair sums saturate int16,
    passes/quantize/pair_sums.py), the depthwise Conv plain 8-bit codes (MLAS's widening depthwise kernel)."""
    from qcompile.config import CpuFeatures
    monkeypatch.setattr("qcompile.runtime_ext.target.detect_cpu_features",
                        lambda: CpuFeatures(arch="x86_64", avx2=True, vnni=False))
    rng = np.random.default_rng(4)
    samples = [{"x": rng.normal(size=(1, 8, 10, 10)).astype(np.float32)} for _ in range(8)]
    result = compile_model(_depthwise_then_pointwise(), samples,
                           CompileConfig(fidelity_samples=2, quantize_classifier=True))
    entries = {n["name"]: n for n in result.report.data["nodes"]}
    assert "pair_limited_codes" not in entries["depthwise"] and "pair_limited_codes" in entries["pointwise"]
    assert entries["depthwise"]["reduce_range"] is False and entries["pointwise"]["reduce_range"] is False
    producers, _, inits = _index(result.model)
    depthwise = next(n for n in result.model.graph.node if n.name == "depthwise")
    codes = inits[producers[depthwise.input[1]].input[0]].astype(np.int32)
    # symmetric per channel on the full grid: each output channel's largest weight lands on ±127
    assert np.abs(codes).reshape(codes.shape[0], -1).max(axis=1).tolist() == [127] * codes.shape[0]
