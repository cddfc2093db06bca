"""check_fusion lists every Q -> DQ pair ORT left in the optimised graph (a float op between integers), and
compile_model turns each into a warning; a model whose Q/DQ all fused has none."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompile.api import compile_model
from qcompile.config import CompileConfig
from qcompile.runtime_ext.fusion import check_fusion


def _qdq_around_float_op() -> onnx.ModelProto:
    """x -> Q -> DQ -> Exp -> y: nothing integer can absorb the pair."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_Q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"], name="x_DQ"),
             helper.make_node("Exp", ["xdq"], ["y"], name="exp")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_pair_around_a_float_op_is_reported():
    report = check_fusion(_qdq_around_float_op(), [])
    assert report.unfused_qdq_pairs == ("x_Q -> x_DQ on x",)
    assert report.as_json()["unfused_qdq_pairs"] == ["x_Q -> x_DQ on x"]


def test_compiled_tiny_transformer_has_no_unfused_pair():
    from models.generate import make_samples, tiny_transformer
    result = compile_model(tiny_transformer(), make_samples("tiny_transformer", 4), CompileConfig(fidelity_samples=0))
    assert result.report.data["ort"]["unfused_qdq_pairs"] == []
    assert not [w for w in result.report.data["warnings"] if "Q/DQ pair" in w]
    assert result.report.data["ort"]["leftover_qdq"] > 0          # the input Qs of the integer kernels remain
