"""Tests for calibrators/collector.py: statistics equal numpy over the tensors ORT computes, streaming
invariance (1 vs 4 vs 16 files), memory-budget grouping, graph-input tensors, and the error cases."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from models.generate import make_samples, tiny_cnn
from qcompile.api import model_input_specs
from qcompile.calibrators.collector import collect_statistics
from qcompile.config import CalibrationMethod
from qcompile.data import open_calibration_source
from qcompile.errors import CalibrationDataError, CalibrationError
from qcompile.pass_infra import StatKind, StatRequest

TENSORS = ["conv1_out", "bn1_out", "relu1_out", "conv2_out", "relu6_out", "res_conv1_out", "res_relu1_out",
           "res_conv2_out", "res_add_out", "res_relu2_out", "maxpool_out", "gap_out", "flatten_out", "logits"]
N = 16


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return tiny_cnn()


@pytest.fixture(scope="module")
def samples() -> list[dict[str, np.ndarray]]:
    return make_samples("tiny_cnn", N)


def _reference_arrays(model: onnx.ModelProto, samples, names) -> dict[str, np.ndarray]:
    """Every requested tensor for every sample, by running ORT with them as graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = [session.run(names, s) for s in samples]
    return {name: np.concatenate([o[i] for o in outs]) for i, name in enumerate(names)}


class CountingSource:
    """A re-iterable list of feeds that counts how many passes were made over it."""

    def __init__(self, items):
        self.items = list(items)
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(self.items)


def _write_split(folder, samples, files: int):
    folder.mkdir()
    x = np.concatenate([s["input"] for s in samples])
    for i, part in enumerate(np.array_split(x, files)):
        np.savez(folder / f"part_{i:03d}.npz", input=part)
    return folder


def test_minmax_equals_numpy_over_ort_tensors(model, samples):
    graph = gs.import_onnx(model)
    requests = [StatRequest(name) for name in TENSORS + ["input"]]
    stats = collect_statistics(graph, requests, samples)
    reference = _reference_arrays(model, samples, TENSORS)
    reference["input"] = np.concatenate([s["input"] for s in samples])
    assert set(stats) == set(requests)
    for request in requests:
        ref = reference[request.tensor]
        r = stats[request]
        assert not r.per_channel
        np.testing.assert_allclose(float(r.min), float(ref.min()), rtol=1e-6, atol=1e-6, err_msg=request.tensor)
        np.testing.assert_allclose(float(r.max), float(ref.max()), rtol=1e-6, atol=1e-6, err_msg=request.tensor)
    # graph inputs are read from the feeds themselves: bit exact
    assert float(stats[StatRequest("input")].max) == float(reference["input"].max())


def test_channel_absmax_equals_numpy(model, samples):
    graph = gs.import_onnx(model)
    requests = [StatRequest("relu1_out", kind=StatKind.CHANNEL_ABSMAX, axis=1),
                StatRequest("flatten_out", kind=StatKind.CHANNEL_ABSMAX, axis=-1)]
    stats = collect_statistics(graph, requests, samples)
    reference = _reference_arrays(model, samples, ["relu1_out", "flatten_out"])
    expected = np.abs(reference["relu1_out"]).max(axis=(0, 2, 3))
    np.testing.assert_allclose(stats[requests[0]].max, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats[requests[0]].min, -expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats[requests[1]].max, np.abs(reference["flatten_out"]).max(axis=0), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_streaming_invariance_1_vs_4_vs_16_files(tmp_path, model, samples, method):
    graph = gs.import_onnx(model)
    specs = model_input_specs(model)
    requests = [StatRequest(name, method=method, percentile=99.9) for name in
                ("input", "relu1_out", "res_add_out", "logits")]
    results = []
    for files in (1, 4, 16):
        folder = _write_split(tmp_path / f"split_{files}", samples, files)
        source = open_calibration_source(folder, specs)
        assert source.num_samples == N
        results.append(collect_statistics(graph, requests, source))
    for request in requests:
        ranges = [(float(r[request].min), float(r[request].max)) for r in results]
        assert ranges[0] == ranges[1] == ranges[2], (method, request.tensor, ranges)


def test_tiny_memory_budget_gives_identical_ranges(model, samples, caplog):
    graph = gs.import_onnx(model)
    requests = [StatRequest(name) for name in TENSORS[:6]] + [StatRequest("input")]
    big = collect_statistics(graph, requests, CountingSource(samples))
    source = CountingSource(samples)
    with caplog.at_level(logging.INFO, logger="qcompile.calibrators.collector"):
        small = collect_statistics(graph, requests, source, memory_budget_bytes=1)
    # one pass to measure sizes on the first sample, then one streaming pass per group (one tensor each)
    assert source.passes == 1 + 6
    assert any("6 passes" in record.getMessage() for record in caplog.records)
    for request in requests:
        # the same up to float32 rounding (see the bit-exact test below)
        np.testing.assert_allclose(float(small[request].min), float(big[request].min), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(float(small[request].max), float(big[request].max), rtol=1e-6, atol=1e-7)


def test_tiny_memory_budget_is_bit_exact(model, samples):
    graph = gs.import_onnx(model)
    requests = [StatRequest(name) for name in TENSORS[:6]]
    big = collect_statistics(graph, requests, samples)
    small = collect_statistics(graph, requests, samples, memory_budget_bytes=1)
    for request in requests:
        assert (float(small[request].min), float(small[request].max)) == \
            (float(big[request].min), float(big[request].max)), request.tensor


def test_budget_between_sizes_groups_tensors(model, samples):
    graph = gs.import_onnx(model)
    # conv1_out is 16x32x32 float32 = 64 KiB per sample; a 130 KiB budget holds two of those per group
    requests = [StatRequest(name) for name in ("conv1_out", "bn1_out", "relu1_out", "logits")]
    source = CountingSource(samples)
    grouped = collect_statistics(graph, requests, source, memory_budget_bytes=130 * 1024)
    assert source.passes == 1 + 2
    reference = collect_statistics(graph, requests, samples)
    for request in requests:
        np.testing.assert_allclose(float(grouped[request].max), float(reference[request].max), rtol=1e-6)


def test_only_graph_inputs_needs_one_pass_and_no_session(model, samples):
    graph = gs.import_onnx(model)
    source = CountingSource(samples)
    stats = collect_statistics(graph, [StatRequest("input")], source)
    assert source.passes == 1
    x = np.concatenate([s["input"] for s in samples])
    assert float(stats[StatRequest("input")].min) == float(x.min())


def test_progress_counts_samples(model, samples):
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    collect_statistics(gs.import_onnx(model), [StatRequest("relu1_out")], samples, progress=bar)
    assert bar.n == N


def test_empty_source_is_an_error(model):
    with pytest.raises(CalibrationDataError, match="empty"):
        collect_statistics(gs.import_onnx(model), [StatRequest("relu1_out")], [])


def _log_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Log", ["x"], ["l"], name="log"), helper.make_node("Relu", ["l"], ["y"], name="relu"),
             helper.make_node("Shape", ["x"], ["s"], name="shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
                               helper.make_tensor_value_info("s", TensorProto.INT64, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nan_activation_is_a_calibration_error():
    feeds = [{"x": np.array([[1.0, 2.0, 3.0]], np.float32)}, {"x": np.array([[1.0, -2.0, 3.0]], np.float32)}]
    with pytest.raises(CalibrationError, match="'l'"):
        collect_statistics(gs.import_onnx(_log_model()), [StatRequest("l")], feeds)


def test_integer_tensor_is_a_calibration_error():
    feeds = [{"x": np.array([[1.0, 2.0, 3.0]], np.float32)}]
    with pytest.raises(CalibrationError, match="not float"):
        collect_statistics(gs.import_onnx(_log_model()), [StatRequest("s")], feeds)


def test_feed_the_model_rejects_is_a_data_error():
    feeds = [{"x": np.ones((1, 3), np.float32)}, {"x": np.ones((1, 4), np.float32)}]
    with pytest.raises(CalibrationDataError, match="sample 1"):
        collect_statistics(gs.import_onnx(_log_model()), [StatRequest("l")], feeds)
