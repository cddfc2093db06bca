"""Tests for passes/fuse_pad_into_conv.py: a zero constant Pad folded into the Conv's pads (structure and ORT
numbers), the cases it must decline, and the merged_conv_pads arithmetic (hypothesis)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile.config import CompileConfig
from qcompile.pass_infra import PassContext
from qcompile.passes.prepare.fuse_pad_into_conv import FusePadIntoConvPass, merged_conv_pads
from tests.passes.ort_reference import run_unoptimized

RTOL, ATOL = 1e-5, 1e-5
X = np.random.default_rng(7).standard_normal((2, 3, 9, 8)).astype(np.float32)

def _apply(model: onnx.ModelProto):
    graph = gs.import_onnx(model)
    result, _ = FusePadIntoConvPass()(graph, PassContext(config=CompileConfig(), target=None))
    out = gs.export_onnx(graph)
    onnx.checker.check_model(out)
    return out, result

def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]

def pad_conv_model(pads, conv_pads=(1, 1, 1, 1), mode="constant", value=None, consumers=("Conv",),
                   auto_pad=None, strides=(1, 1)) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    cin = X.shape[1] + pads[1] + pads[5]  # the Conv must accept a Pad that adds channels
    inits = [numpy_helper.from_array(np.asarray(pads, np.int64), "pads"),
             numpy_helper.from_array(rng.standard_normal((4, cin, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B")]
    pad_inputs = ["x", "pads"]
    if value is not None:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), "value"))
        pad_inputs.append("value")
    nodes = [helper.make_node("Pad", pad_inputs, ["p"], name="pad", mode=mode)]
    outputs = []
    for i, op in enumerate(consumers):
        if op == "Conv":
            attrs = {"auto_pad": auto_pad} if auto_pad else {"pads": list(conv_pads)}
            nodes.append(helper.make_node("Conv", ["p", "W", "B"], [f"y{i}"], name=f"conv{i}", kernel_shape=[3, 3],
                                          strides=list(strides), **attrs))
        else:
            nodes.append(helper.make_node(op, ["p"], [f"y{i}"], name=f"{op.lower()}{i}"))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X.shape))],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)

@pytest.mark.parametrize("pads, conv_pads, expected", [
    ([0, 0, 1, 2, 0, 0, 2, 1], (1, 1, 1, 1), [2, 3, 3, 2]),
    ([0, 0, 0, 1, 0, 0, 1, 0], (0, 0, 0, 0), [0, 1, 1, 0]),
    ([0, 0, 2, 2, 0, 0, 2, 2], (0, 1, 0, 1), [2, 3, 2, 3]),
])
def test_pad_folded_into_conv(pads, conv_pads, expected):
    model = pad_conv_model(pads, conv_pads)
    before = run_unoptimized(model, {"x": X})[0]
    fused, result = _apply(model)
    assert _ops(model) == ["Pad", "Conv"]
    assert _ops(fused) == ["Conv"]
    assert result.modified and result.stats == {"fused": 1, "declined": 0}
    conv = fused.graph.node[0]
    assert conv.input[0] == "x"
    assert list(helper.get_attribute_value(next(a for a in conv.attribute if a.name == "pads"))) == expected
    after = run_unoptimized(fused, {"x": X})[0]
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, rtol=RTOL, atol=ATOL)

def test_explicit_zero_pad_value_and_strides():
    model = pad_conv_model([0, 0, 0, 1, 0, 0, 1, 0], (1, 1, 1, 1), value=0.0, strides=(2, 2))
    before = run_unoptimized(model, {"x": X})[0]
    fused, result = _apply(model)
    assert _ops(fused) == ["Conv"]
    np.testing.assert_allclose(run_unoptimized(fused, {"x": X})[0], before, rtol=RTOL, atol=ATOL)

def test_pad_shared_by_two_convs_folds_into_both():
    model = pad_conv_model([0, 0, 1, 1, 0, 0, 1, 1], (0, 0, 0, 0), consumers=("Conv", "Conv"))
    before = run_unoptimized(model, {"x": X})
    fused, result = _apply(model)
    assert _ops(fused) == ["Conv", "Conv"]
    for a, b in zip(run_unoptimized(fused, {"x": X}), before):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)

@pytest.mark.parametrize("kwargs", [
    dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5),                        # non-zero pad value
    dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"),                    # not constant mode
    dict(pads=[0, 1, 1, 1, 0, 0, 1, 1]),                                    # pads the channel dim
    dict(pads=[1, 0, 0, 0, 0, 0, 0, 0]),                                    # pads the batch dim
    dict(pads=[0, 0, -1, 0, 0, 0, 0, 0]),                                   # negative pad = crop
    dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], consumers=("Conv", "Relu")),        # a non-Conv consumer
    dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], auto_pad="SAME_UPPER"),             # Conv with auto_pad
])
def test_pad_declined(kwargs):
    model = pad_conv_model(**kwargs)
    before = run_unoptimized(model, {"x": X})
    fused, result = _apply(model)
    assert "Pad" in _ops(fused)
    assert result.modified is False and result.stats == {"fused": 0, "declined": 1}
    for a, b in zip(run_unoptimized(fused, {"x": X}), before):
        np.testing.assert_array_equal(a, b)

def test_pad_that_is_a_graph_output_is_declined():
    model = pad_conv_model([0, 0, 1, 1, 0, 0, 1, 1], (0, 0, 0, 0))
    model.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    fused, result = _apply(model)
    assert "Pad" in _ops(fused) and result.stats["fused"] == 0

def test_constant_pads_from_generator_model_after_prepare():
    """shape_computed_pad_cnn: the first SAME-Pad reads the graph input's static H, W; after constant folding
    it becomes a constant and is folded into the stem Conv."""
    from models.generate import make_samples, shape_computed_pad_cnn
    from qcompile.passes.prepare.fold_constants import FoldConstantsPass
    from qcompile.passes.prepare.infer_shapes import InferShapesPass
    model = shape_computed_pad_cnn()
    feed = make_samples("shape_computed_pad_cnn", 2)[0]
    before = run_unoptimized(model, feed)[0]
    graph = gs.import_onnx(model)
    ctx = PassContext(config=CompileConfig(), target=None)
    InferShapesPass()(graph, ctx)
    FoldConstantsPass()(graph, ctx)
    result, _ = FusePadIntoConvPass()(graph, ctx)
    assert result.stats["fused"] >= 1
    stem = next(n for n in graph.nodes if n.op == "Conv")
    assert stem.inputs[0].name == "input"
    assert list(stem.attrs["pads"]) == [0, 0, 1, 1]  # SAME for 32 -> 16 with k3 s2
    out = gs.export_onnx(graph)
    np.testing.assert_allclose(run_unoptimized(out, feed)[0], before, rtol=1e-4, atol=1e-5)

def test_compile_folds_every_shape_computed_pad():
    from models.generate import make_samples, shape_computed_pad_cnn
    from qcompile.api import compile_model
    result = compile_model(shape_computed_pad_cnn(), make_samples("shape_computed_pad_cnn", 2),
                           CompileConfig(fidelity_samples=0))
    ops = [n.op_type for n in result.model.graph.node]
    assert "Pad" not in ops and "Shape" not in ops

# ---------------------------------------------------------------------------------------------- math

spatial_pads = st.lists(st.integers(0, 5), min_size=2, max_size=6).filter(lambda v: len(v) % 2 == 0)

@settings(max_examples=100, deadline=None)
@given(data=st.data(), spatial=st.integers(1, 3), has_conv_pads=st.booleans())
def test_merged_conv_pads_adds_spatial_pads(data, spatial, has_conv_pads):
    begins = data.draw(st.lists(st.integers(0, 5), min_size=spatial, max_size=spatial))
    ends = data.draw(st.lists(st.integers(0, 5), min_size=spatial, max_size=spatial))
    conv = data.draw(st.lists(st.integers(0, 5), min_size=2 * spatial, max_size=2 * spatial)) if has_conv_pads \
        else []
    amounts = np.array([0, 0] + begins + [0, 0] + ends, dtype=np.int64)
    merged = merged_conv_pads(conv, amounts)
    base = conv or [0] * (2 * spatial)
    assert merged == [base[i] + begins[i] for i in range(spatial)] + \
        [base[spatial + i] + ends[i] for i in range(spatial)]
    assert all(isinstance(v, int) for v in merged)

@settings(max_examples=100, deadline=None)
@given(data=st.data(), spatial=st.integers(1, 3))
def test_merged_conv_pads_declines_batch_channel_and_negative(data, spatial):
    rank = spatial + 2
    amounts = np.array(data.draw(st.lists(st.integers(-3, 3), min_size=2 * rank, max_size=2 * rank)), np.int64)
    merged = merged_conv_pads([0] * (2 * spatial), amounts)
    touches_nc = np.any(amounts[[0, 1, rank, rank + 1]] != 0)
    if touches_nc or np.any(amounts < 0):
        assert merged is None
    else:
        assert merged is not None and len(merged) == 2 * spatial

def test_merged_conv_pads_rank_mismatch_declined():
    assert merged_conv_pads([1, 1], np.array([0, 0, 1, 1, 0, 0, 1, 1])) is None

def test_merged_conv_pads_matches_numpy_convolution():
    """Conv(Pad(x)) == Conv(x; merged pads) on a numpy reference for a 1-D conv."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(11), rng.standard_normal(3)
    pad, conv_pads = np.array([0, 0, 2, 0, 0, 1]), [1, 0]
    merged = merged_conv_pads(conv_pads, pad)

    def conv1d(signal, pads):
        padded = np.pad(signal, (pads[0], pads[1]))
        return np.correlate(padded, w, mode="valid")

    explicit = conv1d(np.pad(x, (2, 1)), conv_pads)
    np.testing.assert_allclose(conv1d(x, merged), explicit, rtol=1e-12)
