"""Statistics of tensors inside If/Loop/Scan bodies equal those of the same values read from model outputs."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.generate import if_subgraph_model, loop_scan_model, make_samples
from qcompile.calibrators.collector import collect_statistics
from qcompile.calibrators.subgraph_outputs import merge_stacked_axes, subgraph_tensor_names
from qcompile.pass_infra import StatKind, StatRequest

from tests.passes.ort_reference import run_unoptimized


def test_scan_body_tensor_range_equals_the_stacked_scan_output() -> None:
    model = loop_scan_model()
    graph = gs.import_onnx(model)
    assert "s_out" in subgraph_tensor_names(graph)
    samples = make_samples("loop_scan_model", 6)
    requests = [StatRequest("s_out"), StatRequest("s_out", kind=StatKind.CHANNEL_ABSMAX, axis=-1)]
    stats = collect_statistics(graph, requests, samples)
    states = np.concatenate([run_unoptimized(model, s)[1].reshape(-1, 16) for s in samples])  # [T*N, 16]
    assert stats[requests[0]].min == pytest.approx(float(states.min()), rel=1e-6)
    assert stats[requests[0]].max == pytest.approx(float(states.max()), rel=1e-6)
    np.testing.assert_allclose(np.asarray(stats[requests[1]].max), np.abs(states).max(axis=0), rtol=1e-6)


def test_if_branch_tensor_sees_only_the_samples_that_took_the_branch() -> None:
    model = if_subgraph_model()
    rng = np.random.default_rng(5)
    samples = [{"x": rng.standard_normal((2, 16)).astype(np.float32), "use_a": np.array(i % 3 == 0)}
               for i in range(9)]
    request = StatRequest("then_y")
    stats = collect_statistics(gs.import_onnx(model), [request], samples)
    taken = np.concatenate([run_unoptimized(model, s)[0] for s in samples if s["use_a"]])
    assert stats[request].min == pytest.approx(float(taken.min()), rel=1e-6)
    assert stats[request].max == pytest.approx(float(taken.max()), rel=1e-6)


def test_branch_that_never_ran_has_no_statistic_but_main_graph_tensors_do() -> None:
    rng = np.random.default_rng(2)
    samples = [{"x": rng.standard_normal((1, 16)).astype(np.float32), "use_a": np.array(True)} for _ in range(3)]
    requests = [StatRequest("else_y"), StatRequest("h")]
    stats = collect_statistics(gs.import_onnx(if_subgraph_model()), requests, samples)
    assert requests[0] not in stats and requests[1] in stats


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=0, max_size=3), st.lists(st.integers(1, 3), min_size=0, max_size=3))
def test_merge_stacked_axes_keeps_the_data_axes(stack: list[int], data: list[int]) -> None:
    array = np.arange(int(np.prod(stack + data)), dtype=np.float32).reshape(stack + data)
    merged = merge_stacked_axes(array, len(stack))
    assert merged.size == array.size
    if stack and data:
        assert merged.shape[1:] == tuple(data[1:])
    assert np.array_equal(np.sort(merged.reshape(-1)), np.sort(array.reshape(-1)))
