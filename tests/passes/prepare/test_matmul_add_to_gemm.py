"""MatMul + bias Add on matrices -> Gemm: structure, exact function (ORT unoptimised, 1e-6 relative), and the
cases left alone (rank-3 activations, non-constant or wrongly shaped bias, MatMul output used elsewhere)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.config import CompileConfig
from qcompile.pass_infra import PassContext
from qcompile.passes.prepare.infer_shapes import InferShapesPass
from qcompile.passes.prepare.matmul_add_to_gemm import MatMulAddToGemmPass

from tests.passes.ort_reference import run_unoptimized

RNG = np.random.default_rng(3)


def _model(x_shape, bias_shape=(8,), bias_is_input=False, extra_consumer=False) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(RNG.standard_normal((16, 8)).astype(np.float32), "w")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    if bias_is_input:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, list(bias_shape)))
    else:
        inits.append(numpy_helper.from_array(RNG.standard_normal(bias_shape).astype(np.float32), "b"))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Add", ["h", "b"], ["y"], name="bias_add")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["h"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    graph = gs.import_onnx(model)
    ctx = PassContext(config=CompileConfig(), target=None)
    InferShapesPass().run(graph, ctx)
    result = MatMulAddToGemmPass().run(graph, ctx)
    return gs.export_onnx(graph), dict(result.stats)


@pytest.mark.parametrize("bias_shape", [(8,), (1, 8)])
def test_matrix_matmul_with_bias_becomes_one_gemm_with_the_same_function(bias_shape) -> None:
    model = _model(("batch", 16), bias_shape)
    rewritten, stats = _run(model)
    assert Counter(n.op_type for n in rewritten.graph.node) == Counter({"Gemm": 1})
    assert rewritten.graph.node[0].name == "fc" and stats["folded"] == 1
    feed = {"x": RNG.standard_normal((5, 16)).astype(np.float32)}
    np.testing.assert_allclose(run_unoptimized(rewritten, feed)[0], run_unoptimized(model, feed)[0],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(x_shape=("batch", 4, 16)),
                                    dict(x_shape=("batch", 16), bias_is_input=True),
                                    dict(x_shape=("batch", 16), bias_shape=(5, 8)),
                                    dict(x_shape=("batch", 16), extra_consumer=True)])
def test_left_alone(kwargs) -> None:
    rewritten, stats = _run(_model(**kwargs))
    assert "Gemm" not in {n.op_type for n in rewritten.graph.node}
    assert stats.get("folded", 0) == 0
