"""Tests for passes/fold_constants.py: Constant nodes become initializers, Identity chains and all-constant
subgraphs are evaluated once, shape arithmetic over static dims folds; numbers unchanged (ORT)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from qcompile.config import CompileConfig
from qcompile.pass_infra import PassContext
from qcompile.passes.prepare.fold_constants import FoldConstantsPass
from qcompile.passes.prepare.infer_shapes import InferShapesPass
from tests.passes.ort_reference import run_unoptimized

RTOL, ATOL = 1e-5, 1e-6

def _fold(model: onnx.ModelProto, infer: bool = False):
    graph = gs.import_onnx(model)
    ctx = PassContext(config=CompileConfig(), target=None)
    if infer:
        InferShapesPass()(graph, ctx)
    result, _ = FoldConstantsPass()(graph, ctx)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    onnx.checker.check_model(out)
    return out, result

def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]

def test_constant_weights_cnn_constants_and_identities_gone():
    from models.generate import constant_weights_cnn, make_samples
    model = constant_weights_cnn()
    feed = make_samples("constant_weights_cnn", 2)[0]
    before = run_unoptimized(model, feed)[0]
    assert _ops(model).count("Constant") == 6 and _ops(model).count("Identity") == 2
    folded, result = _fold(model)
    ops = _ops(folded)
    assert "Constant" not in ops and "Identity" not in ops
    assert sorted(ops) == sorted(["Conv", "Relu", "Conv", "Relu", "GlobalAveragePool", "Flatten", "MatMul", "Add"])
    assert result.modified and result.stats["constant_nodes_before"] == 6
    assert result.stats["nodes_removed"] == 8
    # the weights are now initializers feeding the compute nodes directly
    inits = {t.name for t in folded.graph.initializer}
    for node in folded.graph.node:
        if node.op_type in ("Conv", "MatMul"):
            assert node.input[1] in inits
    np.testing.assert_allclose(run_unoptimized(folded, feed)[0], before, rtol=RTOL, atol=ATOL)

def test_all_constant_subgraph_is_evaluated():
    a = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "a_value")
    nodes = [
        helper.make_node("Constant", [], ["a"], name="const_a", value=a),
        helper.make_node("Constant", [], ["two"], name="const_two",
                         value=numpy_helper.from_array(np.float32(2.0), "two_value")),
        helper.make_node("Mul", ["a", "two"], ["a2"], name="mul"),
        helper.make_node("Transpose", ["a2"], ["a2t"], name="transpose", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "a2t"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    before = run_unoptimized(model, {"x": x})[0]
    folded, result = _fold(model)
    assert _ops(folded) == ["MatMul"]
    weight = numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == folded.graph.node[0].input[1]))
    np.testing.assert_array_equal(weight, (np.arange(6, dtype=np.float32).reshape(2, 3) * 2).T)
    assert result.stats == {"nodes_removed": 4, "constant_nodes_before": 2}
    np.testing.assert_allclose(run_unoptimized(folded, {"x": x})[0], before, rtol=RTOL, atol=ATOL)

def test_shape_arithmetic_over_static_dims_folds_with_symbolic_batch():
    """Reshape target computed as Concat(Shape(x)[0:1]... ) keeps the symbolic batch dim dynamic, but the
    product of the static dims folds: x [N,2,3] -> Reshape(x, [-1, 2*3])."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "idx12"], ["hw"], name="gather", axis=0),
        helper.make_node("ReduceProd", ["hw"], ["prod"], name="prod", keepdims=1),
        helper.make_node("Concat", ["minus_one", "prod"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    inits = [numpy_helper.from_array(np.array([1, 2], np.int64), "idx12"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
    folded, result = _fold(model, infer=True)
    assert _ops(folded) == ["Reshape"]
    target = numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == folded.graph.node[0].input[1]))
    assert target.tolist() == [-1, 6]
    np.testing.assert_array_equal(run_unoptimized(folded, {"x": x})[0], x.reshape(5, 6))

def test_shape_computed_pad_first_pad_becomes_constant():
    from models.generate import make_samples, shape_computed_pad_cnn
    model = shape_computed_pad_cnn()
    feed = make_samples("shape_computed_pad_cnn", 1)[0]
    before = run_unoptimized(model, feed)[0]
    assert _ops(model).count("Shape") == 2
    folded, result = _fold(model, infer=True)
    assert _ops(folded).count("Shape") <= 1
    first_pad = next(n for n in folded.graph.node if n.op_type == "Pad")
    inits = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    assert first_pad.input[0] == "input"
    assert inits[first_pad.input[1]].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert result.stats["nodes_removed"] >= 14
    np.testing.assert_allclose(run_unoptimized(folded, feed)[0], before, rtol=1e-5, atol=1e-5)

def test_nothing_to_fold_is_not_modified():
    from models.generate import tiny_cnn
    model = tiny_cnn()
    folded, result = _fold(model)
    assert result.modified is False
    assert result.stats == {"nodes_removed": 0, "constant_nodes_before": 0}
    assert _ops(folded) == _ops(model)

def test_unused_graph_inputs_are_kept():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                                           helper.make_tensor_value_info("unused", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded, _ = _fold(model)
    assert [i.name for i in folded.graph.input] == ["x", "unused"]

def test_constants_inside_if_branches_are_folded():
    then_nodes = [helper.make_node("Constant", [], ["c"], name="then_const",
                                   value=numpy_helper.from_array(np.full((3,), 2.0, np.float32), "cv")),
                  helper.make_node("Mul", ["x", "c"], ["then_y"], name="then_mul")]
    else_nodes = [helper.make_node("Neg", ["x"], ["else_y"], name="else_neg")]
    then_g = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, [3])])
    else_g = helper.make_graph(else_nodes, "else", [], [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, [3])])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([1.0, -2.0, 3.0], np.float32)
    folded, _ = _fold(model)
    then_ops = [n.op_type for n in folded.graph.node[0].attribute[0].g.node] + \
        [n.op_type for n in folded.graph.node[0].attribute[1].g.node]
    assert "Constant" not in then_ops
    np.testing.assert_array_equal(run_unoptimized(folded, {"x": x, "cond": np.array(True)})[0], 2 * x)
    np.testing.assert_array_equal(run_unoptimized(folded, {"x": x, "cond": np.array(False)})[0], -x)
