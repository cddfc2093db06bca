"""ConvertFloat16Pass: structure (float32 I/O, float16 inside, kept ops in float32) and numbers (the float16
model matches a float32 numpy reference within float16 tolerance on ORT's CPU EP)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.config import CompileConfig
from qcompile.pass_infra import PassContext
from qcompile.passes.lower.convert_float16 import FLOAT16_MAX, ConvertFloat16Pass, to_float16
from qcompile.runtime_ext.target import cpu_profile, cuda_profile
from qcompile.runtime_ext.cpu_features import CpuFeatures

# float16 has an 11-bit significand: relative rounding error <= 2^-11 per value; a few layers stay within 1e-2
REL_TOL = 1e-2

MLP = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[B, 16] x, int64[B] n) => (float[B, 8] y, float[B, 8] z) {
    h = MatMul(x, w1)
    hb = Add(h, b1)
    r = Relu(hb)
    big = Mul(r, huge)
    m = Add(big, neg)
    s = Softmax(m)
    y = MatMul(r, w2)
    nf = Cast<to = 1>(n)
    nu = Unsqueeze(nf, ax)
    z = Add(y, nu)
}
"""


def _model(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    weights = {"w1": rng.standard_normal((16, 32)).astype(np.float32) * 0.3,
               "b1": rng.standard_normal(32).astype(np.float32) * 0.1,
               "huge": np.full(32, 1.0, np.float32),
               "neg": np.full(32, -3.4e38, np.float32),     # an attention-mask style constant
               "w2": rng.standard_normal((32, 8)).astype(np.float32) * 0.3,
               "ax": np.array([1], np.int64)}
    model = onnx.parser.parse_model(MLP)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in weights.items())
    return model, weights


def _reference(x: np.ndarray, n: np.ndarray, w: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    r = np.maximum(x.astype(np.float64) @ w["w1"] + w["b1"], 0)
    y = r @ w["w2"]
    return y, y + n.astype(np.float64)[:, None]


def _convert(model: onnx.ModelProto, profile) -> tuple[onnx.ModelProto, dict]:
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    ctx = PassContext(config=CompileConfig(), target=profile)
    result = ConvertFloat16Pass().run(graph, ctx)
    out = gs.export_onnx(graph)
    del out.graph.value_info[:]
    onnx.checker.check_model(out, full_check=True)
    return out, dict(result.stats)


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def test_float16_model_matches_numpy_reference():
    rng = np.random.default_rng(0)
    model, weights = _model(rng)
    converted, stats = _convert(model, cuda_profile())
    assert stats["input_casts"] == 1 and stats["output_casts"] == 2
    # the user's I/O types are unchanged; every initializer is float16 or integer
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [onnx.TensorProto.FLOAT,
                                                                            onnx.TensorProto.INT64]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in converted.graph.output)
    assert {t.data_type for t in converted.graph.initializer} <= {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64}
    casts = [n for n in converted.graph.node if n.op_type == "Cast"]
    assert any(a.i == onnx.TensorProto.FLOAT16 for n in casts for a in n.attribute if n.input[0] == "nf" or
               n.output[0] == "nf")
    x = rng.standard_normal((4, 16)).astype(np.float32)
    n = np.array([1, 2, 3, 70000], np.int64)   # 70000 > float16 max: Cast gives inf, as the float16 graph would
    y, z = _run(converted, {"x": x, "n": n})
    y_ref, z_ref = _reference(x, n, weights)
    assert y.dtype == np.float32
    assert np.abs(y - y_ref).max() <= REL_TOL * np.abs(y_ref).max()
    assert np.allclose(z[:3], z_ref[:3], rtol=REL_TOL, atol=REL_TOL * np.abs(y_ref).max())


def test_no_nan_from_huge_constants():
    """-3.4e38 is clipped to -65504, not rounded to -inf (0 * -inf would be NaN downstream)."""
    values = to_float16(np.array([-3.4e38, 3.4e38, 1e-3, np.inf, -np.inf], np.float32))
    assert values[0] == -FLOAT16_MAX and values[1] == FLOAT16_MAX
    assert np.isinf(values[3]) and np.isinf(values[4])
    assert abs(float(values[2]) - 1e-3) <= 1e-3 * 2.0 ** -11


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=20))
def test_to_float16_rounding_error(values):
    x = np.array(values, np.float32)
    h = to_float16(x).astype(np.float64)
    inside = np.abs(x) <= FLOAT16_MAX
    # normal range: relative error <= 2^-11; subnormal range: absolute error <= 2^-25 (half the smallest step)
    bound = np.maximum(np.abs(x.astype(np.float64)) * 2.0 ** -11, 2.0 ** -25)
    assert np.all(np.abs(h[inside] - x[inside]) <= bound[inside])
    assert np.all(np.abs(h[~inside]) == FLOAT16_MAX)


def test_kept_float32_ops_get_casts():
    rng = np.random.default_rng(1)
    model, weights = _model(rng)
    profile = dataclasses.replace(cuda_profile(), float32_ops=frozenset({"Softmax", "Relu"}))
    converted, stats = _convert(model, profile)
    assert stats["kept_float32_Softmax"] == 1 and stats["kept_float32_Relu"] == 1
    graph = converted.graph
    producers = {o: n for n in graph.node for o in n.output}
    for node in (n for n in graph.node if n.op_type in ("Softmax", "Relu")):
        assert producers[node.input[0]].op_type == "Cast"      # float16 -> float32 before
        consumer = next(n for n in graph.node if node.output[0] in n.input)
        assert consumer.op_type == "Cast"                      # float32 -> float16 after
    x = rng.standard_normal((2, 16)).astype(np.float32)
    y, _ = _run(converted, {"x": x, "n": np.zeros(2, np.int64)})
    y_ref, _ = _reference(x, np.zeros(2), weights)
    assert np.abs(y - y_ref).max() <= REL_TOL * np.abs(y_ref).max()


def test_cpu_target_leaves_the_graph_alone():
    model, _ = _model(np.random.default_rng(2))
    converted, stats = _convert(model, cpu_profile(CpuFeatures(arch="x86_64", avx2=True, vnni=True)))
    assert stats == {"skipped_target_keeps_float32": 1}
    assert not any(n.op_type == "Cast" and n.input[0] == "x" for n in converted.graph.node)
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in converted.graph.initializer if t.name != "ax")


def test_resize_scales_stay_float32():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    up (float[1, 2, 4, 4] x) => (float[1, 2, 8, 8] y) {
        y = Resize<mode = "nearest">(x, roi, scales)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.zeros(0, np.float32), "roi"),
                                    onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    converted, _ = _convert(model, cuda_profile())
    types = {t.name: t.data_type for t in converted.graph.initializer}
    assert types["scales"] == onnx.TensorProto.FLOAT
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    (y,) = _run(converted, {"x": x})
    assert np.array_equal(y, x.repeat(2, axis=2).repeat(2, axis=3))


@pytest.mark.parametrize("op", ["If"])
def test_control_flow_graphs_stay_float32(op):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[2] x) => (float[2] y) {
        y = If(c) <then_branch = t () => (float[2] a) { a = Identity(x) },
                   else_branch = e () => (float[2] b) { b = Neg(x) }>
    }
    """
    model = onnx.parser.parse_model(text)
    graph = gs.import_onnx(model)
    ctx = PassContext(config=CompileConfig(), target=cuda_profile())
    result = ConvertFloat16Pass().run(graph, ctx)
    assert result.stats == {"skipped_control_flow": 1} and not result.modified
    assert ctx.warnings
