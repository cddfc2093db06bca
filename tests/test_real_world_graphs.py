"""End to end on the generated models that reproduce what real exports look like (models/generate.py):
Constant-node weights, opset 11, pads computed from Shape arithmetic, int32/float/scalar inputs, weights inside
If branches and Loop/Scan bodies; and custom domains (com.microsoft, ai.onnx.ml) passing through untouched.

Each compile is checked for structure (how many compute nodes were quantised and why the others were not, the
opset emitted, onnx.checker's full check) and for numbers: on held-out samples (another seed than calibration)
every output's cosine to the FP32 model is >= 0.99, which one int8 layer or a few meet with margin (one int8
layer costs 1 - cosine ~ 1e-4 on these models) as long as the held-out inputs stay inside the calibrated
ranges."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.generate import MODELS, make_samples
from qcompile import compile_model
from qcompile.config import ClassifierConfig, CompileConfig

MIN_COSINE = 0.99
CLASSIFIER = "final classifier kept float (set quantize_classifier to quantise it)"

# name -> (quantised compute nodes, the float ones with their reason, ai.onnx opset emitted)
PATTERNS = {
    "constant_weights_cnn": (2, {"MatMul_0": CLASSIFIER}, 13),
    "opset11_cnn": (2, {"Gemm_0": CLASSIFIER}, 13),                 # upgraded: per-channel Q/DQ needs 13
    "shape_computed_pad_cnn": (3, {"Gemm_0": CLASSIFIER}, 13),
    "multi_dtype_inputs": (3, {}, 17),
    "if_subgraph_model": (3, {"then/MatMul_0": CLASSIFIER}, 17),    # the then-branch computes the model output
    "loop_scan_model": (4, {"MatMul_1": CLASSIFIER}, 17),
}


def _cosines(reference: onnx.ModelProto, candidate: onnx.ModelProto,
             feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (reference, candidate)]
    names = [o.name for o in sessions[0].get_outputs()]
    worst = dict.fromkeys(names, 1.0)
    for feed in feeds:
        for name, a, b in zip(names, *(s.run(names, feed) for s in sessions)):
            a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            worst[name] = min(worst[name], cosine)
    return worst


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _all_nodes(body)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_model_compiles_quantised_and_close_to_fp32(name: str) -> None:
    quantised, kept_float, opset = PATTERNS[name]
    model = MODELS[name]()
    # 64 samples: with min-max ranges, a held-out input beyond the calibrated range clips (16 samples, of which
    # 5 took the If's else-branch, left x's range 8 % short of one held-out sample: cosine 0.967 there)
    # the selection rule's float classifier (its measured precision: tests/test_classifier_decision.py)
    result = compile_model(model, make_samples(name, 64), CompileConfig(classifier=ClassifierConfig(measure=False)))
    data = result.report.data
    assert data["summary"]["quantized_nodes"] == quantised
    assert data["summary"]["unfused_nodes"] == 0
    floats = {n["name"]: n["reason"] for n in data["nodes"] if n["status"] != "quantized"}
    assert floats == kept_float
    onnx.checker.check_model(result.model, full_check=True)
    assert {o.domain or "ai.onnx": o.version for o in result.model.opset_import}["ai.onnx"] == opset
    ops = [n.op_type for n in _all_nodes(result.model.graph)]
    assert ops.count("DequantizeLinear") >= quantised   # at least one weight DQ per quantised node
    assert "Constant" not in ops                           # Constant-node weights became initializers
    held_out = make_samples(name, 8, seed=12345)
    for output, cosine in _cosines(model, result.model, held_out).items():
        assert cosine >= MIN_COSINE, (output, cosine)


def test_shape_computed_pads_fold_away() -> None:
    result = compile_model(MODELS["shape_computed_pad_cnn"](), make_samples("shape_computed_pad_cnn", 8))
    ops = {n.op_type for n in result.model.graph.node}
    assert not ops & {"Shape", "Pad", "Ceil", "Floor"}, ops   # folded into constants, then into the Convs' pads


def _custom_domain_model() -> onnx.ModelProto:
    """x [N,16] -> MatMul -> com.microsoft.Gelu -> MatMul -> ai.onnx.ml.Normalizer(L2) -> y, at opset 11."""
    rng = np.random.default_rng(5)
    w1 = numpy_helper.from_array((rng.standard_normal((16, 32)) / 4).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((32, 8)) / 5).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Gelu", ["h"], ["g"], name="gelu", domain="com.microsoft"),
             helper.make_node("MatMul", ["g", "w2"], ["z"], name="fc2"),
             helper.make_node("Normalizer", ["z"], ["y"], name="normalize", domain="ai.onnx.ml", norm="L2")]
    graph = helper.make_graph(nodes, "custom_domains",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11), helper.make_opsetid("ai.onnx.ml", 2),
                                                   helper.make_opsetid("com.microsoft", 1)], ir_version=8)


def test_custom_domains_pass_through_an_opset_upgrade() -> None:
    model = _custom_domain_model()
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(16)]
    result = compile_model(model, calib)
    opsets = {o.domain or "ai.onnx": o.version for o in result.model.opset_import}
    assert opsets["ai.onnx"] == 13 and opsets["ai.onnx.ml"] == 2 and opsets["com.microsoft"] == 1
    by_name = {n.name: n for n in result.model.graph.node}
    for original in model.graph.node[1::2]:                  # Gelu and Normalizer: same op, domain, attributes
        emitted = by_name[original.name]
        assert (emitted.op_type, emitted.domain, list(emitted.attribute)) == (
            original.op_type, original.domain, list(original.attribute))
    assert result.report.data["summary"]["quantized_nodes"] == 2
    held_out = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(4)]
    assert _cosines(model, result.model, held_out)["y"] >= MIN_COSINE
