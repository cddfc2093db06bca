"""Shape inference: symbolic dims survive, bodies of control-flow nodes get types, and an op ONNX cannot type
(a com.microsoft contrib op) is named in a warning while compilation goes on and quantises around it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from models.generate import loop_scan_model
from qcompile import CompileConfig, compile_model
from qcompile.pass_infra import PassContext
from qcompile.passes.prepare.infer_shapes import InferShapesPass

RNG = np.random.default_rng(11)


def _contrib_model():
    w1 = numpy_helper.from_array((RNG.standard_normal((16, 32)) / 4).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((RNG.standard_normal((32, 8)) / 4).astype(np.float32), "w2")
    graph = helper.make_graph([
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Gelu", ["h"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w2"], ["z"], name="fc2"),
        helper.make_node("Relu", ["z"], ["y"], name="relu"),
    ], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])], initializer=[w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_symbolic_dims_stay_symbolic_and_bodies_are_typed() -> None:
    graph = gs.import_onnx(loop_scan_model())
    for body in graph.subgraphs(recursive=True):
        for node in body.nodes:
            for tensor in node.outputs:
                tensor.dtype, tensor.shape = None, None
    ctx = PassContext(config=CompileConfig(), target=None)
    result = InferShapesPass().run(graph, ctx)
    assert result.stats["annotated"] >= 5 and "untyped_tensors" not in result.stats
    tensors = {t.name: t for body in graph.subgraphs(recursive=True) for n in body.nodes for t in n.outputs}
    assert tensors["s_out"].dtype == np.float32 and tensors["s_out"].shape == ["batch", 16]
    assert ctx.warnings == []


def test_contrib_op_is_named_and_compilation_goes_on() -> None:
    model = _contrib_model()
    samples = [{"x": RNG.standard_normal((1, 5, 16)).astype(np.float32)} for _ in range(8)]
    result = compile_model(model, samples, CompileConfig(quantize_classifier=True))
    warnings = result.report.data["warnings"]
    assert any("'gelu'" in w and "com.microsoft" in w for w in warnings), warnings
    nodes = {n["name"]: n for n in result.report.data["nodes"]}
    assert nodes["fc1"]["status"] == nodes["fc2"]["status"] == "quantized"
    # the contrib op passes through untouched, in its domain
    gelu = [n for n in result.model.graph.node if n.op_type == "Gelu"]
    assert len(gelu) == 1 and gelu[0].domain == "com.microsoft"
    assert {o.domain: o.version for o in result.model.opset_import}.get("com.microsoft") == 1
    assert result.report.data["fidelity"]["outputs"]["y"]["cosine_mean"] > 0.999
