"""Tests for passes/name_nodes.py: unique_names (hypothesis) and the pass on a graph with empty and
duplicate names."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

from qcompile.config import CompileConfig
from qcompile.pass_infra import PassContext
from qcompile.passes.prepare.name_nodes import NameNodesPass, unique_names

# small alphabets so that collisions with generated names ("Conv_1") actually happen
names_st = st.lists(st.sampled_from(["", "a", "b", "a_1", "a_2", "Conv", "Conv_1", "Conv_2", "Relu_1", "x"]),
                    max_size=12)
ops_st = st.sampled_from(["Conv", "Relu", "a"])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), names=names_st)
def test_unique_names_properties(data, names):
    ops = data.draw(st.lists(ops_st, min_size=len(names), max_size=len(names)))
    result = unique_names(names, ops)
    assert len(result) == len(names)
    assert all(result)
    assert len(set(result)) == len(result)
    seen: set[str] = set()
    for original, new in zip(names, result):
        if original and original not in seen:
            assert new == original  # the first holder of a name keeps it
        seen.add(original)
    # names that were unique and non-empty are never touched
    for original, new in zip(names, result):
        if original and names.count(original) == 1:
            assert new == original
    # fresh names never steal a name that some node holds in the input
    originals = {n for n in names if n}
    for original, new in zip(names, result):
        if new != original:
            assert new not in originals


@settings(max_examples=100, deadline=None)
@given(names=names_st)
def test_unique_names_is_idempotent(names):
    once = unique_names(names, ["Op"] * len(names))
    assert unique_names(once, ["Op"] * len(once)) == once


def test_unique_names_examples():
    assert unique_names(["", "", "conv"], ["Conv", "Conv", "Conv"]) == ["Conv_1", "Conv_2", "conv"]
    assert unique_names(["", "Conv_1"], ["Conv", "Conv"]) == ["Conv_2", "Conv_1"]
    assert unique_names(["x", "x", "x"], ["Relu"] * 3) == ["x", "x_1", "x_2"]
    assert unique_names(["x", "x", "x_1"], ["Relu"] * 3) == ["x", "x_2", "x_1"]
    assert unique_names([], []) == []


def test_name_nodes_pass():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Relu", ["a"], ["b"], name="r"),
             helper.make_node("Relu", ["b"], ["c"], name="r"),
             helper.make_node("Neg", ["c"], ["y"], name="Relu_1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = gs.import_onnx(model)
    result, _ = NameNodesPass()(g, PassContext(config=CompileConfig(), target=None))
    assert [n.name for n in g.nodes] == ["Relu_2", "r", "r_1", "Relu_1"]
    assert result.stats == {"renamed": 2}
    assert result.modified is False  # renaming does not invalidate statistics
    onnx.checker.check_model(gs.export_onnx(g))


def test_name_nodes_pass_keeps_unique_names():
    from models.generate import tiny_cnn
    g = gs.import_onnx(tiny_cnn())
    before = [n.name for n in g.nodes]
    result, _ = NameNodesPass()(g, PassContext(config=CompileConfig(), target=None))
    assert [n.name for n in g.nodes] == before
    assert result.stats == {"renamed": 0}
