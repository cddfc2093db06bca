"""Body-tensor exposure for calibration (calibrators/subgraph_outputs.py) at depth (test_subgraph_outputs.py
covers one level): a tensor two Loop levels deep
is stacked per iteration ([T1, T2, *shape]) and merged into its first axis; samples whose loops run zero
iterations contribute an empty array; the statistics equal a numpy simulation of the loops exactly; an If branch
inside a Loop body is left out (its body stays float), never a crash."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.calibrators.collector import collect_statistics
from qcompile.calibrators.subgraph_outputs import conditional_in_stacking_names
from qcompile.pass_infra import StatKind, StatRequest

WIDTH = 4
W = (np.arange(WIDTH * WIDTH, dtype=np.float32).reshape(WIDTH, WIDTH) - 7.5) / 8.0


def _nested_loops(with_if: bool = False) -> onnx.ModelProto:
    """x [1, 4]; Loop(outer) { Loop(inner) { t = MatMul(y, W); y' = tanh(t) } } with trip counts from the inputs.
    With ``with_if`` the inner body computes t inside an If(iteration == 0) instead."""
    i2, c2, y = "inner_iter", "inner_cond", "inner_y"
    t_nodes = [helper.make_node("MatMul", [y, "W"], ["t"], name="matmul")]
    if with_if:
        branch = helper.make_graph(t_nodes, "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, WIDTH])])
        other = helper.make_graph([helper.make_node("Identity", [y], ["t_else"], name="else_id")], "else", [],
                                  [helper.make_tensor_value_info("t_else", TensorProto.FLOAT, [1, WIDTH])])
        t_nodes = [helper.make_node("Equal", [i2, "zero"], ["first"], name="is_first"),
                   helper.make_node("If", ["first"], ["t_if"], name="branch", then_branch=branch, else_branch=other),
                   helper.make_node("Identity", ["t_if"], ["t2"], name="t_id")]
    t_out = "t2" if with_if else "t"
    inner = helper.make_graph(
        t_nodes + [helper.make_node("Tanh", [t_out], ["inner_y_out"], name="tanh"),
                   helper.make_node("Identity", [c2], ["inner_cond_out"], name="inner_cond_id")], "inner",
        [helper.make_tensor_value_info(i2, TensorProto.INT64, []), helper.make_tensor_value_info(c2, TensorProto.BOOL, []),
         helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("inner_cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("inner_y_out", TensorProto.FLOAT, [1, WIDTH])])
    outer = helper.make_graph(
        [helper.make_node("Loop", ["n_inner", "", "outer_y"], ["outer_y_out"], name="inner_loop", body=inner),
         helper.make_node("Identity", ["outer_cond"], ["outer_cond_out"], name="outer_cond_id")], "outer",
        [helper.make_tensor_value_info("outer_iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("outer_cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("outer_y", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("outer_cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("outer_y_out", TensorProto.FLOAT, [1, WIDTH])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n_outer", "", "x"], ["y"], name="outer_loop", body=outer)], "nested_loops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH]),
         helper.make_tensor_value_info("n_outer", TensorProto.INT64, []),
         helper.make_tensor_value_info("n_inner", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array(0, np.int64), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


def _feeds(trips: list[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"x": rng.standard_normal((1, WIDTH)).astype(np.float32), "n_outer": np.array(a, np.int64),
             "n_inner": np.array(b, np.int64)} for a, b in trips]


def _simulated_t(feed) -> list[np.ndarray]:
    """Every value t takes: the numpy reference of the two loops."""
    values, y = [], feed["x"]
    for _ in range(int(feed["n_outer"])):
        for _ in range(int(feed["n_inner"])):
            t = y @ W
            values.append(t)
            y = np.tanh(t)
    return values


@pytest.mark.parametrize("trips", [[(2, 3), (1, 1), (3, 2)], [(2, 3), (0, 4), (2, 0)]], ids=["all_run", "zero_trips"])
def test_nested_loop_tensor_statistics_equal_the_numpy_loops(trips):
    graph = gs.import_onnx(_nested_loops())
    feeds = _feeds(trips)
    request = StatRequest("t", kind=StatKind.RANGE)
    channel = StatRequest("t", kind=StatKind.CHANNEL_ABSMAX, axis=-1)
    ranges = collect_statistics(graph, [request, channel], feeds)
    values = np.concatenate([v for feed in feeds for v in _simulated_t(feed)])
    assert len(values) == sum(a * b for a, b in trips)
    np.testing.assert_allclose([ranges[request].min, ranges[request].max], [values.min(), values.max()], rtol=1e-6)
    np.testing.assert_allclose(ranges[channel].max, np.abs(values).max(axis=0), rtol=1e-6)


def test_loops_that_never_iterate_leave_the_body_without_statistics():
    graph = gs.import_onnx(_nested_loops())
    request = StatRequest("t", kind=StatKind.RANGE)
    assert request not in collect_statistics(graph, [request], _feeds([(0, 3), (2, 0)]))


def test_if_inside_a_loop_is_left_out_and_the_rest_still_calibrates():
    graph = gs.import_onnx(_nested_loops(with_if=True))
    assert "t" in conditional_in_stacking_names(graph) and "t2" not in conditional_in_stacking_names(graph)
    requests = [StatRequest("t"), StatRequest("t2")]
    ranges = collect_statistics(graph, requests, _feeds([(2, 2), (1, 3)]))
    assert StatRequest("t") not in ranges and StatRequest("t2") in ranges
