"""Control flow at any depth (models/generate.py's CONTROL_FLOW_FAMILY: If/Loop/Scan nested 1-4 deep, Conv / MatMul
/ LSTM / GRU in every body, outer-scope references across levels, inliner-style names): each member compiles,
ORT runs the result, its output stays close to FP32, and the nodes inside bodies are quantised exactly where the
rule says so:

    a compute node in a body is quantised  <=>  it is recurrent (weights only, no calibration needed), or no If
                                               on its path is nested in a Loop/Scan body (its tensors can be
                                               stacked out for calibration)

A node the rule leaves float carries the reason in the report. A representative subset runs in the fast suite,
the whole family under ``-m slow``."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest

from models.generate import (CONTROL_FLOW_FAMILY, control_flow_samples, nested_control_flow,
                             nested_if_lstm_model)
from qcompile.api import compile_model
from qcompile.config import CompileConfig
from qcompile.graph.ops import COMPUTE_OPS, LOOPING_OPS, RECURRENT_OPS

# relative L2 error of the outputs of 8 held-out samples (together) vs FP32, calibrated on 64: measured median
# 0.006, at most 0.078 over the family (('Loop',) MatMul: one held-out sample lies outside the head's calibrated
# range and has 0.17 on its own; with the head excluded that member is at 0.012)
MAX_RELATIVE_ERROR = 0.1
_ENCLOSING = re.compile(r"(If|Loop|Scan)_\d+_(?:then_branch|else_branch|body)__Inline_")
FAST_SUBSET = [(("If",), "LSTM"), (("Loop",), "MatMul"), (("Scan",), "GRU"), (("If", "If"), "Conv"),
               (("Loop", "If", "Scan"), "LSTM"), (("Scan", "Loop", "If", "If"), "MatMul"),
               (("Scan", "Loop", "If", "Loop"), "GRU")]


def enclosing_kinds(node_name: str) -> list[str]:
    """The body kinds around a generated node, outermost first, read off its inliner-style name."""
    return _ENCLOSING.findall(node_name)


def can_calibrate(kinds: list[str]) -> bool:
    """False when an If on the path lies inside a Loop/Scan body: its tensors cannot be stacked out."""
    return not any(kind == "If" and any(k in LOOPING_OPS for k in kinds[:i]) for i, kind in enumerate(kinds))


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def check_member(model, op: str) -> dict[str, int]:
    result = compile_model(model, control_flow_samples(op, 64), CompileConfig())
    fp32, quantised = _session(model), _session(result.model)
    feeds = control_flow_samples(op, 8, seed=2000)
    expected = np.concatenate([fp32.run(None, feed)[0].ravel() for feed in feeds])
    got = np.concatenate([quantised.run(None, feed)[0].ravel() for feed in feeds])
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < MAX_RELATIVE_ERROR
    counts = {"body_quantized": 0, "body_float": 0}
    for entry in result.report.data["nodes"]:
        kinds = enclosing_kinds(entry["name"])
        if not kinds or entry["op_type"] not in COMPUTE_OPS | RECURRENT_OPS:
            continue
        expected_quantised = entry["op_type"] in RECURRENT_OPS or can_calibrate(kinds)
        assert (entry["status"] == "quantized") == expected_quantised, entry
        if not expected_quantised:
            assert "inside a Loop/Scan body" in entry["reason"]
        counts["body_quantized" if expected_quantised else "body_float"] += 1
    return counts


def _check(levels, op) -> None:
    counts = check_member(nested_control_flow(levels, op), op)
    # every level holds op twice in the innermost body (local + outer-scope weights) and once per If's else
    assert counts["body_quantized"] + counts["body_float"] == 2 + levels.count("If")
    assert counts["body_quantized"] >= (2 if op in RECURRENT_OPS or can_calibrate(list(levels)) else 0)


@pytest.mark.parametrize("levels,op", FAST_SUBSET, ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_family_subset(levels, op):
    _check(levels, op)


@pytest.mark.slow
@pytest.mark.parametrize("levels,op", CONTROL_FLOW_FAMILY, ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_whole_family(levels, op):
    _check(levels, op)


def test_nested_if_with_lstm_from_the_issue_compiles_and_quantises_every_inner_body():
    counts = check_member(nested_if_lstm_model(), "LSTM")
    # inner bodies: BiLSTM + skip MatMul | MatMul ; Conv | LSTM
    assert counts == {"body_quantized": 5, "body_float": 0}


def test_family_is_the_full_grid():
    assert len(CONTROL_FLOW_FAMILY) == 48 and len(set(CONTROL_FLOW_FAMILY)) == 48
    assert {len(levels) for levels, _ in CONTROL_FLOW_FAMILY} == {1, 2, 3, 4}
    assert (("Scan", "Loop", "If", "If"), "LSTM") in CONTROL_FLOW_FAMILY     # If in If in Loop in Scan
