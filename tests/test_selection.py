"""Tests for qcompile.selection: the classifier rule, op types, excludes (names and regexes), overrides."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.config import CalibrationMethod, CompileConfig, NodeOverride, QuantSpec
from qcompile.errors import SelectionError
from qcompile.selection import classifier_nodes, select_nodes

D = 8


def _init(name: str, shape, seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def _graph(nodes, inits, inputs, outputs) -> gs.Graph:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return gs.import_onnx(model)


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mlp_with_head() -> gs.Graph:
    """x -> MatMul(fc1) -> Add(bias) -> Relu -> MatMul(fc2) -> Add(bias) -> Relu -> Flatten -> Gemm(head) -> y"""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
        helper.make_node("Relu", ["h1b"], ["a1"], name="relu1"),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Add", ["h2", "b2"], ["h2b"], name="fc2_bias"),
        helper.make_node("Relu", ["h2b"], ["a2"], name="relu2"),
        helper.make_node("Flatten", ["a2"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wh", "bh"], ["y"], name="head", transB=1),
    ]
    inits = [_init("w1", (D, D), 1), _init("b1", (D,), 2), _init("w2", (D, D), 3), _init("b2", (D,), 4),
             _init("wh", (4, D), 5), _init("bh", (4,), 6)]
    return _graph(nodes, inits, [_f("x", [2, D])], [_f("y", [2, 4])])


def encoder_block() -> gs.Graph:
    """x -> MatMul -> Add(bias) -> Add(residual x) -> LayerNorm -> y: the MatMul is not a classifier."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="proj_bias"),
        helper.make_node("Add", ["hb", "x"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "g", "beta"], ["y"], name="ln", axis=-1),
    ]
    inits = [_init("w", (D, D)), _init("b", (D,)), numpy_helper.from_array(np.ones(D, np.float32), "g"),
             numpy_helper.from_array(np.zeros(D, np.float32), "beta")]
    return _graph(nodes, inits, [_f("x", [2, 3, D])], [_f("y", [2, 3, D])])


def selected(graph: gs.Graph, config: CompileConfig) -> set[str]:
    return {name for name, s in select_nodes(graph, config).items() if s.selected}


# ---------------------------------------------------------------------------------------------- classifier


def test_gemm_feeding_the_output_is_the_classifier():
    graph = mlp_with_head()
    assert classifier_nodes(graph) == {"head"}
    decisions = select_nodes(graph, CompileConfig())
    assert decisions["head"].selected is False
    assert "classifier" in decisions["head"].reason
    assert selected(graph, CompileConfig()) == {"fc1", "fc2"}


def test_quantize_classifier_selects_the_head():
    graph = mlp_with_head()
    assert selected(graph, CompileConfig(quantize_classifier=True)) == {"fc1", "fc2", "head"}


def test_classifier_through_bias_add_and_reshape():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="logits_mm"),
        helper.make_node("Add", ["b", "h"], ["hb"], name="logits_bias"),  # bias first: still a bias add
        helper.make_node("Reshape", ["hb", "shape"], ["y"], name="to_out"),
    ]
    inits = [_init("w", (D, 4)), _init("b", (4,)), numpy_helper.from_array(np.array([2, 2, 2], np.int64), "shape")]
    graph = _graph(nodes, inits, [_f("x", [2, D])], [_f("y", [2, 2, 2])])
    assert classifier_nodes(graph) == {"logits_mm"}


def test_matmul_bias_residual_layernorm_is_not_a_classifier():
    graph = encoder_block()
    assert classifier_nodes(graph) == set()
    assert selected(graph, CompileConfig()) == {"proj"}


def test_compute_output_with_two_consumers_is_not_a_classifier():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    graph = _graph(nodes, [_init("w", (D, D))], [_f("x", [2, D])], [_f("y", [2, D]), _f("z", [2, D])])
    # y is a graph output itself: that is the classifier rule's definition
    assert classifier_nodes(graph) == {"mm"}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Identity", ["h"], ["y"], name="id"),
        helper.make_node("Relu", ["h"], ["z"], name="relu"),
    ]
    graph = _graph(nodes, [_init("w", (D, D))], [_f("x", [2, D])], [_f("y", [2, D]), _f("z", [2, D])])
    assert classifier_nodes(graph) == set()


# ---------------------------------------------------------------------------------------------- op types


def test_op_types_filter():
    graph = mlp_with_head()
    decisions = select_nodes(graph, CompileConfig(op_types=("Gemm",), quantize_classifier=True))
    assert {n for n, s in decisions.items() if s.selected} == {"head"}
    assert "not in op_types" in decisions["fc1"].reason
    # non-compute nodes are never selected and say why
    assert decisions["relu1"].selected is False
    assert "not a compute op" in decisions["relu1"].reason


def test_add_in_op_types_selects_adds():
    graph = mlp_with_head()
    chosen = selected(graph, CompileConfig(op_types=("MatMul", "Add")))
    assert chosen == {"fc1", "fc2", "fc1_bias", "fc2_bias"}


def test_every_node_gets_a_decision():
    graph = mlp_with_head()
    assert set(select_nodes(graph, CompileConfig())) == {n.name for n in graph.nodes}


def test_selected_nodes_carry_the_config_specs():
    graph = mlp_with_head()
    config = CompileConfig(activation=QuantSpec(method=CalibrationMethod.PERCENTILE, percentile=99.0))
    decision = select_nodes(graph, config)["fc1"]
    assert decision.activation == config.activation and decision.weight == config.weight


# ---------------------------------------------------------------------------------------------- exclude


def test_exclude_by_exact_name():
    graph = mlp_with_head()
    decisions = select_nodes(graph, CompileConfig(exclude=("fc2",)))
    assert decisions["fc2"].selected is False
    assert "exclude" in decisions["fc2"].reason
    assert decisions["fc1"].selected is True


def test_exclude_exact_name_with_regex_metacharacters():
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="/layer.0/mm+"),
        helper.make_node("MatMul", ["h", "w2"], ["h2"], name="/layer_1/mm"),
        helper.make_node("Relu", ["h2"], ["y"], name="relu"),
    ]
    graph = _graph(nodes, [_init("w1", (D, D)), _init("w2", (D, D))], [_f("x", [2, D])], [_f("y", [2, D])])
    assert selected(graph, CompileConfig(exclude=("/layer.0/mm+",))) == {"/layer_1/mm"}


def test_exclude_by_regex_is_a_full_match():
    graph = mlp_with_head()
    assert selected(graph, CompileConfig(exclude=("fc[0-9]",))) == set()
    # a regex that matches only a prefix of the names matches nothing: full match, not search
    with pytest.raises(SelectionError, match="fc"):
        select_nodes(graph, CompileConfig(exclude=("fc",)))


def test_exclude_matching_nothing_is_an_error():
    graph = mlp_with_head()
    with pytest.raises(SelectionError) as info:
        select_nodes(graph, CompileConfig(exclude=("conv_does_not_exist",)))
    assert "conv_does_not_exist" in str(info.value)


def test_exclude_matching_a_non_compute_node_is_not_an_error():
    graph = mlp_with_head()
    assert selected(graph, CompileConfig(exclude=("relu1",))) == {"fc1", "fc2"}


# ---------------------------------------------------------------------------------------------- overrides


def test_override_skip():
    graph = mlp_with_head()
    config = CompileConfig(overrides=(NodeOverride(pattern="fc1", skip=True),))
    decisions = select_nodes(graph, config)
    assert decisions["fc1"].selected is False
    assert "override" in decisions["fc1"].reason
    assert decisions["fc2"].selected is True


def test_override_specs_replace_the_defaults():
    graph = mlp_with_head()
    act = QuantSpec(method=CalibrationMethod.ENTROPY)
    config = CompileConfig(overrides=(NodeOverride(pattern="fc.*", activation=act),))
    decisions = select_nodes(graph, config)
    assert decisions["fc1"].activation == act and decisions["fc2"].activation == act
    assert decisions["fc1"].weight == config.weight


def test_first_matching_override_wins():
    graph = mlp_with_head()
    config = CompileConfig(overrides=(NodeOverride(pattern="fc1", skip=True),
                                      NodeOverride(pattern="fc.*", activation=QuantSpec(symmetric=True))))
    decisions = select_nodes(graph, config)
    assert decisions["fc1"].selected is False
    assert decisions["fc2"].activation.symmetric is True


def test_override_matching_nothing_is_an_error():
    graph = mlp_with_head()
    with pytest.raises(SelectionError, match="nothing_here"):
        select_nodes(graph, CompileConfig(overrides=(NodeOverride(pattern="nothing_here", skip=True),)))
