"""Issue 20's rules below the CLI: declared input limits, the report schema, typed configs, held-out items, the
per-sample time limit, the latency warning, sparse and IR-3 models, and one readable error line."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from qcompile.config import CalibrationConfig, CompileConfig, ImageOptions, QuantSpec
from qcompile.data import InputSpec, open_calibration_source
from qcompile.data.holdout import HOLDOUT_FRACTION, MIN_FILES_TO_HOLD_OUT, held_out_indices
from qcompile.errors import CalibrationDataError, ConfigError, ModelLoadError, ReportError
from qcompile.io import load_model
from qcompile.io.messages import readable_line
from qcompile.preparation import lift_ir_version
from qcompile.report.html import render_html
from qcompile.report.report_schema import MAX_REPORT_DEPTH, load_report
from qcompile.runtime_ext.run_limit import SampleTimeLimitError, run_limited

# ------------------------------------------------------------------------------------------------ data limits


def test_npy_header_over_the_limit_is_refused_before_reading(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    with open(folder / "a.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**40, 8)})
    with pytest.raises(CalibrationDataError, match="over the limit"):
        list(open_calibration_source(folder, [InputSpec("x", np.dtype(np.float32), ("batch", 8))]))


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    pixels = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(pixels).save(folder / "a.png")
    spec = InputSpec("x", np.dtype(np.float32), ("batch", 1, 2, 2))
    (feed,) = list(open_calibration_source(folder, [spec], image=ImageOptions(mean=(0.0,), std=(1.0,))))
    np.testing.assert_allclose(feed["x"][0, 0], pixels / 65535.0, rtol=0, atol=1e-6)   # not clipped at 255


def test_image_size_limits():
    with pytest.raises(ConfigError, match="over the limit"):
        ImageOptions(size=(60000, 60000))
    ImageOptions(size=(4096, 4096))

# ------------------------------------------------------------------------------------------------ report schema


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5),
                    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_FIELDS = ["summary", "fallback", "fidelity", "layers", "nodes", "passes", "warnings", "input", "target", "latency"]


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(_FIELDS), value=_VALUES,
       inner=st.sampled_from(["nodes", "histograms", "unmeasured", "latency", "budget", "eval", "trials", "outputs",
                              "seconds", "counts", "sensitivity_rank"]))
def test_a_report_of_any_shape_renders_or_is_a_report_error(tmp_path_factory, field, value, inner):
    data = {"summary": {"quantized_nodes": 1}, "layers": {"nodes": [{"name": "a", "output_sqnr_db": 20.0}]},
            "fallback": {"budget": {}, "eval": {}, "size": {}, "nodes": [], "trials": [{}]},
            "passes": [{"seconds": 1.0}], "fidelity": {"outputs": {"y": {}}}}
    data[field] = value if not isinstance(data.get(field), dict) or inner == "" else {**data[field], inner: value}
    path = tmp_path_factory.mktemp("report") / "r.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    try:
        loaded = load_report(path)
    except ReportError as exc:
        assert "\n" not in str(exc)
        return
    assert render_html(loaded).startswith("<!DOCTYPE html>")


def test_report_depth_and_types_are_named(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"summary": {}, "x": ' + "[" * (MAX_REPORT_DEPTH + 5) + "]" * (MAX_REPORT_DEPTH + 5) + "}")
    with pytest.raises(ReportError, match="deeper than"):
        load_report(path)
    path.write_text(json.dumps({"summary": {}, "passes": [{"seconds": "slow"}]}))
    with pytest.raises(ReportError, match=r"report.passes\[0\].seconds must be a number"):
        load_report(path)

# ------------------------------------------------------------------------------------------------ typed configs


@pytest.mark.parametrize("build, message", [
    (lambda: CompileConfig(op_types="MatMul"), "op_types must be a tuple of str values"),
    (lambda: CalibrationConfig(num_samples="5"), "num_samples must be an integer or None"),
    (lambda: CalibrationConfig(num_samples=True), "num_samples must be an integer"),
    (lambda: CompileConfig(calibration={"num_samples": 5}), "calibration must be a CalibrationConfig"),
    (lambda: QuantSpec(symmetric="yes"), "symmetric must be a bool"),
    (lambda: CompileConfig(target="cpu"), "target must be a Target"),
])
def test_config_types_are_checked_at_construction(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_from_dict_and_lists_for_tuples():
    config = CompileConfig.from_dict({"calibration": {"num_samples": 5}, "op_types": ["MatMul"]})
    assert config.calibration.num_samples == 5 and config.op_types == ("MatMul",)
    assert CompileConfig(op_types=["Conv"]).op_types == ("Conv",)
    with pytest.raises(ConfigError, match="unknown key"):
        CompileConfig.from_dict({"calibraton": {}})
    with pytest.raises(ConfigError, match="custom_op_library"):
        CompileConfig.from_dict({"custom_op_library": "/tmp/x.so"})   # never from a dict or a recipe


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.integers(-3, 3), st.floats(-2, 2), st.text(max_size=3), st.booleans(), st.none()))
def test_num_samples_accepts_exactly_positive_integers_or_none(value):
    valid = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    if valid:
        assert CalibrationConfig(num_samples=value).num_samples == value
    else:
        with pytest.raises(ConfigError):
            CalibrationConfig(num_samples=value)

# ------------------------------------------------------------------------------------------------ held-out items


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 400), wanted=st.integers(0, 64))
def test_held_out_indices_are_few_distinct_and_spread(n, wanted):
    held = held_out_indices(n, wanted)
    if n < MIN_FILES_TO_HOLD_OUT or wanted == 0:
        assert held == []
        return
    h = min(wanted, int(n * HOLDOUT_FRACTION))
    assert len(held) == h and len(set(held)) == h and all(0 <= i < n for i in held)
    assert n - len(held) >= n * (1 - HOLDOUT_FRACTION) - 1e-9       # calibration keeps at least 3/4
    gaps = np.diff([-0.5 * n / h, *held, n - 0.5 * n / h])          # evenly spread: no gap over twice the mean
    assert gaps.max() <= 2 * n / h + 1


def test_compile_reports_held_out_fidelity(tiny_cnn_case):
    from qcompile import compile_model
    model_path, calib_dir = tiny_cnn_case
    report = compile_model(model_path, calib_dir, CompileConfig(fidelity_samples=4)).report.data
    assert report["fidelity"]["held_out"] is True and report["fidelity"]["items"] == 4
    assert report["input"]["calibration"]["samples"] == 12            # 16 files, 4 held out
    assert {"cosine_mean", "cosine_min"} <= set(report["fidelity"]["outputs"]["logits"])

# ------------------------------------------------------------------------------------------------ time limit


class _SlowSession:
    def run(self, names, feed, options=None):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if options is not None and options.terminate:
                raise RuntimeError("Exiting due to terminate flag being set to true.")
            time.sleep(0.01)
        return []


def test_a_run_over_the_limit_is_stopped():
    start = time.monotonic()
    with pytest.raises(SampleTimeLimitError, match="took over 0.2 s"):
        run_limited(_SlowSession(), None, {}, 0.2)
    assert time.monotonic() - start < 2
    assert threading.active_count() < 20     # the worker threads are done


def test_a_signal_during_a_long_run_unwinds_at_once_and_stops_the_run():
    import os
    import signal
    session = _SlowSession()
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_limited(session, None, {}, None)
    assert time.monotonic() - start < 2      # not the 5 s the run would take
    assert run_limited(_QuickSession(), ["y"], {"x": 1}) == ["y", 1]


class _QuickSession:
    def run(self, names, feed, options=None):
        return [names[0], feed["x"]]

# ------------------------------------------------------------------------------------------------ latency


def test_a_slower_quantised_model_gets_a_warning_with_its_cause(tiny_cnn_case, monkeypatch):
    import qcompile.accuracy.latency_check as latency_check
    from qcompile import compile_model
    monkeypatch.setattr(latency_check, "interleaved_latency", lambda sessions, feed, **kw: {
        "fp32": {"median_ms": 2.0, "ratio": 1.0}, "quantized": {"median_ms": 3.4, "ratio": 1.7}})
    model_path, calib_dir = tiny_cnn_case
    report = compile_model(model_path, calib_dir, CompileConfig(fidelity_samples=1)).report.data
    assert report["latency"]["ratio"] == 1.7 and report["latency"]["fp32_ms"] == 2.0
    assert any("not faster than FP32 (1.70x" in w and "likely cause" in w for w in report["warnings"])
    assert "1.70×" in render_html(report)


def test_no_warning_when_faster_or_when_turned_off(tiny_cnn_case, monkeypatch):
    import qcompile.accuracy.latency_check as latency_check
    from qcompile import compile_model
    monkeypatch.setattr(latency_check, "interleaved_latency", lambda sessions, feed, **kw: {
        "fp32": {"median_ms": 2.0, "ratio": 1.0}, "quantized": {"median_ms": 1.0, "ratio": 0.5}})
    model_path, calib_dir = tiny_cnn_case
    report = compile_model(model_path, calib_dir, CompileConfig(fidelity_samples=1)).report.data
    assert not any("not faster" in w for w in report["warnings"])
    off = compile_model(model_path, calib_dir, CompileConfig(fidelity_samples=1, latency_check=False)).report.data
    assert "skipped" in off["latency"]

# ------------------------------------------------------------------------------------------------ odd but valid models


def _mlp_graph(initializers, inputs_extra=()) -> onnx.GraphProto:
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"), helper.make_node("Relu", ["h"], ["y"])]
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4]),
                                          *inputs_extra],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])], initializers)


def test_sparse_initializers_become_their_dense_values():
    dense = np.zeros((4, 3), np.float32)
    dense[0, 1], dense[3, 2] = 2.5, -1.0
    graph = _mlp_graph([])
    for indices in (np.array([1, 11], np.int64), np.array([[0, 1], [3, 2]], np.int64)):   # linear, coordinates
        del graph.sparse_initializer[:]
        graph.sparse_initializer.append(helper.make_sparse_tensor(
            numpy_helper.from_array(np.array([2.5, -1.0], np.float32), "w0"),
            numpy_helper.from_array(indices, "i"), [4, 3]))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        loaded = load_model(model.SerializeToString())
        (weight,) = loaded.model.graph.initializer
        np.testing.assert_array_equal(numpy_helper.to_array(weight), dense)
        assert not loaded.model.graph.sparse_initializer
    graph.sparse_initializer[0].indices.CopyFrom(numpy_helper.from_array(np.array([1, 99], np.int64), "i"))
    with pytest.raises(ModelLoadError, match="outside"):
        load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def test_ir3_initializers_leave_the_graph_inputs():
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w0")
    graph = _mlp_graph([weight], [helper.make_tensor_value_info("w0", TensorProto.FLOAT, [4, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    lifted = lift_ir_version(model)
    assert lifted.ir_version >= 4 and [i.name for i in lifted.graph.input] == ["x"]
    assert model.ir_version == 3 and len(model.graph.input) == 2          # the input model is left as it is
    onnx.checker.check_model(lifted)

# ------------------------------------------------------------------------------------------------ messages


@settings(max_examples=100, deadline=None)
@given(text=st.text(min_size=0, max_size=2000), limit=st.integers(20, 400))
def test_readable_line_is_one_bounded_line_keeping_both_ends(text, limit):
    line = readable_line(text, limit)
    assert "\n" not in line and len(line) <= limit
    flat = " ".join(text.split())
    if len(flat) <= limit:
        assert line == flat
    else:
        tail = (limit - 3) // 3
        assert line.startswith(flat[: limit - 3 - tail]) and line.endswith(flat[-tail:]) if tail else True


_SCALARS_AND_CONTAINERS = [None, True, 0, -1, 1.5, float("inf"), "x", "", [], [1], [None], [{}], [[1]], {}, {"a": 1},
                           {"a": None}, {"a": [1]}, {"a": {}}]
_KEYS = ["nodes", "histograms", "unmeasured", "latency", "budget", "eval", "trials", "outputs", "before", "after",
         "size", "seconds", "counts", "sensitivity_rank", "items", "source", "path", "target", "ratio", "held_out",
         "name", "output_sqnr_db", "output_sqnr_db_after", "input_clipped_fraction", "below", "above", "missed",
         "sensitivity", "passed", "fallback_nodes"]


def _full_report() -> dict:
    return {"summary": {"quantized_nodes": 1},
            "layers": {"nodes": [{"name": "a", "output_sqnr_db": 20.0, "sensitivity_rank": 1}],
                       "histograms": [{"counts": [1, 2]}], "unmeasured": [{}]},
            "fallback": {"budget": {}, "eval": {}, "size": {}, "latency": {}, "nodes": [{"name": "a"}],
                         "trials": [{}]},
            "passes": [{"seconds": 1.0}], "fidelity": {"outputs": {"y": {}}}, "latency": {"ratio": 1.0},
            "nodes": [{}]}


@pytest.mark.slow   # about 7,000 reports: 10-30 s
def test_every_field_of_every_type_renders_or_is_a_report_error(tmp_path):
    """Exhaustive over one level of substitution: each top-level field, each key of its object (or of its first
    list item, and of the layer/fallback lists), set to each JSON type."""
    path = tmp_path / "r.json"
    variants = []
    for field in _full_report():
        variants += [(field, None, value) for value in _SCALARS_AND_CONTAINERS]
        variants += [(field, key, value) for key in _KEYS for value in _SCALARS_AND_CONTAINERS]
    for where in (("layers", "nodes"), ("layers", "histograms"), ("fallback", "nodes"), ("fallback", "trials")):
        variants += [(where, key, value) for key in _KEYS for value in _SCALARS_AND_CONTAINERS]
    for field, key, value in variants:
        data = _full_report()
        if isinstance(field, tuple):
            data[field[0]][field[1]] = [{"name": "a", key: value}]
        elif key is None:
            data[field] = value
        elif isinstance(data[field], dict):
            data[field] = {**data[field], key: value}
        else:
            data[field] = [{**data[field][0], key: value}]
        path.write_text(json.dumps(data), encoding="utf-8")
        try:
            loaded = load_report(path)
        except ReportError:
            continue
        assert render_html(loaded).startswith("<!DOCTYPE html>"), (field, key, value)
