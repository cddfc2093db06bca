"""The static presets fp8 and a16w8 end to end on generated models: what is emitted (element types, placement,
opset, float bias), that it loads and runs in ONNX Runtime's CPU EP with every optimisation on and agrees with
ONNX's reference evaluator, fidelity against FP32, the target matrix (a16w8 refused on CUDA/TensorRT), the
report, per-layer analysis and an accuracy budget, inspect and the CLI."""

from __future__ import annotations

import json
from collections import Counter

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcompile.api import compile_model
from qcompile.cli import main as cli_main
from qcompile.config import AccuracyBudget, ClassifierConfig, CompileConfig, Preset, QuantSpec, Target
from qcompile.errors import ConfigError
from qcompile.numerics.qparams import QuantDType
from qcompile.tools.inspect_model import inspect_model

FP8 = np.dtype(ml_dtypes.float8_e4m3fn)


@pytest.fixture(scope="module")
def tiny_cnn():
    from models.generate import make_samples, tiny_cnn
    return tiny_cnn(), make_samples("tiny_cnn", 8), make_samples("tiny_cnn", 16, seed=7)


def _compiled(tiny_cnn, preset: Preset, **kw):
    model, calib, _ = tiny_cnn
    # the selection rule's float classifier: the structure counts below are of the layers it quantises
    return compile_model(model, calib, CompileConfig(preset=preset, fidelity_samples=4,
                                                     classifier=ClassifierConfig(measure=False), **kw))


@pytest.fixture(scope="module")
def fp8_result(tiny_cnn):
    return _compiled(tiny_cnn, Preset.FP8)


@pytest.fixture(scope="module")
def a16w8_result(tiny_cnn):
    return _compiled(tiny_cnn, Preset.A16W8)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _run(model: onnx.ModelProto, feed, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feed)[0]


def _eval_batch(tiny_cnn) -> dict[str, np.ndarray]:
    return {"input": np.concatenate([item["input"] for item in tiny_cnn[2]])}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


# ------------------------------------------------------------------------------------------------ structure


def test_fp8_structure(fp8_result):
    model = fp8_result.model
    inits = _inits(model)
    ops = Counter(n.op_type for n in model.graph.node)
    assert _opset(model) == 19                       # float8 Q/DQ: opset 19, the model was 17
    # 4 quantised Convs: 4 activation points (their inputs only, no output re-quantisation), 4 weight DQs,
    # 4 int32 bias DQs, no Q/DQ on the residual Add or MaxPool
    assert ops["QuantizeLinear"] == 4 and ops["DequantizeLinear"] == 12
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            assert inits[node.input[2]].dtype == FP8 and float(inits[node.input[2]].astype(np.float32)) == 0.0
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].ndim == 4:
            weight = inits[node.input[0]]
            assert weight.dtype == FP8
            scale = inits[node.input[1]]
            assert scale.shape == (weight.shape[0],)                       # per output channel
            assert np.max(np.abs(weight.astype(np.float32))) == 448.0      # amax lands on the top code
    # int32 bias at s_x·s_w: ORT would turn a float bias into an unchecked int32 one (static_presets.py)
    producers = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        bias_dq = producers[conv.input[2]]
        assert bias_dq.op_type == "DequantizeLinear" and inits[bias_dq.input[0]].dtype == np.int32
    decisions = {n["name"]: n for n in fp8_result.report.data["nodes"]}
    assert sum(1 for n in decisions.values() if n.get("reason") == "static fp8") == 4


def test_fp8_no_relu_left_directly_before_a_quantize(fp8_result):
    """ORT drops a Relu before an FP8 Q (ReluQuantFusion): those Relus are emitted as Max(x, 0)."""
    model = fp8_result.model
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in producers:
            assert producers[node.input[0]].op_type != "Relu"
    assert any(p.get("stats", {}).get("relu_as_max") for p in fp8_result.report.data["passes"])


def test_a16w8_structure(a16w8_result):
    model = a16w8_result.model
    inits = _inits(model)
    assert _opset(model) == 21                       # 16-bit Q/DQ
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(zero_points) == 4 and all(z.dtype == np.uint16 for z in zero_points)
    weights = [inits[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert len(weights) == 4 and all(w.dtype == np.int8 and np.abs(w).max() == 127 for w in weights)
    target = a16w8_result.report.data["target"]
    assert target["activation_dtype"] == "uint16" and target["weight_dtype"] == "int8"
    assert target["reduce_range"] is False and target["cpu_fusion_check"] is False


# ------------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("preset", [Preset.FP8, Preset.A16W8], ids=lambda p: p.value)
def test_runs_in_ort_like_the_reference_evaluator(tiny_cnn, fp8_result, a16w8_result, preset):
    """ORT with every optimisation on computes what ONNX's reference evaluator computes (4 samples):
    float kernels in a different order differ by float32 rounding only (tolerance 1e-3 relative)."""
    model = (fp8_result if preset is Preset.FP8 else a16w8_result).model
    feed = {"input": _eval_batch(tiny_cnn)["input"][:4]}
    expected = ReferenceEvaluator(model).run(None, feed)[0]
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        got = _run(model, feed, level)
        assert np.linalg.norm(got - expected) <= 1e-3 * np.linalg.norm(expected)


def test_fidelity_against_fp32(tiny_cnn, fp8_result, a16w8_result):
    """Held-out samples (seed 7). a16w8: 65536 activation levels, int8 per-channel weights, cosine >= 0.999
    (measured 0.9998). fp8: E4M3's 3 mantissa bits give ~31 dB per tensor (test_fp8.py), which four Convs of
    this CNN accumulate to a logits cosine of ~0.988; >= 0.97 holds with margin."""
    feed = _eval_batch(tiny_cnn)
    reference = _run(tiny_cnn[0], feed)
    assert _cosine(_run(a16w8_result.model, feed), reference) >= 0.999
    assert _cosine(_run(fp8_result.model, feed), reference) >= 0.97


# ------------------------------------------------------------------------ report, analysis, budget, inspect


def test_report_and_layer_analysis_cover_fp8(fp8_result):
    data = fp8_result.report.data
    assert data["target"]["activation_dtype"] == "float8e4m3fn" and data["target"]["activation_symmetric"]
    assert "validation" in data["target"]["note"]
    assert data["warnings"] == ["upgraded opset 17 -> 19 for fp8 QuantizeLinear/DequantizeLinear"]   # no
    # "ORT's graph optimiser changes this model's outputs" (qcompile/accuracy/optimizer_check.py)
    layers = data["layers"]["nodes"]
    assert len(layers) == 4
    for entry in layers:
        # E4M3FN: ~31 dB on any distribution; the input and weight of each Conv measured inside [25, 40] dB
        assert 25.0 <= entry["weight_sqnr_db"] <= 40.0 and 25.0 <= entry["input_sqnr_db"] <= 40.0
        assert entry["input_clipped_fraction"] <= 1e-3
    assert all(r["scale"] > 0 and r["zero_point"] == 0 for r in data["tensor_ranges"].values())


def test_accuracy_budget_with_fp8(tiny_cnn):
    result = _compiled(tiny_cnn, Preset.FP8, accuracy_budget=AccuracyBudget(min_cosine=0.995, eval_samples=8))
    fallback = result.report.data["fallback"]
    assert fallback["met"] and fallback["after"]["cosine_mean"] >= 0.995
    assert 1 <= len(fallback["nodes"]) < 4       # measured: one Conv falls back


def test_inspect_plans_the_preset(tiny_cnn):
    plan = inspect_model(tiny_cnn[0], CompileConfig(preset=Preset.A16W8))
    quantised = [n for n in plan["nodes"] if n["plan"] == "quantize"]
    assert len(quantised) == 4 and all(n["reason"] == "int8 weights, uint16 activations" for n in quantised)


# --------------------------------------------------------------------------------------- targets and config


def test_a16w8_refused_where_ort_has_no_16bit_qdq(tiny_cnn):
    model, calib, _ = tiny_cnn
    for target in (Target.CUDA, Target.TENSORRT):
        with pytest.raises(ConfigError, match="16-bit"):
            compile_model(model, calib, CompileConfig(preset=Preset.A16W8, target=target))


def test_fp8_for_tensorrt_keeps_its_placement(tiny_cnn):
    """TensorRT: symmetric FP8 Q/DQ on the Conv inputs and the residual Add's other input (here the same point
    as a Conv input: 4 in all); Clip → Q written as Max/Min (ORT's ClipQuantFusion fails on FP8); loads on the
    CPU EP with every optimisation on."""
    model, calib, _ = tiny_cnn
    result = compile_model(model, calib, CompileConfig(preset=Preset.FP8, target=Target.TENSORRT, fidelity_samples=2))
    inits = _inits(result.model)
    zero_points = [inits[n.input[2]] for n in result.model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(zero_points) == 4 and all(z.dtype == FP8 for z in zero_points)
    producers = {o: n.op_type for n in result.model.graph.node for o in n.output}
    add = next(n for n in result.model.graph.node if n.op_type == "Add")
    assert sorted(producers.get(i) for i in add.input) == ["Conv", "DequantizeLinear"]   # residual input Q/DQ'd
    assert result.report.data["target"]["providers"][0] == "TensorrtExecutionProvider"
    assert "compute capability" in result.report.data["target"]["note"]
    assert _cosine(_run(result.model, _eval_batch(tiny_cnn)), _run(model, _eval_batch(tiny_cnn))) >= 0.97


def test_contradicting_dtype_is_a_config_error(tiny_cnn):
    model, calib, _ = tiny_cnn
    config = CompileConfig(preset=Preset.FP8, activation=QuantSpec(dtype=QuantDType.UINT8))
    with pytest.raises(ConfigError, match="contradicts"):
        compile_model(model, calib, config)
    with pytest.raises(ConfigError, match="need the fp8 preset"):
        CompileConfig(activation=QuantSpec(dtype=QuantDType.FLOAT8E4M3FN))


def test_cli(tmp_path, tiny_cnn_case):
    model_path, calib = tiny_cnn_case
    runner = CliRunner()
    out = tmp_path / "m.fp8.onnx"
    done = runner.invoke(cli_main, [str(model_path), "--calib", str(calib), "-o", str(out), "--preset", "fp8",
                                    "--no-progress"])
    assert done.exit_code == 0, done.output
    report = json.loads(out.with_name("m.fp8.report.json").read_text())
    assert report["config"]["preset"] == "fp8"
    assert onnx.load(out).graph.node[0].op_type in ("QuantizeLinear", "DequantizeLinear")
    refused = runner.invoke(cli_main, [str(model_path), "--calib", str(calib), "-o", str(tmp_path / "x.onnx"),
                                       "--preset", "a16w8", "--target", "cuda", "--no-progress"])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1 and "16-bit" in refused.output
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.gpu
def test_fp8_runs_on_cuda_ep(tiny_cnn, fp8_result):
    """Where onnxruntime-gpu and a GPU exist: the CUDA EP's FP8 Q/DQ kernels give the CPU EP's answer."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (CUDAExecutionProvider) and an NVIDIA device")
    feed = {"input": _eval_batch(tiny_cnn)["input"][:4]}
    cpu = _run(fp8_result.model, feed)
    gpu = ort.InferenceSession(fp8_result.model.SerializeToString(),
                               providers=["CUDAExecutionProvider"]).run(None, feed)[0]
    assert np.linalg.norm(gpu - cpu) <= 1e-2 * np.linalg.norm(cpu)
