"""SmoothQuantPass: the scale math (hypothesis), where 1/s goes (fold into the producer or an inserted Mul), the
rewritten FP32 graph equal to the original within 1e-5 relative, α search, scope, and the compiled result."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile.api import compile_model
from qcompile.config import CompileConfig, SmoothQuantConfig, SmoothScope
from qcompile.passes.transform.smooth_quant import FakeQuant, group_error, search_alpha, smoothing_scales
from qcompile.numerics.qparams import QuantDType
from tests.passes.fp32_equivalence import assert_same_function, transform

def _config(alpha=None, scope=SmoothScope.ALL, **kwargs) -> CompileConfig:
    return CompileConfig(smoothquant=SmoothQuantConfig(scope=scope, alpha=alpha, sample_rows=64), **kwargs)


# ------------------------------------------------------------------------------------------------ scale math

positive = st.floats(1e-2, 1e2, allow_nan=False)      # spread ≤ 1e4: the 1e-5 floors stay inactive


@given(a=st.lists(positive, min_size=2, max_size=16), data=st.data(), alpha=st.floats(0.0, 1.0))
@settings(max_examples=60, deadline=None)
def test_smoothing_balances_the_maxima(a, data, alpha):
    w = data.draw(st.lists(positive, min_size=len(a), max_size=len(a)))
    a, w = np.array(a), np.array(w)
    s = smoothing_scales(a, w, alpha)
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    # after smoothing, max|X_j/s_j| = (a_j w_j)^(1-α) and max|s_j W_j| = (a_j w_j)^α: α moves the product
    # a_j·w_j between the two sides, and α = 0.5 makes them equal channel by channel
    np.testing.assert_allclose(a / s, (a * w) ** (1 - alpha), rtol=1e-9)
    np.testing.assert_allclose(s * w, (a * w) ** alpha, rtol=1e-9)


def test_smoothing_scales_guard_zero_channels():
    s = smoothing_scales(np.array([0.0, 2.0, 4.0]), np.array([1.0, 0.0, 1.0]), 0.5)
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    np.testing.assert_array_equal(smoothing_scales(np.zeros(3), np.ones(3), 0.5), np.ones(3))


def test_search_never_worse_than_no_smoothing_and_finds_the_outlier():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((256, 32)).astype(np.float32)
    rows[:, 3] *= 60.0                                             # one outlier channel, as in LayerNorm outputs
    weights = [rng.standard_normal((32, 16)).astype(np.float32) / 6]
    fq = FakeQuant(QuantDType.UINT8, False, QuantDType.INT8, True, True, False)
    lo, hi = rows.min(axis=0).astype(np.float64), rows.max(axis=0).astype(np.float64)
    alpha, error, baseline = search_alpha(rows, lo, hi, weights, tuple(np.linspace(0, 1, 11)), fq)
    assert alpha is not None and error < 0.5 * baseline
    assert baseline == pytest.approx(group_error(rows, lo, hi, weights, np.ones(32), fq))
    # without an outlier there can be nothing to gain: the search may keep the layer as it is
    flat = rng.uniform(-1, 1, (256, 32)).astype(np.float32)
    _, error, baseline = search_alpha(flat, flat.min(0).astype(np.float64), flat.max(0).astype(np.float64),
                                      weights, (0.0, 0.5, 1.0), fq)
    assert error <= baseline


# ------------------------------------------------------------------------------------------------ graph rewrites

def _tiny_transformer():
    from models.generate import make_samples, tiny_transformer
    return tiny_transformer(), make_samples("tiny_transformer", 6)


@pytest.mark.parametrize("alpha", [0.5, None])
def test_tiny_transformer_fp32_equivalence_and_structure(alpha):
    model, samples = _tiny_transformer()
    rewritten, ctx = transform(model, _config(alpha), samples)
    assert_same_function(model, rewritten, samples[:3])
    ops = Counter(n.op_type for n in rewritten.graph.node)
    # per layer: Q/K/V share one inserted Mul (the LayerNorm output also feeds the residual Add), attn.out reads
    # a Reshape, ffn.in a LayerNorm with a residual reader, ffn.out the GELU's scalar Mul: 4 Muls per layer
    # (at most; auto may keep a group as it is)
    smoothed = [d for d in ctx.decisions.values() if isinstance(d.detail.get("smoothquant"), dict)]
    assert len(smoothed) == 12
    inserted = [n for n in rewritten.graph.node if n.op_type == "Mul" and n.name.endswith("_smooth_Mul")]
    groups = {d.detail["smoothquant"]["group"] for d in smoothed
              if d.detail["smoothquant"].get("folded_into") == "inserted Mul"}
    assert len(inserted) == len(groups) <= 8
    if alpha is not None:
        assert len(inserted) == 8
    assert ops["LayerNormalization"] == Counter(n.op_type for n in model.graph.node)["LayerNormalization"]
    declined = [d for d in ctx.decisions.values() if isinstance(d.detail.get("smoothquant"), str)]
    assert len(declined) == 4 and all("not a constant" in d.reason for d in declined)   # QKᵀ and P·V


def _pre_ln_model(shared_weight: bool = False) -> onnx.ModelProto:
    """x -> LayerNorm -> {MatMul q, MatMul k} (LN read only by the group: fold into γ/β);
    x2 = MatMul(a) + b -> MatMul c (fold through the bias Add into a's columns);
    x3 = x * c_vec -> MatMul d (fold into the per-channel Mul constant)."""
    rng = np.random.default_rng(3)
    k = 16
    gamma = (1 + 0.1 * rng.standard_normal(k)).astype(np.float32)
    gamma[5] = 8.0
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in {
        "gamma": gamma, "beta": 0.1 * rng.standard_normal(k),
        "wq": rng.standard_normal((k, k)) / 4, "wk": rng.standard_normal((k, k)) / 4,
        "wa": rng.standard_normal((k, k)) / 4, "ba": rng.standard_normal(k),
        "wc": rng.standard_normal((k, k)) / 4, "cvec": rng.uniform(0.5, 3, k), "wd": rng.standard_normal((k, k)) / 4,
    }.items()]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="mm_q"),
        helper.make_node("MatMul", ["ln", "wq" if shared_weight else "wk"], ["k"], name="mm_k"),
        helper.make_node("MatMul", ["q", "wa"], ["a"], name="mm_a"),
        helper.make_node("Add", ["a", "ba"], ["x2"], name="bias_a"),
        helper.make_node("MatMul", ["x2", "wc"], ["c"], name="mm_c"),
        helper.make_node("Mul", ["k", "cvec"], ["x3"], name="scale_k"),
        helper.make_node("MatMul", ["x3", "wd"], ["d"], name="mm_d"),
        helper.make_node("Add", ["c", "d"], ["y"], name="out"),
    ]
    graph = helper.make_graph(nodes, "pre_ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, k])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(n: int, k: int = 16):
    rng = np.random.default_rng(11)
    return [{"x": (rng.standard_normal((1, 8, k)) * 2).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_folds_into_layernorm_matmul_bias_and_mul(alpha):
    model = _pre_ln_model()
    rewritten, ctx = transform(model, _config(alpha, quantize_classifier=True), _samples(4))
    assert_same_function(model, rewritten, _samples(3))
    folded = {d.name: d.detail["smoothquant"]["folded_into"] for d in ctx.decisions.values()
              if isinstance(d.detail.get("smoothquant"), dict)}
    assert folded == {"mm_q": "LayerNormalization", "mm_k": "LayerNormalization", "mm_a": "MatMul",
                      "mm_c": "Add", "mm_d": "Mul"}
    assert not [n for n in rewritten.graph.node if n.name.endswith("_smooth_Mul")]


def test_shared_weight_stays_consistent():
    model = _pre_ln_model(shared_weight=True)
    rewritten, _ = transform(model, _config(0.5, quantize_classifier=True), _samples(4))
    assert_same_function(model, rewritten, _samples(2))


def test_scope_transformer_leaves_cnns_alone_and_off_does_nothing():
    from models.generate import make_samples, tiny_cnn
    model = tiny_cnn()
    for config in (_config(None, scope=SmoothScope.TRANSFORMER), _config(None, scope=SmoothScope.OFF)):
        _, ctx = transform(model, config, make_samples("tiny_cnn", 2))
        assert not any("smoothquant" in d.detail for d in ctx.decisions.values())
    tt, samples = _tiny_transformer()
    _, ctx = transform(tt, _config(0.5, scope=SmoothScope.OFF), samples[:2])
    assert not any("smoothquant" in d.detail for d in ctx.decisions.values())


def test_excluded_nodes_are_not_smoothed():
    model = _pre_ln_model()
    config = _config(0.5, quantize_classifier=True, exclude=("mm_d",))
    rewritten, ctx = transform(model, config, _samples(2))
    assert ctx.decisions["mm_d"].detail["smoothquant"] == "declined: not selected for quantisation"
    wd = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}["wd"]
    np.testing.assert_array_equal(wd, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}["wd"])


def test_compiled_tiny_transformer_reports_alpha_and_stays_close():
    from models.generate import make_samples, tiny_transformer
    model = tiny_transformer()
    samples = make_samples("tiny_transformer", 8)
    result = compile_model(model, samples, CompileConfig(fidelity_samples=4))
    nodes = {n["name"]: n for n in result.report.data["nodes"]}
    smoothed = [n for n in nodes.values() if isinstance(n.get("smoothquant"), dict)]
    assert len(smoothed) == 12 and all(n["status"] == "quantized" and n["fused"] for n in smoothed)
    for node in smoothed:
        sq = node["smoothquant"]
        assert sq["sample_error"] <= sq["sample_error_unsmoothed"]
    fidelity = result.report.fidelity["outputs"]["sentence_embedding"]
    assert fidelity["cosine_mean"] > 0.99
