"""Quantisation inside If/Loop/Scan bodies: which nodes are quantised (structure), that ORT fuses them, that the
model still matches FP32 (tolerances stated per test), and that a branch no calibration sample takes stays
float with its reason in the report."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from models.generate import if_subgraph_model, loop_scan_model, make_samples
from qcompile import CompileConfig, compile_model
from qcompile.config import ClassifierConfig
from qcompile.errors import SelectionError

from tests.passes.ort_reference import run_unoptimized


def _bodies(model: onnx.ModelProto) -> dict[str, onnx.GraphProto]:
    return {f"{node.name}.{attr.name}": attr.g for node in model.graph.node for attr in node.attribute
            if attr.type == onnx.AttributeProto.GRAPH}


def _ops(graph: onnx.GraphProto) -> Counter:
    return Counter(n.op_type for n in graph.node)


def _nodes(report) -> dict[str, dict]:
    return {n["name"]: n for n in report.data["nodes"]}


def _relative_l2_error(reference: onnx.ModelProto, quantized: onnx.ModelProto, feeds) -> float:
    """max over outputs of ||Q - R|| / ||R||, each output's values pooled over all feeds."""
    pairs = [list(zip(run_unoptimized(reference, f), run_unoptimized(quantized, f))) for f in feeds]
    worst = 0.0
    for index in range(len(pairs[0])):
        ref = np.concatenate([p[index][0].reshape(-1) for p in pairs])
        q = np.concatenate([p[index][1].reshape(-1) for p in pairs])
        worst = max(worst, float(np.linalg.norm(q - ref) / (np.linalg.norm(ref) + 1e-12)))
    return worst


def _if_samples(n: int, use_a: bool | None, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, 16)).astype(np.float32),
             "use_a": np.array(bool(i % 2) if use_a is None else use_a)} for i in range(n)]


def test_if_branches_are_quantised_and_fused() -> None:
    model = if_subgraph_model()
    result = compile_model(model, _if_samples(16, None), CompileConfig(quantize_classifier=True))
    nodes = _nodes(result.report)
    for name in ("MatMul_0", "then/MatMul_0", "else/MatMul_0", "else/MatMul_1"):
        assert nodes[name]["status"] == "quantized", (name, nodes[name])
        assert nodes[name]["fused"] is True, (name, nodes[name]["ort_kernel"])
    bodies = _bodies(result.model)
    for body in bodies.values():
        ops = _ops(body)
        assert ops["QuantizeLinear"] >= 1 and ops["DequantizeLinear"] >= 2, ops
    onnx.checker.check_model(result.model, full_check=True)
    # int8 weights and activations: relative L2 error under 3 % on held-out inputs, both branches
    assert _relative_l2_error(model, result.model, _if_samples(8, None, seed=7)) < 0.03


def test_branch_computing_the_output_keeps_its_classifier_float_under_the_selection_rule() -> None:
    result = compile_model(if_subgraph_model(), _if_samples(16, None),
                           CompileConfig(classifier=ClassifierConfig(measure=False)))
    nodes = _nodes(result.report)
    # then: MatMul -> bias Add -> If output -> model output: the logits
    assert nodes["then/MatMul_0"]["status"] == "skipped"
    assert "classifier" in nodes["then/MatMul_0"]["reason"]
    # else: the MatMuls feed a residual Add of two activations, not the logits directly
    assert nodes["else/MatMul_0"]["status"] == "quantized"
    assert nodes["else/MatMul_1"]["status"] == "quantized"


def test_branch_never_taken_stays_float_with_a_reason() -> None:
    model = if_subgraph_model()
    result = compile_model(model, _if_samples(8, use_a=True), CompileConfig(quantize_classifier=True))
    nodes = _nodes(result.report)
    assert nodes["then/MatMul_0"]["status"] == "quantized"
    for name in ("else/MatMul_0", "else/MatMul_1"):
        assert nodes[name]["status"] == "skipped"
        assert "never ran on the calibration data" in nodes[name]["reason"]
    else_body = next(g for key, g in _bodies(result.model).items() if key.endswith("else_branch"))
    assert _ops(else_body)["QuantizeLinear"] == 0
    # the float branch still runs (on the quantised outer activations): relative L2 error under 3 %
    assert _relative_l2_error(model, result.model, _if_samples(4, use_a=False, seed=3)) < 0.03


def test_loop_and_scan_bodies_are_quantised_and_fused() -> None:
    model = loop_scan_model()
    # 64 sequences: the loop state's range grows with the input scale, 16 would not cover held-out inputs
    result = compile_model(model, make_samples("loop_scan_model", 64),
                           CompileConfig(classifier=ClassifierConfig(measure=False)))
    nodes = _nodes(result.report)
    for name in ("MatMul_0", "scan/MatMul_0", "scan/MatMul_1", "loop/MatMul_0"):
        assert nodes[name]["status"] == "quantized", (name, nodes[name])
        assert nodes[name]["fused"] is True, (name, nodes[name]["ort_kernel"])
    assert nodes["MatMul_1"]["status"] == "skipped"          # the classifier, outside the bodies
    assert result.report.data["summary"]["unfused_nodes"] == 0
    onnx.checker.check_model(result.model, full_check=True)
    # recurrent state through tanh and 2 loop steps: relative L2 error under 5 % on held-out sequences
    assert _relative_l2_error(model, result.model, make_samples("loop_scan_model", 12, seed=99)) < 0.05


def test_exclude_can_name_a_node_inside_a_body_and_typos_still_fail() -> None:
    samples = _if_samples(8, None)
    result = compile_model(if_subgraph_model(), samples,
                           CompileConfig(quantize_classifier=True, exclude=("else/MatMul_1",)))
    nodes = _nodes(result.report)
    assert nodes["else/MatMul_1"]["status"] == "skipped" and "exclude" in nodes["else/MatMul_1"]["reason"]
    assert nodes["else/MatMul_0"]["status"] == "quantized"
    with pytest.raises(SelectionError, match="matches no node"):
        compile_model(if_subgraph_model(), samples, CompileConfig(exclude=("else/NoSuchNode",)))
