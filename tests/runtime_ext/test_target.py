"""Target profiles (cpu, cuda, tensorrt): what each asks for, how the compiler applies them, and what the emitted
models look like (structure) and compute (fidelity vs FP32 on ORT's CPU EP). GPU runs are marked ``gpu`` and
skip without onnxruntime's CUDA execution provider and a device."""

from __future__ import annotations

import collections
import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompile import compile_model
from qcompile.config import (AccuracyBudget, CalibrationProvider, CompileConfig, CpuFeatures, LayerAnalysis, Preset,
                             Target, WeightOnlyForm, config_from_mapping)
from qcompile.errors import ConfigError
from qcompile.passes.quantize.qdq_math import is_depthwise_conv
from qcompile.numerics.qparams import QuantDType
from qcompile.runtime_ext.target import (apply_target_defaults, cpu_profile, cuda_profile, resolve_profile,
                                         tensorrt_profile)

MIN_COSINE = 0.99   # tiny generated models; every target's emitted model against FP32 on its calibration items


def _has_cuda_device() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


requires_gpu = pytest.mark.skipif(not _has_cuda_device(),
                                  reason="needs onnxruntime-gpu (CUDAExecutionProvider) and an NVIDIA device")


def test_resolve_profile_every_target():
    for target in Target:
        assert resolve_profile(target, CpuFeatures(arch="x86_64", avx2=True)).target is target


def test_cpu_profile_limits_pair_sums_without_vnni_and_never_reduces_range():
    no_vnni = cpu_profile(CpuFeatures(arch="x86_64", avx2=True, vnni=False))
    assert no_vnni.saturating_pair_sums and not no_vnni.reduce_range
    for features in (CpuFeatures(arch="x86_64", avx2=True, avx512=True, vnni=True),
                     CpuFeatures(arch="aarch64", arm_dot=True)):
        profile = cpu_profile(features)
        assert not profile.saturating_pair_sums and not profile.reduce_range


def test_tensorrt_profile_is_symmetric_int8_on_compute_inputs():
    p = tensorrt_profile()
    assert p.activation_dtype is QuantDType.INT8 and p.activation_symmetric and not p.reduce_range
    assert not p.requantize_output_ops and not p.transparent_ops and not p.quantize_bias
    assert p.residual_add_producers == {"Conv", "ConvTranspose"}
    assert p.providers[0] == "TensorrtExecutionProvider" and not p.cpu_fusion_check


def test_cuda_profile_is_weight_only_float16():
    p = cuda_profile()
    assert not p.static_int8 and p.default_weight_only is Preset.W4A16 and p.float16
    assert p.weight_only_form is WeightOnlyForm.MATMUL_NBITS and p.providers[0] == "CUDAExecutionProvider"


def test_cuda_defaults_turn_w8a8_into_weight_only():
    config, note = apply_target_defaults(CompileConfig(target=Target.CUDA), cuda_profile())
    assert config.preset is Preset.W4A16 and config.weight_only.form is WeightOnlyForm.MATMUL_NBITS
    assert config.analysis.layers is LayerAnalysis.NONE
    assert "w4a16" in note
    # an explicit weight-only preset and form are kept
    explicit = config_from_mapping({"target": "cuda", "preset": "w8a16", "weight_only": {"form": "dequantize_linear"}})
    config, _ = apply_target_defaults(explicit, cuda_profile())
    assert config.preset is Preset.W8A16 and config.weight_only.form is WeightOnlyForm.DEQUANTIZE_LINEAR


def test_cpu_and_tensorrt_defaults_keep_the_config():
    base = CompileConfig()
    assert apply_target_defaults(base, cpu_profile(CpuFeatures(arch="x86_64")))== (base, "")
    trt = dataclasses.replace(base, target=Target.TENSORRT)
    assert apply_target_defaults(trt, tensorrt_profile()) == (trt, "")


def test_cuda_rejects_an_accuracy_budget():
    config = CompileConfig(target=Target.CUDA, accuracy_budget=AccuracyBudget(min_cosine=0.99))
    with pytest.raises(ConfigError, match="accuracy budget"):
        apply_target_defaults(config, cuda_profile())


def test_calibration_provider_from_toml():
    config = config_from_mapping({"calibration": {"provider": "cuda"}})
    assert config.calibration.provider is CalibrationProvider.CUDA
    assert config.calibration.provider.ort_providers[0] == "CUDAExecutionProvider"
    with pytest.raises(ConfigError, match="calibration.provider"):
        config_from_mapping({"calibration": {"provider": "tpu"}})


def test_custom_op_library_is_not_a_toml_key():
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_mapping({"custom_op_library": "/tmp/libevil.so"})


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA EP installed")
def test_calib_provider_cuda_without_cuda_is_a_config_error(tiny_cnn_case):
    model, calib = tiny_cnn_case
    config = dataclasses.replace(CompileConfig(), calibration=dataclasses.replace(
        CompileConfig().calibration, provider=CalibrationProvider.CUDA))
    with pytest.raises(ConfigError, match="CUDA execution provider"):
        compile_model(model, calib, config)


def _compile(case, target: Target, **changes):
    model, calib = case
    return compile_model(model, calib, CompileConfig(target=target, **changes))


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _min_cosine(result) -> float:
    return min(v["cosine_mean"] for v in result.report.fidelity["outputs"].values())


def test_tensorrt_cnn_structure(tiny_cnn_case):
    result = _compile(tiny_cnn_case, Target.TENSORRT)
    graph = result.model.graph
    producers = {o: n for n in graph.node for o in n.output}
    init = {t.name: t for t in graph.initializer}
    # static Q/DQ nodes (a classifier measured at int8 weights with a float input has no input DQ)
    quantized = [n for n in graph.node if n.name in {d["name"] for d in result.report.data["nodes"]
                                                       if d["status"] == "quantized"
                                                       and d.get("form") != "int8_weights_float_input"}]
    assert quantized
    for node in quantized:
        # activation input from DQ(Q(x)) with a zero point 0 int8; no Q reads the node's output
        dq = producers[node.input[0]]
        assert dq.op_type == "DequantizeLinear"
        zp = onnx.numpy_helper.to_array(init[dq.input[2]])
        assert zp.dtype == np.int8 and not zp.any()
        assert not any(c.op_type == "QuantizeLinear" for c in graph.node if node.output[0] in c.input)
        if len(node.input) > 2 and node.input[2]:   # float bias, no int32 DQ
            assert node.input[2] in init and init[node.input[2]].data_type == onnx.TensorProto.FLOAT
    # residual Add after a quantised Conv: every float input of it reads a DQ
    for add in (n for n in graph.node if n.op_type == "Add"):
        if any(producers.get(i) is not None and producers[i].op_type == "Conv" and producers[i] in quantized
               for i in add.input):
            others = [i for i in add.input if producers.get(i) is None or producers[i].op_type != "Conv"]
            assert all(producers[i].op_type == "DequantizeLinear" for i in others if i in producers)
    assert result.report.data["target"]["cpu_fusion_check"] is False
    assert _min_cosine(result) >= MIN_COSINE


def test_tensorrt_transformer_runs_on_cpu(tiny_transformer_case):
    result = _compile(tiny_transformer_case, Target.TENSORRT)
    ops = _ops(result.model)
    assert ops["QuantizeLinear"] > 0 and ops["MatMul"] > 0
    assert _min_cosine(result) >= MIN_COSINE


def test_cuda_transformer_is_matmulnbits_float16(tiny_transformer_case):
    result = _compile(tiny_transformer_case, Target.CUDA)
    model = result.model
    ops = _ops(model)
    assert ops["MatMulNBits"] > 0 and ops["QuantizeLinear"] == 0
    assert {t.data_type for t in model.graph.initializer} <= {
        onnx.TensorProto.FLOAT16, onnx.TensorProto.UINT8, onnx.TensorProto.INT64, onnx.TensorProto.INT32,
        onnx.TensorProto.INT8, onnx.TensorProto.UINT4, onnx.TensorProto.INT4}
    # the user's I/O is float32 as before
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16
    assert result.report.data["config"]["preset"] == "w4a16"
    assert "w4a16" in result.report.data["target"]["note"]
    assert _min_cosine(result) >= MIN_COSINE


def test_cuda_cnn_is_float16(tiny_cnn_case):
    result = _compile(tiny_cnn_case, Target.CUDA)
    ops = _ops(result.model)
    assert ops["Cast"] >= 2 and ops["QuantizeLinear"] == 0
    assert _min_cosine(result) >= MIN_COSINE


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("target", [Target.CUDA, Target.TENSORRT])
def test_emitted_model_runs_on_its_provider(tiny_transformer_case, target):
    result = _compile(tiny_transformer_case, target)
    providers = [p for p in resolve_profile(target).providers if p in ort.get_available_providers()]
    session = ort.InferenceSession(result.model.SerializeToString(), providers=providers)
    data = np.load(Path(tiny_transformer_case[1]) / sorted(p.name for p in Path(tiny_transformer_case[1]).iterdir())[0])
    outputs = session.run(None, {k: data[k] for k in data.files})
    assert all(np.isfinite(o).all() for o in outputs)


class _RecordingOptions(ort.SessionOptions):
    """SessionOptions that records custom-op registrations instead of loading anything."""

    loaded: list[str] = []

    def register_custom_ops_library(self, path: str) -> None:   # noqa: D401 - records, loads nothing
        _RecordingOptions.loaded.append(path)


def test_custom_op_library_is_opt_in(monkeypatch, tmp_path, tiny_cnn_case):
    from qcompile.runtime_ext import session as session_module
    _RecordingOptions.loaded = []
    monkeypatch.setattr(session_module.ort, "SessionOptions", _RecordingOptions)
    model, calib = tiny_cnn_case
    compile_model(model, calib, CompileConfig(fidelity_samples=1))          # a whole compile: nothing loaded
    assert _RecordingOptions.loaded == []
    with pytest.raises(ConfigError, match="does not exist"):
        session_module.make_session(str(model), custom_op_library=tmp_path / "missing.so")
    library = tmp_path / "libops.so"
    library.write_bytes(b"\x7fELF")   # never loaded: the recording options stand in for ORT's
    session_module.make_session(str(model), custom_op_library=library)
    assert _RecordingOptions.loaded == [str(library)]


def test_cli_target_and_runtime_flags(tiny_cnn_case, tmp_path):
    from click.testing import CliRunner
    from qcompile.cli import main
    model, calib = tiny_cnn_case
    out = tmp_path / "cnn.cuda.onnx"
    result = CliRunner().invoke(main, [str(model), "--calib", str(calib), "-o", str(out), "--target", "cuda",
                                       "--no-progress", "-q"])
    assert result.exit_code == 0, result.output
    assert any(n.op_type == "Cast" for n in onnx.load(out).graph.node)
    missing = CliRunner().invoke(main, [str(model), "--calib", str(calib), "-o", str(tmp_path / "x.onnx"),
                                        "--custom-op-library", str(tmp_path / "nope.so"), "--no-progress"])
    assert missing.exit_code == 2 and "custom op library" in missing.output
    assert not (tmp_path / "x.onnx").exists()


def test_depthwise_weights_never_lose_a_bit():
    reduced = dataclasses.replace(cpu_profile(CpuFeatures(arch="x86_64", avx2=True)), reduce_range=True)
    assert reduced.weight_reduce_range(depthwise=False) and not reduced.weight_reduce_range(depthwise=True)
    vnni = cpu_profile(CpuFeatures(arch="x86_64", avx2=True, avx512=True, vnni=True))
    assert not vnni.weight_reduce_range(depthwise=False) and not vnni.weight_reduce_range(depthwise=True)


@pytest.mark.parametrize("op, shape, group, expected", [
    ("Conv", (8, 1, 3, 3), 8, True), ("Conv", (16, 1, 3, 3), 8, False),   # channel multiplier 2: GEMM per group
    ("Conv", (8, 2, 3, 3), 4, False), ("Conv", (8, 4, 1, 1), 1, False), ("Gemm", (8, 1), 1, False),
    ("Conv", (1, 1, 3, 3), 1, True)])   # one channel in and out: ORT takes the depthwise kernel too
def test_is_depthwise_conv(op, shape, group, expected):
    assert is_depthwise_conv(op, shape, group) is expected
