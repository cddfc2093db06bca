"""`qcompile inspect` (qcompile/inspect_model.py) predicts what a compile quantises and why not, without data;
`qcompile compare` (qcompile/compare_models.py) reports fidelity that matches numpy, latency and sizes."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from models.generate import read_calibration
from qcompile import compile_model
from qcompile.cli import main
from qcompile.tools.compare_models import compare_models
from qcompile.config import AnalysisConfig, ClassifierConfig, CompileConfig, LayerAnalysis
from qcompile.errors import SelectionError
from qcompile.tools.inspect_model import inspect_model

QUICK = CompileConfig(analysis=AnalysisConfig(layers=LayerAnalysis.NONE), fidelity_samples=0)


@pytest.mark.parametrize("config", [QUICK, CompileConfig(exclude=("Conv_2",), quantize_classifier=True)],
                         ids=["default", "exclude+classifier"])
def test_inspect_predicts_the_compile(tiny_cnn_case, config):
    model_path, calib_dir = tiny_cnn_case
    inspection = inspect_model(model_path, config)
    report = compile_model(model_path, calib_dir, config).report.data
    compiled = {n["name"]: n for n in report["nodes"]}
    predicted = {n["name"]: n for n in inspection["nodes"]}
    assert set(predicted) == set(compiled)
    for name, node in predicted.items():
        if node["plan"] == "measure":          # the classifier: its measured precision is the compile's
            assert compiled[name]["reason"].startswith("final classifier"), name
            continue
        assert (node["plan"] == "quantize") == (compiled[name]["status"] == "quantized"), name
        if node["plan"] == "float":
            assert node["reason"] == compiled[name]["reason"]
    measured = sum(compiled[n["name"]]["status"] == "quantized" for n in predicted.values() if n["plan"] == "measure")
    assert inspection["would_quantize"] + measured == report["summary"]["quantized_nodes"]


def test_inspect_histogram_and_reasons(tiny_cnn_case):
    model_path, _ = tiny_cnn_case
    model = onnx.load(str(model_path))
    inspection = inspect_model(model_path, CompileConfig(exclude=("Conv_2",)))
    assert inspection["op_histogram"] == dict(Counter(n.op_type for n in model.graph.node))
    assert "BatchNormalization" not in inspection["prepared_op_histogram"]          # folded by prepare
    reasons = {n["name"]: n["reason"] for n in inspection["nodes"] if n["plan"] == "float"}
    assert reasons["Conv_2"] == "excluded by --exclude"
    measured = [n for n in inspection["nodes"] if n["plan"] == "measure"]
    assert [n["op_type"] for n in measured] == ["Gemm"] and "classifier" in measured[0]["reason"]
    assert inspection["measured_at_compile"] == 1
    unmeasured = inspect_model(model_path, CompileConfig(classifier=ClassifierConfig(measure=False)))
    assert any("classifier" in n["reason"] for n in unmeasured["nodes"] if n["plan"] == "float")
    with pytest.raises(SelectionError):
        inspect_model(model_path, CompileConfig(exclude=("no_such_node",)))


def test_cli_inspect(tiny_cnn_case):
    model_path, _ = tiny_cnn_case
    runner = CliRunner()
    text = runner.invoke(main, ["inspect", str(model_path)])
    assert text.exit_code == 0, text.output
    assert "would quantise 4 of 5 compute node(s), 1 measured at compile" in text.output
    assert "final classifier" in text.output
    as_json = runner.invoke(main, ["inspect", str(model_path), "--json", "--exclude", "Conv_2"])
    assert json.loads(as_json.output)["would_quantize"] == 3
    failed = runner.invoke(main, ["inspect", str(model_path), "--exclude", "nope"])
    assert failed.exit_code == 2 and failed.output.startswith("error: ")


def _numpy_fidelity(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    r, c = reference.astype(np.float64), candidate.astype(np.float64)
    cosine = np.mean(np.sum(r * c, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)))
    return float(cosine), float(np.sqrt(np.sum((r - c) ** 2) / np.sum(r ** 2))), float(np.mean(r.argmax(1) == c.argmax(1)))


def test_compare_matches_numpy(tiny_cnn_case, tmp_path):
    model_path, calib_dir = tiny_cnn_case
    quantized = tmp_path / "q.onnx"
    compile_model(model_path, calib_dir, QUICK).save(quantized)
    feeds = read_calibration(calib_dir)[:10]
    np.savez(tmp_path / "eval.npz", input=np.concatenate([f["input"] for f in feeds]))
    result = compare_models(model_path, quantized, tmp_path / "eval.npz", samples=10, rounds=2, runs=3)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (model_path, quantized)]
    reference, candidate = (np.concatenate([s.run(None, f)[0] for f in feeds]) for s in sessions)
    cosine, error, top1 = _numpy_fidelity(reference, candidate)
    logits = result["fidelity"]["outputs"]["logits"]
    assert logits["cosine_mean"] == pytest.approx(cosine, abs=1e-6)
    assert logits["relative_error"] == pytest.approx(error, rel=1e-4)
    assert logits["top1_agreement"] == pytest.approx(top1)
    assert result["data"]["items"] == 10
    assert result["size_ratio"] == pytest.approx(quantized.stat().st_size / model_path.stat().st_size, rel=0.01)
    assert result["reference"]["median_ms"] > 0 and result["reference"]["ratio"] == 1.0

    same = compare_models(model_path, model_path, calib_dir, samples=4, rounds=1, runs=2)
    assert same["fidelity"]["outputs"]["logits"]["relative_error"] == 0.0
    assert same["fidelity"]["outputs"]["logits"]["cosine_mean"] == pytest.approx(1.0)


def test_cli_compare(tiny_cnn_case, tmp_path):
    model_path, calib_dir = tiny_cnn_case
    runner = CliRunner()
    result = runner.invoke(main, ["compare", str(model_path), str(model_path), "--data", str(calib_dir),
                                  "--samples", "3", "--rounds", "1", "--runs", "2"])
    assert result.exit_code == 0, result.output
    assert "latency ms" in result.output and "output logits: cosine mean 1.00000" in result.output
    failed = runner.invoke(main, ["compare", str(model_path), str(tmp_path / "missing.onnx"), "--data",
                                  str(calib_dir)])
    assert failed.exit_code == 2 and failed.output.startswith("error: ")
