"""Weight-only presets end to end on small generated LMs: structure (which nodes, which form, which bits),
numbers (the emitted graph computes x·Ŵ exactly as the numpy reference of the chosen codes, checked with ORT's
optimiser off; ORT's fused kernels checked through the report), AWQ folding, embeddings, lm_head rules, NF4,
fp16 scales, GPTQ vs RTN output error, CLI and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from qcompile import compile_model
from qcompile.cli import main
from qcompile.config import CompileConfig, config_from_mapping
from qcompile.errors import ConfigError
from qcompile.numerics.packing import unpack_4bit

VOCAB, D, FF, SEQ = 512, 64, 160, 5


def tiny_lm(seed: int = 0, gemm: bool = False) -> onnx.ModelProto:
    """ids -> Gather(E) -> LayerNorm -> MatMul+Relu -> MatMul -> residual -> LayerNorm -> lm_head -> logits.
    With ``gemm`` the FFN is 2-D Gemm (transB, bias) on [SEQ, D] activations."""
    rng = np.random.default_rng(seed)
    mix = np.exp(0.5 * rng.standard_normal(D)).astype(np.float32)
    inits = [numpy_helper.from_array((rng.standard_normal((VOCAB, D)) * mix).astype(np.float32), "E"),
             numpy_helper.from_array((1 + 0.1 * rng.standard_normal(D)).astype(np.float32), "ln_s"),
             numpy_helper.from_array((0.1 * rng.standard_normal(D)).astype(np.float32), "ln_b"),
             numpy_helper.from_array((rng.standard_normal((D, FF)) / np.sqrt(D)).astype(np.float32), "W1"),
             numpy_helper.from_array((rng.standard_normal((FF, D)) / np.sqrt(FF)).astype(np.float32), "W2"),
             numpy_helper.from_array((rng.standard_normal((D, VOCAB)) / np.sqrt(D)).astype(np.float32), "W_head")]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed", axis=0),
             helper.make_node("LayerNormalization", ["emb", "ln_s", "ln_b"], ["h0"], name="ln0", axis=-1)]
    if gemm:
        inits += [numpy_helper.from_array(numpy_helper.to_array(inits[3]).T.copy(), "W1t"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(FF)).astype(np.float32), "b1")]
        nodes += [helper.make_node("Gemm", ["h0", "W1t", "b1"], ["a"], name="up", transB=1)]
    else:
        nodes += [helper.make_node("MatMul", ["h0", "W1"], ["a"], name="up")]
    nodes += [helper.make_node("Relu", ["a"], ["r"], name="act"),
              helper.make_node("MatMul", ["r", "W2"], ["f"], name="down"),
              helper.make_node("Add", ["f", "emb"], ["res"], name="residual"),
              helper.make_node("LayerNormalization", ["res", "ln_s", "ln_b"], ["h1"], name="ln1", axis=-1),
              helper.make_node("MatMul", ["h1", "W_head"], ["logits"], name="lm_head")]
    shape = [SEQ] if gemm else [1, SEQ]
    graph = helper.make_graph(nodes, "tiny_lm", [helper.make_tensor_value_info("ids", TensorProto.INT64, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape + [VOCAB])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _calib(n: int = 12, gemm: bool = False, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shape = (SEQ,) if gemm else (1, SEQ)
    return [{"ids": rng.integers(0, VOCAB, shape).astype(np.int64)} for _ in range(n)]


def _compile(table: dict, model=None, calib=None, **extra):
    config = config_from_mapping({"preset": table.pop("preset", "w4a16"), "weight_only": table, **extra})
    return compile_model(model or tiny_lm(), calib or _calib(), config)


def _run(model: onnx.ModelProto, feed, optimized: bool = False) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _nodes(result) -> dict[str, dict]:
    return {n["name"]: n for n in result.report.data["nodes"]}


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _dequantized_weight(model: onnx.ModelProto, prefix: str) -> np.ndarray:
    """W = (codes - zp) * scale from the emitted initializers of a DQ-form node (bits from the tensor type)."""
    inits = {t.name: t for t in model.graph.initializer}
    q = inits[f"{prefix}_W_q"]
    k, n = q.dims
    signed = q.data_type == TensorProto.INT4
    codes = unpack_4bit(np.frombuffer(q.raw_data, np.uint8), k * n, signed=signed).reshape(k, n) \
        if q.data_type in (TensorProto.INT4, TensorProto.UINT4) else numpy_helper.to_array(q)
    scale = numpy_helper.to_array(inits[f"{prefix}_W_scale"])
    zp = inits.get(f"{prefix}_W_zp")
    zero = 0 if zp is None else (unpack_4bit(np.frombuffer(zp.raw_data, np.uint8), int(np.prod(zp.dims)),
                                             signed=False).reshape(scale.shape) if zp.data_type == TensorProto.UINT4
                                 else numpy_helper.to_array(zp))
    block = -(-k // scale.shape[0])
    return ((codes.astype(np.float64) - np.repeat(zero, block, 0)[:k] if np.ndim(zero) else codes)
            * np.repeat(scale, block, 0)[:k])


def test_w4a16_structure_and_report():
    """Defaults: the streaming path, MatMulNBits for every MatMul (no opset upgrade), int8 embedding rows."""
    result = _compile({"algorithm": "rtn"})
    model, nodes = result.model, _nodes(result)
    counts = _op_counts(model)
    assert counts["MatMulNBits"] == 3 and "MatMul" not in counts and "DequantizeLinear" not in counts
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17   # no upgrade needed
    assert result.report.data["pipeline"] == "streaming"
    assert nodes["down"]["bits"] == 4 and nodes["down"]["form"] == "MatMulNBits" and nodes["down"]["accuracy_level"] == 4
    assert nodes["lm_head"]["bits"] == 8 and nodes["lm_head"]["role"] == "lm_head"   # >= 8 bits unless asked
    assert nodes["embed"]["status"] == "quantized" and nodes["embed"]["bits"] == 8
    assert nodes["embed"]["form"] == "Gather(int8)+Cast+Mul"                        # opset 17: no blocked DQ
    for name in ("up", "down", "lm_head", "embed"):
        assert nodes[name]["fused"], nodes[name]                 # ORT: MatMulNBits / integer Gather
    assert "relative_output_error" not in nodes["down"]         # RTN: no calibration, so no Hessian
    assert not result.report.data["input"]["calibration"]["used"]
    summary = result.report.data["summary"]
    assert summary["unfused_nodes"] == 0 and summary["size_ratio"] < 0.35


def test_dequantize_linear_form_structure():
    result = _compile({"algorithm": "gptq", "form": "dequantize_linear"})
    model, nodes = result.model, _nodes(result)
    counts = _op_counts(model)
    assert counts["DequantizeLinear"] == 3 + 1 and counts["MatMul"] == 3    # up, down, lm_head + embedding rows
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 21
    assert nodes["down"]["form"] == "DequantizeLinear+MatMul" and nodes["down"]["ort_kernel"] == "MatMulNBits"
    assert nodes["embed"]["form"] == "Gather(int8)+DequantizeLinear"
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["down_W_q"].data_type == TensorProto.UINT4 and inits["lm_head_W_q"].data_type == TensorProto.UINT8
    assert 0 < nodes["down"]["relative_output_error"] < 0.05


@pytest.mark.parametrize("symmetric", [False, True])
def test_dq_form_computes_the_reference(symmetric):
    result = _compile({"algorithm": "rtn", "symmetric": symmetric, "block_size": 16, "form": "dequantize_linear"})
    w_down = _dequantized_weight(result.model, "down")
    original = numpy_helper.to_array(next(t for t in tiny_lm().graph.initializer if t.name == "W2"))
    step = np.abs(original).max() / 7
    assert np.abs(w_down - original).max() <= step              # the emitted codes decode to the weight
    x, y = _matmul_output(result.model, _calib(1, seed=7)[0], "down")
    np.testing.assert_allclose(y, x @ w_down, rtol=1e-4, atol=1e-4)


def _matmul_output(model: onnx.ModelProto, feed, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) of node ``name`` in ``model`` (optimiser off)."""
    node = next(n for n in model.graph.node if n.name == name)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for tensor in (node.input[0], node.output[0]):
        probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x, y = session.run([node.input[0], node.output[0]], feed)
    return x.astype(np.float64), y.astype(np.float64)


def test_matmul_nbits_form_equals_dq_form():
    dq = _compile({"algorithm": "gptq", "form": "dequantize_linear"})
    nbits = _compile({"algorithm": "gptq", "form": "matmul_nbits", "accuracy_level": 0})
    counts = _op_counts(nbits.model)
    assert counts.get("MatMulNBits") == 3 and "MatMul" not in counts
    assert any(o.domain == "com.microsoft" for o in nbits.model.opset_import)
    assert _nodes(nbits)["up"]["accuracy_level"] == 0
    feed = _calib(1, seed=3)[0]
    np.testing.assert_allclose(_run(nbits.model, feed), _run(dq.model, feed), rtol=1e-4, atol=1e-4)


def test_gemm_with_bias_and_trans_b():
    model = tiny_lm(gemm=True)
    result = _compile({"algorithm": "rtn"}, model=model, calib=_calib(gemm=True))
    assert _nodes(result)["up"]["status"] == "quantized"
    assert "Gemm" not in _op_counts(result.model)
    feed = _calib(1, gemm=True, seed=5)[0]
    ref, got = _run(model, feed), _run(result.model, feed)
    cos = np.sum(ref * got) / (np.linalg.norm(ref) * np.linalg.norm(got))
    assert cos > 0.99
    assert not result.report.data["summary"]["unfused_nodes"]


def test_awq_folds_into_layer_norm_and_keeps_the_function():
    result = _compile({"algorithm": "awq"})
    stats = next(p["stats"] for p in result.report.data["passes"] if p["name"] == "quantize")
    # 'up' and lm_head read LayerNorm outputs read by nothing else (folded); 'down' reads the Relu (a Mul)
    assert stats.get("awq_folded_LayerNormalization", 0) == 2 and stats.get("awq_inserted_mul", 0) == 1
    assert 0 <= _nodes(result)["up"]["awq_alpha"] < 1
    feed = _calib(1, seed=9)[0]
    ref, got = _run(tiny_lm(), feed), _run(result.model, feed)
    assert np.sum(ref * got) / (np.linalg.norm(ref) * np.linalg.norm(got)) > 0.99


def test_gptq_and_awq_beat_rtn():
    """End to end on the calibration items (RTN has no Hessian, so the logits' SQNR is the common measure)."""
    sqnr = {}
    for algorithm in ("rtn", "gptq", "awq"):
        result = _compile({"algorithm": algorithm, "lm_head_bits": 4, "block_size": 64})
        sqnr[algorithm] = result.report.data["fidelity"]["outputs"]["logits"]["sqnr_db"]
        if algorithm != "rtn":
            assert all(0 < n["relative_output_error"] < 0.1 for n in result.report.data["nodes"]
                       if n["status"] == "quantized" and n["op_type"] == "MatMul")
    assert sqnr["gptq"] > sqnr["rtn"] and sqnr["awq"] > sqnr["rtn"], sqnr


def test_lm_head_rules():
    assert _nodes(_compile({"lm_head_bits": "none"}))["lm_head"]["status"] == "skipped"
    assert _nodes(_compile({}, quantize_classifier=True))["lm_head"]["bits"] == 4
    float_embedding = _compile({"embedding_bits": "none"})
    assert "embed" not in _nodes(float_embedding) or _nodes(float_embedding)["embed"]["status"] != "quantized"


def test_embedding_rows_are_int8_and_exact_per_row():
    result = _compile({})
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    table = numpy_helper.to_array(tiny_lm().graph.initializer[0])
    codes, scale = inits["E_q"], inits["E_scale"]
    assert codes.dtype == np.int8 and scale.shape == (VOCAB, 1)
    np.testing.assert_allclose(codes * scale, table, atol=float(scale.max()) * 0.5 + 1e-7)
    feed = _calib(1, seed=2)[0]
    probe = onnx.ModelProto()
    probe.CopyFrom(result.model)
    probe.graph.output.append(helper.make_tensor_value_info("emb", TensorProto.FLOAT, None))
    emb = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(["emb"], feed)[0]
    np.testing.assert_allclose(emb, (codes * scale)[feed["ids"]], rtol=1e-6)


def test_nf4_emits_matmul_bnb4():
    result = _compile({"number_format": "nf4", "block_size": 32})
    counts = _op_counts(result.model)
    assert counts.get("MatMulBnb4") == 2 and _nodes(result)["up"]["number_format"] == "nf4"
    assert _nodes(result)["lm_head"]["bits"] == 8               # the head stays integer 8-bit
    feed = _calib(1, seed=4)[0]
    ref, got = _run(tiny_lm(), feed), _run(result.model, feed)
    assert np.sum(ref * got) / (np.linalg.norm(ref) * np.linalg.norm(got)) > 0.98


def test_fp16_scales_are_stored_half_and_still_fuse():
    result = _compile({"scale_dtype": "float16"})
    inits = {t.name: t for t in result.model.graph.initializer}
    assert inits["down_scales_fp16"].data_type == TensorProto.FLOAT16
    assert result.report.data["summary"]["unfused_nodes"] == 0
    plain = _compile({})
    assert result.report.data["summary"]["output_bytes"] < plain.report.data["summary"]["output_bytes"]


def test_w8a16_uses_8_bit_blocks():
    result = _compile({"preset": "w8a16"})
    nodes = _nodes(result)
    assert nodes["up"]["bits"] == 8 and nodes["up"]["fused"]


def test_config_errors():
    with pytest.raises(ConfigError):
        config_from_mapping({"weight_only": {"block_size": 48}})
    with pytest.raises(ConfigError):
        config_from_mapping({"weight_only": {"form": "dequantize_linear", "accuracy_level": 4}})
    with pytest.raises(ConfigError):
        config_from_mapping({"weight_only": {"bits": 4}})
    with pytest.raises(ConfigError):
        config_from_mapping({"preset": "w8a16", "weight_only": {"number_format": "nf4"}})
    with pytest.raises(ConfigError):
        config_from_mapping({"preset": "w5a16"})
    assert CompileConfig().preset.weight_only_bits is None


def test_cli_preset(tmp_path: Path):
    model_path = tmp_path / "lm.onnx"
    onnx.save(tiny_lm(), str(model_path))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, item in enumerate(_calib(6)):
        np.savez(calib / f"{i}.npz", **item)
    out = tmp_path / "lm.w4.onnx"
    runner = CliRunner()
    result = runner.invoke(main, [str(model_path), "--calib", str(calib), "-o", str(out), "--preset", "w4a16",
                                  "--block-size", "16", "--algorithm", "gptq", "--symmetric", "--no-act-order",
                                  "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_name("lm.w4.report.json").read_text())
    assert report["config"]["preset"] == "w4a16" and report["config"]["weight_only"]["block_size"] == 16
    assert report["config"]["weight_only"]["symmetric"] is True
    assert report["config"]["weight_only"]["act_order"] is False
    assert report["config"]["weight_only"]["clip_search"] is True          # unset flag: the default
    assert report["target"]["weight_only_form"] == "matmul_nbits"
    bad = runner.invoke(main, [str(model_path), "--calib", str(calib), "-o", str(tmp_path / "x.onnx"),
                               "--preset", "w4a16", "--block-size", "48"])
    assert bad.exit_code == 2 and "block_size" in bad.output and not (tmp_path / "x.onnx").exists()
