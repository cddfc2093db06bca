"""runtime_ext/static_presets.py and gpu_features.py: the profile each target gives the fp8 and a16w8 presets,
the opset they need, the GPU note, and nvidia-smi parsing."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from qcompile.config import CompileConfig, CpuFeatures, Preset, Target
from qcompile.errors import ConfigError
from qcompile.numerics.qparams import QuantDType
from qcompile.preparation import OpsetNeed, plan_opset
from qcompile.runtime_ext.gpu_features import parse_compute_capability
from qcompile.runtime_ext.static_presets import apply_static_preset
from qcompile.runtime_ext.target import cpu_profile, cuda_profile, tensorrt_profile

CPU = cpu_profile(CpuFeatures(arch="x86_64", avx2=True, vnni=False))


def test_cpu_profile_for_fp8_and_a16w8():
    for preset, act, weight, symmetric in ((Preset.FP8, QuantDType.FLOAT8E4M3FN, QuantDType.FLOAT8E4M3FN, True),
                                           (Preset.A16W8, QuantDType.UINT16, QuantDType.INT8, False)):
        config, profile, note = apply_static_preset(CompileConfig(preset=preset), CPU)
        assert (config.activation.dtype, config.weight.dtype) == (act, weight)
        assert profile.activation_dtype is act and profile.activation_symmetric is symmetric
        # inputs-only placement, int32 bias (ORT would quantise a float one unchecked), no 7-bit weights even
        # without VNNI, no fusion check
        assert not profile.requantize_output_ops and not profile.transparent_ops and profile.quantize_bias
        assert profile.reduce_range is False and profile.cpu_fusion_check is False
        assert "validation" in note


def test_w8a8_and_weight_only_are_unchanged():
    for preset in (Preset.W8A8, Preset.W4A16):
        config = CompileConfig(preset=preset)
        assert apply_static_preset(config, CPU) == (config, CPU, "")


@pytest.mark.parametrize("capability,expected", [((9, 0), "has FP8 tensor cores"),
                                                 ((8, 6), "no FP8 tensor cores"),
                                                 (None, "no GPU seen here")])
def test_gpu_note(monkeypatch, capability, expected):
    monkeypatch.setattr("qcompile.runtime_ext.static_presets.detect_compute_capability", lambda: None)
    _, profile, note = apply_static_preset(CompileConfig(preset=Preset.FP8), tensorrt_profile(), capability)
    assert expected in note and "TensorRT builds FP8 kernels" in note
    assert profile.providers[0] == "TensorrtExecutionProvider" and profile.activation_symmetric
    assert profile.residual_add_producers and not profile.quantize_bias   # TensorRT's placement and float bias


def test_fp8_on_cuda_keeps_float32_and_analysis():
    config, profile, note = apply_static_preset(CompileConfig(preset=Preset.FP8), cuda_profile(), (9, 0))
    assert profile.float16 is False and profile.static_int8 and "CUDA EP runs FP8 Q/DQ kernels" in note


@pytest.mark.parametrize("profile", [cuda_profile(), tensorrt_profile()], ids=["cuda", "tensorrt"])
def test_a16w8_needs_16bit_qdq(profile):
    with pytest.raises(ConfigError, match="16-bit"):
        apply_static_preset(CompileConfig(preset=Preset.A16W8), profile)


def test_opset_plan():
    model = helper.make_model(helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", 17)])
    assert (plan_opset(model, CompileConfig(preset=Preset.FP8)).target,
            plan_opset(model, CompileConfig(preset=Preset.A16W8)).target) == (19, 21)
    assert plan_opset(model, CompileConfig(preset=Preset.FP8)).need is OpsetNeed.STATIC_FORMAT
    model.opset_import[0].version = 21
    assert plan_opset(model, CompileConfig(preset=Preset.FP8)).need is OpsetNeed.NONE


def test_parse_compute_capability():
    assert parse_compute_capability("9.0\n8.6\n") == (8, 6)      # the weakest GPU decides
    assert parse_compute_capability("12.0") == (12, 0)
    assert parse_compute_capability("N/A\n") is None and parse_compute_capability("") is None
