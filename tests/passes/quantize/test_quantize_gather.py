"""QuantizeGatherPass: int8 embedding tables in the static pipeline — the rounding bound (hypothesis), the emitted
form Gather(int8) -> DequantizeLinear, what ORT runs, and the tables it declines."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

from qcompile.api import compile_model
from qcompile.config import CompileConfig, EmbeddingQuantConfig, Granularity
from qcompile.passes.quantize.quantize_gather import quantize_table
from tests.passes.ort_reference import run_unoptimized


@given(table=arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(1, 12)),
                    elements=st.floats(-50, 50, allow_nan=False, width=32)),
       per_column=st.booleans())
@settings(max_examples=80, deadline=None)
def test_rounding_error_is_at_most_half_a_step(table, per_column):
    codes, scale = quantize_table(table, per_column)
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max(initial=0) <= 127
    assert scale.shape == ((table.shape[1],) if per_column else ())
    error = np.abs(codes * scale - table)
    assert np.all(error <= scale / 2 * (1 + 1e-5) + 1e-6)


VOCAB, DIM = 300, 64


def _model() -> onnx.ModelProto:
    """ids -> Gather(word [300, 64]) + Gather(small [4, 64]) -> MatMul -> y; 'tied' [300, 64] is read by a Gather
    and by a MatMul (a tied output projection), so it stays float."""
    rng = np.random.default_rng(5)
    word = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    word[:, 3] *= 20.0                                         # an outlier feature dimension
    inits = [numpy_helper.from_array(word, "word"),
             numpy_helper.from_array(rng.standard_normal((4, DIM)).astype(np.float32), "small"),
             numpy_helper.from_array(rng.standard_normal((VOCAB, DIM)).astype(np.float32), "tied"),
             numpy_helper.from_array((rng.standard_normal((DIM, 16)) / 8).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["word", "ids"], ["emb"], name="word_gather", axis=0),
             helper.make_node("Gather", ["small", "kind"], ["kind_emb"], name="small_gather", axis=0),
             helper.make_node("Gather", ["tied", "ids"], ["tied_emb"], name="tied_gather", axis=0),
             helper.make_node("Add", ["emb", "kind_emb"], ["h0"]),
             helper.make_node("Add", ["h0", "tied_emb"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="proj"),
             helper.make_node("Gemm", ["h2d", "tied"], ["logits"], name="tied_head", transB=1),
             helper.make_node("Reshape", ["h", "shape"], ["h2d"])]
    inits.append(numpy_helper.from_array(np.array([-1, DIM], np.int64), "shape"))
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 7]),
                                             helper.make_tensor_value_info("kind", TensorProto.INT64, [1, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7, 16]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [7, VOCAB])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(n: int):
    rng = np.random.default_rng(9)
    return [{"ids": rng.integers(0, VOCAB, (1, 7)), "kind": rng.integers(0, 4, (1, 7))} for _ in range(n)]


@pytest.mark.parametrize("per_column", [True, False])
def test_subnormal_and_zero_columns_get_a_positive_scale(per_column):
    # max|E| / 127 underflows to 0 in float32 for a column of subnormals; the scale is floored at the smallest
    # normal float32, so nothing divides by zero and the codes stay finite
    table = np.array([[1e-45, 0.0, 1.0], [-1e-45, 0.0, -0.5]], np.float32)
    with np.errstate(divide="raise", invalid="raise"):
        codes, scale = quantize_table(table, per_column)
    assert np.all(scale > 0) and codes.dtype == np.int8
    assert np.all(np.abs(codes.astype(np.float32) * scale - table) <= scale / 2 + 1e-45)


@pytest.mark.parametrize("granularity", [Granularity.CHANNEL, Granularity.TENSOR])
def test_embedding_becomes_int8_gather_and_dq(granularity):
    model = _model()
    config = CompileConfig(embedding=EmbeddingQuantConfig(granularity=granularity), fidelity_samples=2)
    result = compile_model(model, _samples(4), config)
    graph = result.model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    gathers = {n.name: n for n in graph.node if n.op_type == "Gather"}
    assert inits[gathers["word_gather"].input[0]].dtype == np.int8
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == gathers["word_gather"].output[0])
    assert dq.output[0] == "emb"
    scale = inits[dq.input[1]]
    assert scale.shape == ((DIM,) if granularity is Granularity.CHANNEL else ())
    # declined: the small table (size) silently, the tied table (read by a Gemm too) with a reason in the report
    assert inits[gathers["small_gather"].input[0]].dtype == np.float32
    assert inits[gathers["tied_gather"].input[0]].dtype == np.float32
    nodes = {n["name"]: n for n in result.report.data["nodes"]}
    assert nodes["word_gather"]["status"] == "quantized" and nodes["word_gather"]["fused"]
    assert nodes["word_gather"]["ort_kernel"] == "Gather"           # ORT gathers the int8 rows
    assert nodes["tied_gather"]["status"] == "skipped" and "non-Gather" in nodes["tied_gather"]["reason"]
    assert "small_gather" not in nodes
    # numbers: the gathered rows within half a quantisation step of the float rows
    feed = _samples(1)[0]
    table = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["word"]
    reference = table[feed["ids"]]
    approx = run_unoptimized(_expose(result.model, "emb"), feed)[-1]
    step = np.abs(table).max(axis=0 if granularity is Granularity.CHANNEL else None) / 127
    assert np.all(np.abs(approx - reference) <= step / 2 * (1 + 1e-5))


def _expose(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy


def test_disabled_or_excluded_tables_stay_float():
    model = _model()
    for config in (CompileConfig(embedding=EmbeddingQuantConfig(enabled=False)),
                   CompileConfig(exclude=("word_gather",))):
        result = compile_model(model, _samples(2), config)
        inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
        gather = next(n for n in result.model.graph.node if n.name == "word_gather")
        assert inits[gather.input[0]].dtype == np.float32
