"""Tests for passes/fold_batchnorm.py: BN folded into Conv / ConvTranspose / Gemm (structure and ORT numbers) and the
fold_bn_into_weights math (hypothesis)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile.config import CompileConfig
from qcompile.pass_infra import PassContext
from qcompile.passes.prepare.fold_batchnorm import FoldBatchNormPass, fold_bn_into_weights
from tests.passes.ort_reference import run_unoptimized

RTOL, ATOL = 1e-5, 1e-5

def _arr(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)

def _apply(model: onnx.ModelProto):
    graph = gs.import_onnx(model)
    result, _ = FoldBatchNormPass()(graph, PassContext(config=CompileConfig(), target=None))
    out = gs.export_onnx(graph)
    out.opset_import[0].version = model.opset_import[0].version
    onnx.checker.check_model(out)
    return out, result

def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]

def _bn_params(rng, c: int, prefix: str = "bn") -> list[onnx.TensorProto]:
    return [_arr(f"{prefix}.gamma", rng.uniform(0.2, 3.0, c)), _arr(f"{prefix}.beta", rng.normal(0, 1, c)),
            _arr(f"{prefix}.mean", rng.normal(0, 1, c)), _arr(f"{prefix}.var", rng.uniform(0.05, 4.0, c))]

def conv_bn_model(op: str = "Conv", bias: bool = True, extra_consumer: bool = False, seed: int = 0,
                  epsilon: float = 1e-3) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    cin, cout = 3, 5
    wshape = (cout, cin, 3, 3) if op == "Conv" else (cin, cout, 3, 3)
    inits = [_arr("W", rng.standard_normal(wshape))] + _bn_params(rng, cout)
    conv_inputs = ["x", "W"]
    if bias:
        inits.append(_arr("B", rng.standard_normal(cout)))
        conv_inputs.append("B")
    nodes = [helper.make_node(op, conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn.gamma", "bn.beta", "bn.mean", "bn.var"], ["y"],
                              name="bn", epsilon=epsilon)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, cout, 6, 6])]
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["c"], ["z"], name="relu"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, cout, 6, 6]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, cin, 6, 6])],
                              outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

X = np.random.default_rng(99).standard_normal((2, 3, 6, 6)).astype(np.float32)

@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("bias", [True, False])
def test_bn_folded_structure_and_numbers(op, bias):
    model = conv_bn_model(op, bias)
    before = run_unoptimized(model, {"x": X})[0]
    folded, result = _apply(model)
    assert _ops(model) == [op, "BatchNormalization"]
    assert _ops(folded) == [op]
    assert result.modified and result.stats["folded"] == 1 and result.stats["declined"] == 0
    conv = folded.graph.node[0]
    assert len(conv.input) == 3  # a bias is added when the conv had none
    assert conv.output[0] == "y"  # the BN's output name is kept
    after = run_unoptimized(folded, {"x": X})[0]
    np.testing.assert_allclose(after, before, rtol=RTOL, atol=ATOL)

def test_bn_epsilon_is_used():
    # a tiny variance makes the epsilon matter: folding with the default 1e-5 would differ by far more than 1e-5
    model = conv_bn_model(epsilon=0.5)
    before = run_unoptimized(model, {"x": X})[0]
    folded, _ = _apply(model)
    np.testing.assert_allclose(run_unoptimized(folded, {"x": X})[0], before, rtol=RTOL, atol=ATOL)

def test_bn_declined_when_conv_output_has_other_consumers():
    model = conv_bn_model(extra_consumer=True)
    folded, result = _apply(model)
    assert result.modified is False
    assert result.stats == {"folded": 0, "declined": 1}
    assert sorted(_ops(folded)) == ["BatchNormalization", "Conv", "Relu"]
    for a, b in zip(run_unoptimized(folded, {"x": X}), run_unoptimized(model, {"x": X})):
        np.testing.assert_array_equal(a, b)

def test_bn_after_non_conv_is_declined():
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("BatchNormalization", ["r", "bn.gamma", "bn.beta", "bn.mean", "bn.var"], ["y"],
                              name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 6, 6])],
                              initializer=_bn_params(rng, 3))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded, result = _apply(model)
    assert _ops(folded) == ["Relu", "BatchNormalization"]
    assert result.stats == {"folded": 0, "declined": 1}

def test_tiny_cnn_bn_is_folded():
    from models.generate import make_samples, tiny_cnn
    model = tiny_cnn()
    feed = make_samples("tiny_cnn", 1)[0]
    before = run_unoptimized(model, feed)[0]
    folded, result = _apply(model)
    assert _ops(model).count("BatchNormalization") == 1
    assert "BatchNormalization" not in _ops(folded)
    assert len(folded.graph.node) == len(model.graph.node) - 1
    np.testing.assert_allclose(run_unoptimized(folded, feed)[0], before, rtol=1e-4, atol=1e-4)

def test_shared_weight_two_bns():
    rng = np.random.default_rng(3)
    inits = [_arr("W", rng.standard_normal((4, 3, 3, 3)))] + _bn_params(rng, 4, "bn0") + _bn_params(rng, 4, "bn1")
    nodes = []
    for k in range(2):
        nodes += [helper.make_node("Conv", ["x", "W"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{k}", f"bn{k}.gamma", f"bn{k}.beta", f"bn{k}.mean",
                                                          f"bn{k}.var"], [f"y{k}"], name=f"bn{k}")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, [2, 4, 6, 6]) for k in range(2)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = run_unoptimized(model, {"x": X})
    folded, result = _apply(model)
    assert result.stats["folded"] == 2
    for a, b in zip(run_unoptimized(folded, {"x": X}), before):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)

def gemm_bn_model(trans_b: int, bias_shape: tuple[int, ...] | None, alpha: float = 1.0, beta: float = 1.0,
                  trans_a: int = 0) -> onnx.ModelProto:
    """x [4, 6] -> Gemm(W, C) [4, 5] -> BatchNormalization (BatchNorm1d after a Linear)."""
    rng = np.random.default_rng(7)
    k, m = 6, 5
    inits = [_arr("W", rng.standard_normal((m, k) if trans_b else (k, m)))] + _bn_params(rng, m)
    gemm_inputs = ["x", "W"]
    if bias_shape is not None:
        inits.append(_arr("C", rng.standard_normal(bias_shape)))
        gemm_inputs.append("C")
    nodes = [helper.make_node("Gemm", gemm_inputs, ["g"], name="fc", transA=trans_a, transB=trans_b, alpha=alpha,
                              beta=beta),
             helper.make_node("BatchNormalization", ["g", "bn.gamma", "bn.beta", "bn.mean", "bn.var"], ["y"],
                              name="bn")]
    x_shape = [k, 4] if trans_a else [4, k]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, m])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (5,), (1, 5), (1,)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0)])
def test_bn_after_gemm_is_folded(trans_a, trans_b, bias_shape, alpha, beta):
    model = gemm_bn_model(trans_b, bias_shape, alpha, beta, trans_a)
    x = np.random.default_rng(2).standard_normal((6, 4) if trans_a else (4, 6)).astype(np.float32)
    before = run_unoptimized(model, {"x": x})[0]
    folded, result = _apply(model)
    assert _ops(folded) == ["Gemm"] and result.stats == {"folded": 1, "declined": 0}
    np.testing.assert_allclose(run_unoptimized(folded, {"x": x})[0], before, rtol=RTOL, atol=ATOL)

def test_bn_after_gemm_with_a_per_row_bias_is_declined():
    folded, result = _apply(gemm_bn_model(1, (4, 5)))
    assert _ops(folded) == ["Gemm", "BatchNormalization"] and result.stats == {"folded": 0, "declined": 1}

# ---------------------------------------------------------------------------------------------- math

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), cout=st.integers(1, 6), cin=st.integers(1, 4),
       epsilon=st.sampled_from([1e-5, 1e-3, 0.1]), axis=st.sampled_from([0, 1]))
def test_fold_bn_into_weights_equals_bn_of_linear(seed, cout, cin, epsilon, axis):
    """For a linear layer y = W x + b (channel axis 0, or axis 1 for the transposed layout),
    BN(y) == W' x + b' in float64 up to float32 storage of W', b'."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin) if axis == 0 else (cin, cout)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    gamma, beta = rng.uniform(-3, 3, cout).astype(np.float32), rng.normal(0, 1, cout).astype(np.float32)
    mean, var = rng.normal(0, 2, cout).astype(np.float32), rng.uniform(0.01, 5, cout).astype(np.float32)
    new_w, new_b = fold_bn_into_weights(w, b, gamma, beta, mean, var, epsilon, axis)
    assert new_w.shape == w.shape and new_w.dtype == np.float32
    assert new_b.shape == (cout,) and new_b.dtype == np.float32
    x = rng.standard_normal((cin, 7))
    wm = w.astype(np.float64) if axis == 0 else w.astype(np.float64).T
    nwm = new_w.astype(np.float64) if axis == 0 else new_w.astype(np.float64).T
    y = wm @ x + b[:, None]
    reference = gamma[:, None] * (y - mean[:, None]) / np.sqrt(var[:, None].astype(np.float64) + epsilon) \
        + beta[:, None]
    folded = nwm @ x + new_b[:, None].astype(np.float64)
    scale = np.abs(gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + epsilon))[:, None]
    tolerance = 1e-5 * (1 + scale * (np.abs(wm) @ np.abs(x) + np.abs(b)[:, None] + np.abs(mean)[:, None])
                        + np.abs(beta)[:, None])
    assert np.all(np.abs(folded - reference) <= tolerance)

def test_fold_bn_identity_bn_is_a_no_op():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([1.0, -2.0, 0.5], np.float32)
    new_w, new_b = fold_bn_into_weights(w, b, np.ones(3, np.float32), np.zeros(3, np.float32),
                                        np.zeros(3, np.float32), np.ones(3, np.float32), 0.0)
    np.testing.assert_array_equal(new_w, w)
    np.testing.assert_array_equal(new_b, b)
