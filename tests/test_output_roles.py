"""Task-aware fidelity (qcompile/accuracy/output_roles.py): the output's role picks the metric, for the report,
the CLI summary and the accuracy budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from qcompile import compile_model
from qcompile.accuracy.fidelity import FidelityAccumulator
from qcompile.accuracy.output_roles import OutputRole, output_role
from qcompile.cli import main
from qcompile.config import AccuracyBudget, CompileConfig
from qcompile.errors import ConfigError

RNG = np.random.default_rng(0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name, value, role", [
    ("logits", RNG.standard_normal((4, 10)), OutputRole.LOGITS),
    ("y", RNG.standard_normal((4, 10)), OutputRole.LOGITS),                       # the old rank-2 rule
    ("y", _softmax(RNG.standard_normal((2, 7, 30))), OutputRole.SEQUENCE),         # CTC probabilities
    ("fetch_name_0", _softmax(RNG.standard_normal((40, 1, 30))), OutputRole.SEQUENCE),   # time-major
    ("token_logits", RNG.standard_normal((2, 7, 30)), OutputRole.SEQUENCE),
    ("last_hidden_state", RNG.standard_normal((2, 7, 30)), OutputRole.EMBEDDING),
    ("sentence_embedding", RNG.standard_normal((4, 16)), OutputRole.EMBEDDING),
    ("out", (lambda v: v / np.linalg.norm(v, axis=1, keepdims=True))(RNG.standard_normal((4, 16))),
     OutputRole.EMBEDDING),                                                        # unit-norm rows
    ("y", RNG.standard_normal((2, 7, 30)), OutputRole.TENSOR),                     # no sign of class scores
    ("prob_map", RNG.uniform(0, 1, (1, 1, 8, 8)), OutputRole.TENSOR),
    ("y", RNG.standard_normal(5), OutputRole.TENSOR),
])
def test_output_role_rules(name, value, role):
    assert output_role(name, value.astype(np.float32)) is role


def test_sequence_top1_is_per_step_argmax_agreement():
    ref = _softmax(RNG.standard_normal((3, 9, 12))).astype(np.float32)
    app = ref.copy()
    app[0, 2] = app[0, 2][::-1]                                    # one step whose argmax moves
    acc = FidelityAccumulator()
    acc.add("y", ref[:1], app[:1])
    acc.add("y", ref[1:], app[1:])
    entry = acc.summary()["y"]
    assert entry["role"] == "sequence"
    assert entry["top1_agreement"] == pytest.approx(np.mean(ref.argmax(-1) == app.argmax(-1)))
    assert entry["top1_agreement"] == pytest.approx(26 / 27)


def test_embedding_output_gets_no_top1():
    ref = RNG.standard_normal((4, 16)).astype(np.float32)
    acc = FidelityAccumulator()
    acc.add("sentence_embedding", ref, ref + 0.01)
    entry = acc.summary()["sentence_embedding"]
    assert entry["role"] == "embedding" and "top1_agreement" not in entry


def _model(kind: str):
    """x [1, 6, 16] -> MatMul W [16, 12] -> Softmax (a sequence classifier) or -> ReduceMean over steps and
    LpNormalization (a unit-norm embedding [1, 12])."""
    weight = numpy_helper.from_array(RNG.standard_normal((16, 12)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj")]
    if kind == "sequence":
        nodes.append(helper.make_node("Softmax", ["h"], ["y"], axis=-1, name="softmax"))
        shape = [1, 6, 12]
    else:
        nodes += [helper.make_node("ReduceMean", ["h"], ["m"], axes=[1], keepdims=0, name="pool"),
                  helper.make_node("LpNormalization", ["m"], ["y"], axis=-1, p=2, name="norm")]
        shape = [1, 12]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(n: int):
    return [{"x": RNG.standard_normal((1, 6, 16)).astype(np.float32)} for _ in range(n)]


def test_min_top1_budget_works_on_a_sequence_output():
    budget = CompileConfig(accuracy_budget=AccuracyBudget(min_top1_agreement=0.9))
    result = compile_model(_model("sequence"), _feeds(8), budget)
    entry = result.report.fidelity["outputs"]["y"]
    assert entry["role"] == "sequence" and entry["top1_agreement"] >= 0.9


def test_min_top1_budget_refuses_an_embedding_output_naming_its_role():
    budget = CompileConfig(accuracy_budget=AccuracyBudget(min_top1_agreement=0.9))
    with pytest.raises(ConfigError, match="class-score output.*'y': 'embedding'"):
        compile_model(_model("embedding"), _feeds(8), budget)


@pytest.mark.parametrize("kind, shown", [("sequence", "per-step top1"), ("embedding", None)])
def test_cli_summary_names_the_metric_of_the_role(tmp_path, kind, shown):
    model_path, calib = tmp_path / "m.onnx", tmp_path / "calib"
    onnx.save(_model(kind), str(model_path))
    calib.mkdir()
    for i, feed in enumerate(_feeds(8)):
        np.savez(calib / f"s{i}.npz", **feed)
    result = CliRunner().invoke(main, [str(model_path), "--calib", str(calib), "-o", str(tmp_path / "q.onnx"),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = result.output.splitlines()[0]
    assert "y: cos" in summary
    if shown is None:
        assert "top1" not in summary
    else:
        assert shown in summary
