"""What each model output is for, read off the graph, so fidelity is measured the way its consumer reads it.

An output's role comes from the op that produces it, looking through ops that only move values (Reshape,
Transpose, Squeeze, Unsqueeze, Flatten, Identity, Cast), and from its rank:

    CLASS_SCORES     rank 2 [B, C], C > 1, made by a score head: Softmax / LogSoftmax / Sigmoid, or a
                     Gemm / MatMul (+ bias Add) with a constant weight                        → top-1 agreement
    SEQUENCE_SCORES  rank 3 [B, T, C] (or [T, B, C]), C > 1, made by a score head            → per-step argmax
                     agreement, and sequence agreement: the argmax path with repeats collapsed is identical
                     (what greedy CTC decoding reads; a lower bound on string agreement whatever the blank id)
    DETECTION        rank 3, made by a Concat with a Sigmoid / Softmax branch (boxes next to scores: [B, 4+C, N]
                     or [B, N, 4+C])                                            → score error and box error on
                     candidates FP32 is confident about, and their class agreement
    CANDIDATE_SCORES rank 3 made by a Sigmoid: independent per-candidate class scores of a detector head
                     ([B, N, C], anchors or points, no boxes)       → the same, without boxes
    FEATURES         rank ≥ 2 made by anything else: embeddings, hidden states, feature maps (LayerNorm,
                     pooling, L2 normalisation, residual Add, Conv)
                                                                                              → cosine only
    VALUES           everything else (rank ≤ 1, single-column outputs)                        → cosine / SQNR

Cosine, SQNR and relative error are reported for every role; the role adds the metric its consumer needs and
decides what "top-1" means in the summary and in accuracy budgets (top-1 for class scores, sequence agreement
for sequence scores; nothing for embeddings, where top-1 means nothing).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import numpy as np
import onnx

MOVE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"})
SCORE_OPS = frozenset({"Softmax", "LogSoftmax", "Sigmoid"})
LINEAR_OPS = frozenset({"Gemm", "MatMul"})
# a detection candidate counts as confident when FP32's best class score reaches this (typical NMS thresholds
# are 0.25-0.5; the lower end keeps more candidates in the comparison)
CONFIDENT_SCORE = 0.25


class OutputRole(enum.Enum):
    CLASS_SCORES = "class_scores"
    SEQUENCE_SCORES = "sequence_scores"
    DETECTION = "detection"
    CANDIDATE_SCORES = "candidate_scores"
    FEATURES = "features"
    VALUES = "values"


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _source(name: str, producers: Mapping[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The first producer of ``name`` that computes values, looking through ops that only move them."""
    node = producers.get(name)
    seen = 0
    while node is not None and node.op_type in MOVE_OPS and node.input and seen < 64:
        node, seen = producers.get(node.input[0]), seen + 1
    return node


def _is_score_head(node: onnx.NodeProto | None, producers: Mapping[str, onnx.NodeProto],
                   constants: set[str]) -> bool:
    if node is None:
        return False
    if node.op_type in SCORE_OPS:
        return True
    if node.op_type in LINEAR_OPS:
        return len(node.input) > 1 and node.input[1] in constants
    if node.op_type == "Add":   # MatMul + bias, as exporters write a linear layer
        return any(_is_score_head(producers.get(i), producers, constants) and producers[i].op_type in LINEAR_OPS
                   for i in node.input if i in producers) and any(i in constants for i in node.input)
    return False


def _has_score_branch(node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto]) -> bool:
    for name in node.input:
        source = _source(name, producers)
        if source is not None and source.op_type in SCORE_OPS:
            return True
    return False


def _rank(value_info: onnx.ValueInfoProto) -> int | None:
    tensor_type = value_info.type.tensor_type
    return len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None


def infer_output_roles(model: onnx.ModelProto) -> dict[str, OutputRole]:
    """The role of every graph output (see module docstring)."""
    graph = model.graph
    producers = _producers(graph)
    constants = {t.name for t in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output}
    # a quantised model's weights arrive through DequantizeLinear of a constant: still a constant weight
    constants |= {node.output[0] for node in graph.node
                  if node.op_type == "DequantizeLinear" and node.input and node.input[0] in constants}
    roles = {}
    for output in graph.output:
        rank = _rank(output)
        node = _source(output.name, producers)
        if rank in (2, 3) and node is not None and node.op_type == "Concat" and rank == 3 \
                and _has_score_branch(node, producers):
            roles[output.name] = OutputRole.DETECTION
        elif rank == 2 and _is_score_head(node, producers, constants):
            roles[output.name] = OutputRole.CLASS_SCORES
        elif rank == 3 and node is not None and node.op_type == "Sigmoid":
            roles[output.name] = OutputRole.CANDIDATE_SCORES
        elif rank == 3 and _is_score_head(node, producers, constants):
            roles[output.name] = OutputRole.SEQUENCE_SCORES
        elif rank is not None and rank >= 2:
            roles[output.name] = OutputRole.FEATURES
        else:
            roles[output.name] = OutputRole.VALUES
    return roles


def role_from_shape(shape: tuple[int, ...]) -> OutputRole:
    """Without the graph (outputs compared on their own): rank-2 multi-column outputs are read as class scores."""
    return OutputRole.CLASS_SCORES if len(shape) == 2 and shape[1] > 1 else OutputRole.VALUES


# ---- per-role metrics: pure functions of FP32 output y and the other model's output ŷ ----------------------

def collapsed_path(steps: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC's reading of one sequence of argmax ids: repeats collapsed."""
    if steps.size == 0:
        return ()
    keep = np.concatenate([[True], steps[1:] != steps[:-1]])
    return tuple(int(s) for s in steps[keep])


def sequence_rows(values: np.ndarray) -> np.ndarray:
    """[B, T, C] or [T, B, C] scores as argmax ids [sequences, T]: the batch axis is the one of size 1 when
    one of the first two is (items are batch 1 in calibration), else axis 0."""
    ids = values.argmax(-1)
    if ids.shape[0] != 1 and ids.shape[1] == 1:
        ids = ids.T
    return ids


def sequence_agreement(reference: np.ndarray, approx: np.ndarray) -> tuple[list[bool], list[bool]]:
    """Per-step argmax agreement and per-sequence collapsed-path equality."""
    ref, app = sequence_rows(reference), sequence_rows(approx.reshape(reference.shape))
    steps = (ref == app).ravel().tolist()
    sequences = [collapsed_path(r) == collapsed_path(a) for r, a in zip(ref, app)]
    return steps, sequences


def detection_layout(values: np.ndarray) -> np.ndarray:
    """[B, 4+C, N] or [B, N, 4+C] as candidates [B·N, 4+C]: the attribute axis is the shorter of the last two."""
    if values.shape[1] <= values.shape[2]:
        values = np.swapaxes(values, 1, 2)
    return values.reshape(-1, values.shape[-1])


def detection_errors(reference: np.ndarray, approx: np.ndarray, box_columns: int = 4) -> dict[str, float]:
    """On candidates whose FP32 best class score ≥ CONFIDENT_SCORE: mean |Δ best score|, mean |Δ box| relative
    to the mean |box| (when the first ``box_columns`` attributes are a box), and the share whose best class is
    the same and still confident. Candidate-score outputs ([B, N, C], no boxes) have box_columns = 0."""
    if box_columns:
        ref, app = detection_layout(reference), detection_layout(approx.reshape(reference.shape))
    else:
        ref, app = reference.reshape(-1, reference.shape[-1]), approx.reshape(-1, reference.shape[-1])
    if ref.shape[1] <= box_columns:
        return {}
    ref_scores, app_scores = ref[:, box_columns:], app[:, box_columns:]
    confident = ref_scores.max(1) >= CONFIDENT_SCORE
    if not confident.any():
        return {"confident_candidates": 0}
    r, a = ref_scores[confident], app_scores[confident]
    same = (r.argmax(1) == a.argmax(1)) & (a.max(1) >= CONFIDENT_SCORE)
    errors = {"confident_candidates": int(confident.sum()),
              "score_abs_error": float(np.mean(np.abs(r.max(1) - a.max(1)))),
              "candidate_agreement": float(np.mean(same))}
    if box_columns:
        boxes_ref, boxes_app = ref[confident, :box_columns], app[confident, :box_columns]
        box_scale = float(np.mean(np.abs(boxes_ref))) or 1.0
        errors["box_relative_error"] = float(np.mean(np.abs(boxes_ref - boxes_app)) / box_scale)
    return errors
