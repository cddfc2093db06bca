"""Tests for qcompile.api.compile_model: model sources (path, bytes, ModelProto), calibration sources (folder,
list of dicts), the output model (checker, ORT, integer kernels), the report, fidelity on held-out data,
CompileResult.save, no mutation of the input, graphs without quantisable nodes, num_samples."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from models.generate import EVAL_SEED, make_samples, read_calibration, tiny_cnn
from qcompile.api import CompileResult, compile_model
from qcompile.config import CalibrationConfig, CalibrationMethod, CompileConfig, QuantSpec
from qcompile.errors import ModelSaveError

REPORT_KEYS = {"input", "config", "target", "summary", "fidelity", "nodes", "tensor_ranges", "ort", "passes",
               "warnings"}
INTEGER_KERNELS = {"QLinearConv", "QGemm", "MatMulIntegerToFloat", "QLinearMatMul"}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _check_output(result: CompileResult, feed: dict) -> None:
    onnx.checker.check_model(result.model)
    outputs = _session(result.model).run(None, feed)
    assert all(np.all(np.isfinite(o)) for o in outputs if o.dtype.kind == "f")


def _check_report(result: CompileResult) -> dict:
    data = json.loads(result.report.to_json())
    assert REPORT_KEYS <= set(data)
    assert data["summary"]["quantized_nodes"] == len(result.report.quantized_nodes) > 0
    quantized = [n for n in data["nodes"] if n["status"] == "quantized"]
    assert quantized
    for node in quantized:
        if node.get("form") == "int8_weights_float_input":     # the measured classifier: a float kernel
            assert "ort_kernel" not in node
            continue
        assert node["ort_kernel"] in INTEGER_KERNELS, node
        assert node["fused"] is True, node
    for node in data["nodes"]:
        if node["status"] == "skipped":
            assert node["reason"]
    assert data["summary"]["unfused_nodes"] == 0
    assert data["ort"]["unfused"] == []
    assert data["target"]["target"] == "cpu"
    assert data["config"]["target"] == "cpu"
    assert [p["step"] for p in data["passes"]][:1] == ["prepare"]
    assert {"prepare", "quantize", "lower"} <= {p["step"] for p in data["passes"]}
    for name, entry in data["tensor_ranges"].items():
        assert entry["min"] <= entry["max"] and entry["scale"] > 0, name
    return data


# ---------------------------------------------------------------------------------------------- tiny_cnn


@pytest.mark.parametrize("source_kind", ["path", "bytes", "proto"])
def test_tiny_cnn_model_sources(tiny_cnn_case, source_kind):
    model_path, calib_dir = tiny_cnn_case
    source = {"path": model_path, "bytes": model_path.read_bytes(), "proto": onnx.load(str(model_path))}[source_kind]
    result = compile_model(source, calib_dir, CompileConfig(fidelity_samples=2))
    _check_output(result, make_samples("tiny_cnn", 1)[0])
    data = _check_report(result)
    # four Convs, and the Gemm classifier unless its measured precision is float
    assert data["summary"]["quantized_nodes"] == 4 + (data["classifier"]["decision"] != "float")
    assert data["input"]["path"] == (str(model_path.resolve()) if source_kind == "path" else None)
    assert data["input"]["calibration"]["samples"] == 14   # 2 of the 16 files held out for fidelity
    assert data["input"]["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    kernels = Counter(n.get("ort_kernel") for n in data["nodes"] if n["status"] == "quantized")
    classifier = {"int8": {"QGemm": 1}, "int8_weights": {None: 1}, "float": {}}[data["classifier"]["decision"]]
    assert kernels == {"QLinearConv": 4, **classifier}
    assert data["summary"]["output_bytes"] < data["summary"]["input_bytes"]


def test_tiny_cnn_folder_and_list_calibration_agree(tiny_cnn_case):
    model_path, calib_dir = tiny_cnn_case
    config = CompileConfig(fidelity_samples=0)
    from_folder = compile_model(model_path, calib_dir, config)
    from_list = compile_model(model_path, read_calibration(calib_dir), config)
    assert from_folder.report.data["tensor_ranges"] == from_list.report.data["tensor_ranges"]
    assert from_folder.model.graph == from_list.model.graph
    assert from_list.report.data["input"]["calibration"]["samples"] == 16


def test_tiny_cnn_fidelity_on_held_out_samples(tiny_cnn_case):
    model_path, calib_dir = tiny_cnn_case
    result = compile_model(model_path, calib_dir, CompileConfig(fidelity_samples=4))
    held_out = make_samples("tiny_cnn", 24, seed=EVAL_SEED)
    ref, q = _session(onnx.load(str(model_path))), _session(result.model)
    x = np.concatenate([s["input"] for s in held_out])
    y_ref = ref.run(["logits"], {"input": x})[0]
    y_q = q.run(["logits"], {"input": x})[0]
    cos = _cosines(y_ref, y_q)
    assert cos.mean() >= 0.98, cos
    assert cos.min() >= 0.95, cos
    assert np.mean(y_ref.argmax(1) == y_q.argmax(1)) >= 0.75
    # the report's own fidelity on calibration items is in the same ballpark
    reported = result.report.data["fidelity"]["outputs"]["logits"]
    assert reported["samples"] == 4 and reported["cosine_mean"] >= 0.98


def test_input_model_proto_is_not_mutated(tiny_cnn_case):
    model_path, calib_dir = tiny_cnn_case
    model = onnx.load(str(model_path))
    before = model.SerializeToString()
    result = compile_model(model, calib_dir, CompileConfig(fidelity_samples=1))
    assert model.SerializeToString() == before
    assert result.model is not model
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 1


def test_save_writes_model_and_report(tiny_cnn_case, tmp_path):
    model_path, calib_dir = tiny_cnn_case
    result = compile_model(model_path, calib_dir, CompileConfig(fidelity_samples=1))
    out = tmp_path / "out" / "m.int8.onnx"
    out.parent.mkdir()
    written_model, written_report = result.save(out)
    assert written_model == out and written_report == out.with_name("m.int8.report.json")
    assert out.is_file() and written_report.is_file()
    saved = onnx.load(str(out))
    onnx.checker.check_model(saved)
    assert saved.graph == result.model.graph
    assert json.loads(written_report.read_text())["summary"] == json.loads(result.report.to_json())["summary"]
    custom = result.save(tmp_path / "a.onnx", tmp_path / "r.json")
    assert custom == (tmp_path / "a.onnx", tmp_path / "r.json")
    assert (tmp_path / "r.json").is_file()


def test_save_refuses_to_overwrite_the_input(tiny_cnn_case):
    model_path, calib_dir = tiny_cnn_case
    original = model_path.read_bytes()
    result = compile_model(model_path, calib_dir, CompileConfig(fidelity_samples=0))
    with pytest.raises(ModelSaveError):
        result.save(model_path)
    assert model_path.read_bytes() == original
    assert not model_path.with_name("tiny_cnn.report.json").exists()


# ---------------------------------------------------------------------------------------------- transformer


def test_tiny_transformer_folder(tiny_transformer_case):
    model_path, calib_dir = tiny_transformer_case
    result = compile_model(model_path, calib_dir, CompileConfig(fidelity_samples=3))
    _check_output(result, make_samples("tiny_transformer", 1)[0])
    data = _check_report(result)
    by_status = Counter(n["status"] for n in data["nodes"] if n["op_type"] == "MatMul")
    # 2 layers x (q, k, v, out, ffn.in, ffn.out) weight MatMuls; the 2 x 2 attention MatMuls have no weights
    assert by_status == {"quantized": 12, "skipped": 4}
    for node in data["nodes"]:
        if node["status"] == "skipped":
            assert "no constant weight" in node["reason"]
    assert {n["ort_kernel"] for n in data["nodes"] if n["status"] == "quantized"} <= INTEGER_KERNELS
    for name, entry in data["fidelity"]["outputs"].items():
        assert entry["cosine_mean"] >= 0.98, name


def test_tiny_transformer_list_of_dicts_and_bytes(tiny_transformer_case):
    model_path, _ = tiny_transformer_case
    samples = make_samples("tiny_transformer", 6)
    result = compile_model(model_path.read_bytes(), samples, CompileConfig(fidelity_samples=0))
    _check_output(result, samples[0])
    data = _check_report(result)
    assert data["input"]["calibration"]["samples"] == 6
    # held-out: sentence embedding close to FP32
    held_out = make_samples("tiny_transformer", 6, seed=EVAL_SEED)
    ref, q = _session(onnx.load(str(model_path))), _session(result.model)
    for feed in held_out:
        a = ref.run(["sentence_embedding"], feed)[0]
        b = q.run(["sentence_embedding"], feed)[0]
        assert _cosines(a, b).min() >= 0.98


# ---------------------------------------------------------------------------------------------- edge cases


def _relu_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_without_quantizable_nodes_compiles_unchanged():
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    result = compile_model(_relu_model(), [{"x": x}])
    assert result.report.data["summary"]["quantized_nodes"] == 0
    assert result.report.quantized_nodes == []
    assert [n.op_type for n in result.model.graph.node] == ["Relu"]
    np.testing.assert_array_equal(_session(result.model).run(None, {"x": x})[0], np.maximum(x, 0))


def test_graph_without_quantizable_nodes_report_says_why():
    result = compile_model(_relu_model(), [{"x": np.ones((1, 4), np.float32)}])
    data = result.report.data
    explained = bool(data["warnings"]) or any(n.get("reason") for n in data["nodes"])
    assert explained, data


MINMAX = QuantSpec(method=CalibrationMethod.MINMAX)   # ranges are exactly the data's min/max


def test_num_samples_caps_what_the_collector_sees():
    samples = make_samples("tiny_cnn", 8)
    # samples past the cap are scaled far out of range: had the collector seen them, the input range would grow
    for s in samples[3:]:
        s["input"] = s["input"] * 100.0
    config = CompileConfig(calibration=CalibrationConfig(num_samples=3), fidelity_samples=0, activation=MINMAX)
    result = compile_model(tiny_cnn(), samples, config)
    seen = np.concatenate([s["input"] for s in samples[:3]])
    entry = result.report.data["tensor_ranges"]["input"]
    assert entry["min"] == pytest.approx(float(seen.min()), rel=1e-6)
    assert entry["max"] == pytest.approx(float(seen.max()), rel=1e-6)
    assert result.report.data["input"]["calibration"]["samples"] == 3


def test_num_samples_cuts_a_batched_item():
    batch = np.concatenate([s["input"] for s in make_samples("tiny_cnn", 4)])
    batch[2:] *= 100.0
    config = CompileConfig(calibration=CalibrationConfig(num_samples=2), fidelity_samples=0, activation=MINMAX)
    result = compile_model(tiny_cnn(), [{"input": batch}], config)
    entry = result.report.data["tensor_ranges"]["input"]
    assert entry["max"] == pytest.approx(float(batch[:2].max()), rel=1e-6)


def test_generator_calibration():
    samples = make_samples("tiny_cnn", 4)
    result = compile_model(tiny_cnn(), (s for s in samples), CompileConfig(fidelity_samples=0))
    data = result.report.data
    assert data["summary"]["quantized_nodes"] == 4 + (data["classifier"]["decision"] != "float")


def test_save_rename_failure_is_a_save_error_and_leaves_nothing(tiny_cnn_case, tmp_path, monkeypatch):
    import os

    import qcompile.io.staging as qio
    from qcompile.errors import ModelSaveError
    model_path, calib_dir = tiny_cnn_case
    result = compile_model(model_path, calib_dir)
    real_replace, calls = os.replace, []

    def refuse_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(qio.os, "replace", refuse_second)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelSaveError, match="Permission denied"):
        result.save(out / "q.onnx")
    assert list(out.iterdir()) == []
