"""Output roles (qcompile/accuracy/output_roles.py): read off the graph, they decide what fidelity measures —
top-1 on class scores, per-step and collapsed-sequence argmax agreement on [B, T, C] scores, confident-candidate
errors on detection outputs, nothing but cosine on embeddings — in the summary, the report and the budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile import CompileConfig, compile_model
from qcompile.accuracy.fidelity import FidelityAccumulator, compare_outputs
from qcompile.accuracy.output_roles import (OutputRole, collapsed_path, detection_errors, infer_output_roles,
                                            sequence_agreement)
from qcompile.config import AccuracyBudget

RNG = np.random.default_rng(0)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "roles", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _vi(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def roles_model() -> onnx.ModelProto:
    """x [B, 8, 6] -> class scores (Gemm of pooled), sequence scores (MatMul + bias, then [T, B, C] transposed),
    an embedding (LayerNorm), a pooled normalised vector, a detection Concat(boxes, Sigmoid(scores))."""
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes1"], ["pooled"], keepdims=0),
        helper.make_node("Gemm", ["pooled", "w_cls", "b_cls"], ["class_scores"], transB=1),
        helper.make_node("MatMul", ["x", "w_seq"], ["seq_mm"]),
        helper.make_node("Add", ["seq_mm", "b_seq"], ["seq_logits"]),
        helper.make_node("Transpose", ["seq_logits"], ["sequence_scores"], perm=[1, 0, 2]),
        helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["embedding"], axis=-1),
        helper.make_node("ReduceL2", ["pooled", "axes1"], ["norm"], keepdims=1),
        helper.make_node("Div", ["pooled", "norm"], ["sentence_vector"]),
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[0, 2, 1]),
        helper.make_node("Slice", ["x_t", "s0", "s4", "axes1"], ["boxes"]),
        helper.make_node("Slice", ["x_t", "s4", "s6", "axes1"], ["score_logits"]),
        helper.make_node("Sigmoid", ["score_logits"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["detections"], axis=1),
        helper.make_node("ReduceSum", ["pooled"], ["total"], keepdims=0),
        helper.make_node("Sigmoid", ["x"], ["anchor_scores"]),
    ]
    inits = [_const("w_cls", RNG.standard_normal((5, 6))), _const("b_cls", RNG.standard_normal(5)),
             _const("w_seq", RNG.standard_normal((6, 7))), _const("b_seq", RNG.standard_normal(7)),
             _const("ln_scale", np.ones(6)), _const("ln_bias", np.zeros(6)),
             numpy_helper.from_array(np.array([1], np.int64), "axes1"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([4], np.int64), "s4"),
             numpy_helper.from_array(np.array([6], np.int64), "s6")]
    outputs = [_vi("class_scores", ["B", 5]), _vi("sequence_scores", [8, "B", 7]), _vi("embedding", ["B", 8, 6]),
               _vi("sentence_vector", ["B", 6]), _vi("detections", ["B", 6, 8]), _vi("total", ["B"]),
               _vi("anchor_scores", ["B", 8, 6])]
    return _model(nodes, [_vi("x", ["B", 8, 6])], outputs, inits)


def test_roles_read_off_the_graph():
    assert infer_output_roles(roles_model()) == {
        "class_scores": OutputRole.CLASS_SCORES, "sequence_scores": OutputRole.SEQUENCE_SCORES,
        "embedding": OutputRole.FEATURES, "sentence_vector": OutputRole.FEATURES,
        "detections": OutputRole.DETECTION, "total": OutputRole.VALUES,
        "anchor_scores": OutputRole.CANDIDATE_SCORES}


def test_quantised_weights_keep_the_head_a_score_head():
    """After quantisation the classifier's weight comes through DequantizeLinear: still a class-score head."""
    model = roles_model()
    result = compile_model(model, [{"x": RNG.standard_normal((1, 8, 6)).astype(np.float32)} for _ in range(4)],
                           CompileConfig(quantize_classifier=True))
    assert any(n.op_type == "DequantizeLinear" and n.output[0] in {i for g in result.model.graph.node
                                                                   if g.op_type == "Gemm" for i in g.input}
               for n in result.model.graph.node)
    assert infer_output_roles(result.model)["class_scores"] is OutputRole.CLASS_SCORES
    outputs = result.report.fidelity["outputs"]
    assert outputs["class_scores"]["role"] == "class_scores" and "top1_agreement" in outputs["class_scores"]
    assert "top1_agreement" not in outputs["sentence_vector"]          # top-1 means nothing on an embedding
    assert {"top1_agreement", "sequence_agreement"} <= set(outputs["sequence_scores"])
    assert outputs["detections"]["role"] == "detection"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=30))
def test_collapsed_path_is_idempotent_and_has_no_repeats(ids):
    path = collapsed_path(np.asarray(ids))
    assert collapsed_path(np.asarray(path)) == path
    assert all(a != b for a, b in zip(path, path[1:]))
    assert set(path) == set(ids)


def test_sequence_agreement_counts_steps_and_whole_sequences():
    ref = np.zeros((1, 6, 3), np.float32)
    ref[0, np.arange(6), [1, 1, 0, 2, 2, 0]] = 1.0
    same_reading = np.zeros_like(ref)
    same_reading[0, np.arange(6), [1, 0, 0, 2, 0, 0]] = 1.0             # 2 steps differ, both read (1, 0, 2, 0)
    other_reading = np.zeros_like(ref)
    other_reading[0, np.arange(6), [1, 2, 0, 2, 2, 0]] = 1.0            # 1 step differs: (1, 2, 0, 2, 0)
    steps, sequences = sequence_agreement(ref, ref)
    assert all(steps) and sequences == [True]
    steps, sequences = sequence_agreement(ref, same_reading)
    assert sum(steps) == 4 and sequences == [True]
    steps, sequences = sequence_agreement(ref, other_reading)
    assert sum(steps) == 5 and sequences == [False]
    transposed = np.swapaxes(ref, 0, 1)                                 # [T, B, C]: same reading
    assert sequence_agreement(transposed, transposed)[1] == [True]


def test_detection_errors_on_confident_candidates():
    ref = np.zeros((1, 6, 8), np.float32)                               # [B, 4 + 2 classes, N = 8]
    ref[0, :4] = 10.0
    ref[0, 4, :2] = 0.9                                                 # two confident candidates, class 0
    approx = ref.copy()
    approx[0, 0, 0] = 11.0                                              # one box coordinate off by 1
    approx[0, 4, 1], approx[0, 5, 1] = 0.1, 0.8                         # second candidate changes class
    errors = detection_errors(ref, approx)
    assert errors["confident_candidates"] == 2
    assert errors["candidate_agreement"] == pytest.approx(0.5)
    assert errors["box_relative_error"] == pytest.approx((1 / 8) / 10.0)
    assert errors["score_abs_error"] == pytest.approx(0.05)
    assert detection_errors(np.swapaxes(ref, 1, 2), np.swapaxes(approx, 1, 2)) == errors   # [B, N, 4 + C]


def test_budget_bounds_sequence_agreement_on_sequence_outputs():
    """--min-top1-agreement works on [B, T, C] scores (it was refused as 'needs a rank-2 logits output') and
    bounds the collapsed-sequence agreement there."""
    ref = [{"seq": np.eye(3, dtype=np.float32)[[0, 1, 2, 2]][None]} for _ in range(4)]
    off = [{"seq": np.eye(3, dtype=np.float32)[[0, 2, 2, 2]][None]}] + ref[1:]     # reads (0, 2), not (0, 1, 2)
    fidelity = compare_outputs(ref, off, roles={"seq": OutputRole.SEQUENCE_SCORES})
    assert fidelity.outputs["seq"]["top1_agreement"] == pytest.approx(15 / 16)
    assert fidelity.top1_agreement == pytest.approx(3 / 4)


def test_compile_budget_on_a_sequence_model():
    model = roles_model()
    del model.graph.output[:]
    model.graph.output.extend([_vi("sequence_scores", [8, "B", 7])])
    data = [{"x": RNG.standard_normal((1, 8, 6)).astype(np.float32)} for _ in range(6)]
    result = compile_model(model, data, CompileConfig(accuracy_budget=AccuracyBudget(min_top1_agreement=0.5)))
    assert result.report.data["fallback"] is not None
    assert result.report.fidelity["outputs"]["sequence_scores"]["role"] == "sequence_scores"


def test_unknown_outputs_fall_back_to_shape():
    acc = FidelityAccumulator()
    acc.add("logits", np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32))
    assert acc.summary()["logits"]["top1_agreement"] == 1.0 and acc.summary()["logits"]["role"] == "class_scores"


def test_candidate_scores_without_boxes():
    """A detector's per-anchor Sigmoid scores [B, N, C]: confident-candidate errors, no box error."""
    ref = np.full((1, 10, 3), 0.01, np.float32)
    ref[0, :4, 0] = 0.9
    approx = ref.copy()
    approx[0, 0, 0] = 0.2                                              # one confident candidate drops below
    errors = detection_errors(ref, approx, box_columns=0)
    assert errors == {"confident_candidates": 4, "score_abs_error": pytest.approx(0.7 / 4),
                      "candidate_agreement": 0.75}


def test_a_score_head_with_a_time_axis_at_run_time_is_read_as_a_sequence():
    """The graph says class scores (a rank-2 declared shape), the run gives [T, 1, C] (a CRNN export whose
    declared shape is wrong): per-step and collapsed-path agreement, not top-1 over the first axis."""
    from qcompile.accuracy.fidelity import compare_outputs
    from qcompile.accuracy.output_roles import OutputRole
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(6, 1, 5)).astype(np.float32)
    changed = ref.copy()
    changed[2, 0] = changed[2, 0, ::-1]          # one step's argmax moves
    fidelity = compare_outputs([{"y": ref}], [{"y": changed}], roles={"y": OutputRole.CLASS_SCORES})
    entry = fidelity.outputs["y"]
    assert entry["role"] == OutputRole.SEQUENCE_SCORES.value
    expected_steps = np.mean(ref.argmax(-1) == changed.argmax(-1))
    assert expected_steps < 1.0                  # the test changes something
    same_path = collapsed_path(ref.argmax(-1)[:, 0]) == collapsed_path(changed.argmax(-1)[:, 0])
    assert entry["top1_agreement"] == pytest.approx(expected_steps)
    assert entry["sequence_agreement"] == float(same_path)
