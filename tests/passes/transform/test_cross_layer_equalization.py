"""Cross-layer equalisation: FP32 function unchanged, per-channel weight ranges equalised, bounded pairs skipped."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile.config import CompileConfig
from qcompile.pass_infra import PassContext
from qcompile.passes.transform.cross_layer_equalization import (CrossLayerEqualizationPass, equalization_scales,
                                                               input_channel_ranges, output_channel_ranges,
                                                               rescale_pair)
from tests.passes.fp32_equivalence import assert_same_function, transform

C = 6


def _weights(rng, shape, spread: float = 100.0) -> np.ndarray:
    """Random weights whose output channels' ranges differ by up to ``spread``x (what CLE fixes)."""
    w = rng.standard_normal(shape).astype(np.float32)
    return w * np.geomspace(1.0, spread, shape[0]).astype(np.float32).reshape((-1,) + (1,) * (len(shape) - 1))


def _model(activation: str | None, depthwise: bool, seed: int = 0) -> onnx.ModelProto:
    """x -> conv1 (3x3, C -> C) -> [activation] -> conv2 (depthwise 3x3, or 1x1 C -> 4) -> y"""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_weights(rng, (C, 3, 3, 3)), "w1"),
             numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "b1"),
             numpy_helper.from_array(_weights(rng, (C, 1, 3, 3) if depthwise else (4, C, 1, 1), 1.0), "w2"),
             numpy_helper.from_array(np.zeros(C if depthwise else 4, np.float32), "b2"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1])]
    mid = "h"
    if activation == "Relu":
        nodes.append(helper.make_node("Relu", ["h"], ["a"], name="act"))
        mid = "a"
    elif activation == "Clip":
        nodes.append(helper.make_node("Clip", ["h", "lo", "hi"], ["a"], name="act"))
        mid = "a"
    conv2 = {"group": C, "pads": [1, 1, 1, 1]} if depthwise else {}
    nodes.append(helper.make_node("Conv", [mid, "w2", "b2"], ["y"], name="conv2", **conv2))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(count: int = 3):
    rng = np.random.default_rng(7)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def _run_pass(model: onnx.ModelProto, enabled: bool = True):
    graph = gs.import_onnx(model)
    ctx = PassContext(config=CompileConfig(cross_layer_equalization=enabled), target=None)
    result, _ = CrossLayerEqualizationPass()(graph, ctx)
    return graph, result


@pytest.mark.parametrize(("activation", "depthwise"), [(None, False), ("Relu", False), ("Relu", True), (None, True)])
def test_fp32_function_unchanged_and_ranges_equalised(activation, depthwise):
    model = _model(activation, depthwise)
    graph, result = _run_pass(model)
    assert result.modified and result.stats["equalized_pairs"] == 1
    nodes = {n.name: n for n in graph.nodes}
    r1 = output_channel_ranges(nodes["conv1"].inputs[1].values)
    r2 = input_channel_ranges(nodes["conv2"].inputs[1].values, depthwise)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)        # both sides sqrt(r1·r2) per channel
    before = output_channel_ranges(numpy_helper.to_array(model.graph.initializer[0]))
    assert r1.max() / r1.min() < 0.5 * before.max() / before.min()   # the 100x spread shrinks
    rewritten = gs.export_onnx(graph)
    assert_same_function(model, rewritten, _feeds())     # REL_TOL 1e-5 relative L2


def test_clip_pair_is_declined_and_left_unchanged():
    model = _model("Clip", False)
    graph, result = _run_pass(model)
    assert not result.modified and result.stats["declined_bounded_activation"] == 1
    w1 = {n.name: n for n in graph.nodes}["conv1"].inputs[1].values
    np.testing.assert_array_equal(w1, numpy_helper.to_array(model.graph.initializer[0]))


def test_off_by_default_in_the_pipeline():
    model = _model("Relu", False)
    rewritten, ctx = transform(model, CompileConfig(), _feeds(1))
    w1 = next(numpy_helper.to_array(t) for t in rewritten.graph.initializer if t.dims == [C, 3, 3, 3])
    np.testing.assert_array_equal(w1, numpy_helper.to_array(model.graph.initializer[0]))


def test_pipeline_with_equalisation_keeps_the_function():
    model = _model("Relu", True)
    rewritten, _ = transform(model, CompileConfig(cross_layer_equalization=True), _feeds(1))
    assert_same_function(model, rewritten, _feeds())


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.booleans())
def test_rescale_pair_is_exact_for_positive_homogeneous_chains(seed, depthwise):
    """relu(x·W1ᵀ/s)·(W2·s) = relu(x·W1ᵀ)·W2 for 1x1 convs as matrices, and the ranges meet at sqrt(r1·r2)."""
    rng = np.random.default_rng(seed)
    w1 = _weights(rng, (C, 5, 1, 1)).astype(np.float64)
    b1 = rng.standard_normal(C)
    w2 = rng.standard_normal((C, 1, 1, 1) if depthwise else (3, C, 1, 1))
    s = equalization_scales(output_channel_ranges(w1), input_channel_ranges(w2, depthwise))
    n1, nb1, n2 = rescale_pair(w1, b1, w2, s, depthwise)
    x = rng.standard_normal((4, 5))
    def forward(a, b, c):   # noqa: E306
        h = np.maximum(x @ a[:, :, 0, 0].T + b, 0.0)
        return h * c[:, 0, 0, 0] if depthwise else h @ c[:, :, 0, 0].T
    np.testing.assert_allclose(forward(n1, nb1, n2), forward(w1, b1, w2), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(output_channel_ranges(n1), np.sqrt(output_channel_ranges(w1)
                                                                  * input_channel_ranges(w2, depthwise)), rtol=1e-9)
