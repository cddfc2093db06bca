"""Target profiles (qcompile.config.TargetProfile instances): which quantised formats ONNX Runtime runs fast on a given execution provider and CPU.

A profile is data, not code paths: the Q/DQ pass asks it which integer types to emit, whether weights lose a
bit (reduce_range), which compute ops must have their output re-quantised for ORT to fuse them into an integer
kernel, and through which data-movement ops ORT drops a DQ→op→Q pair (the op then runs on integers). The
pipeline asks it whether the float remainder is emitted as float16, and the compiler which preset a target
gets when the user left the default.

CPU (ORT CPU EP). x86 without VNNI: MLAS's u8s8 kernel multiplies with VPMADDUBSW, which adds two u8×s8
products into a saturating int16; 255·127·2 > 32767, so full-range int8 weights can saturate. ORT's remedy,
7-bit weights (255·63·2 = 32130, reduce_range), costs every weight a bit; this profile instead keeps 8-bit
codes and limits only the same-sign code pairs whose magnitudes sum above 128 (passes/quantize/pair_sums.py;
measured on EfficientNet-Lite0 on an AVX2 host: top-1 agreement 0.90 with 7-bit weights, see the README).
Depthwise Convs run MLAS's depthwise kernel, which widens to int16 first and never saturates. With VNNI
(VPDPBUSD accumulates in int32) or on arm64 (dot products) full-range weights are safe. ORT's QDQ fusions on x86 require uint8 activations (signed activations are
rewritten to uint8 first).

CUDA (ORT CUDA EP). ORT's QDQ fusions (QLinearConv, QLinearMatMul, QGemm, ...) are registered for the CPU EP
only: on the CUDA EP a static-INT8 graph runs its DQ → float op → Q as float kernels plus the Q/DQ nodes (or,
for the com.microsoft QLinear ops, on the CPU with copies), so it is slower than FP32 there. What the CUDA EP
runs fast is weight-only MatMulNBits (INT4/INT8 weights dequantised in the GEMM kernel, float16 activations)
and float16 for everything else. So the CUDA profile turns the default static-INT8 preset into w4a16, emits
the contrib op, and converts the float remainder to float16 (passes/convert_float16.py) with float32 I/O.

TensorRT (ORT TensorRT EP). TensorRT reads explicit Q/DQ: int8, symmetric (zero point 0) activations and
per-channel symmetric weights, placed on the inputs of the ops it runs in int8 (Conv, ConvTranspose, MatMul,
Gemm). It propagates scales and fuses the rest itself, so there is no output re-quantisation, no int32 bias
DQ (biases stay float; TensorRT quantises them in the fused kernel), and a residual Add whose one input is a
quantised Conv's output gets Q/DQ on its other input too, so TensorRT can fuse the Add into the Conv
(NVIDIA's "Q/DQ layer-placement recommendations": quantise the residual input of element-wise additions).
"""

from __future__ import annotations

import dataclasses

from qcompile.config import (CompileConfig, CpuFeatures, LayerAnalysis, Preset, Target, TargetProfile,
                             WeightOnlyConfig, WeightOnlyForm)
from qcompile.errors import ConfigError
from qcompile.numerics.qparams import QuantDType
from qcompile.runtime_ext.cpu_features import detect_cpu_features
from qcompile.selection import COMPUTE_OPS

# Ops whose DQ -> op -> Q (same scale and zero point on both sides) ORT's CPU EP turns into the op on integers.
CPU_QDQ_TRANSPARENT_OPS = frozenset({
    "MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Resize",
    "Expand", "Identity",
})
# Activation functions between a compute op and its output Q that ORT folds into the Q (ReluQuantFusion,
# ClipQuantFusion) when the Q's integer range lies within the function's range.
CPU_FUSABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})
# Ops the float16 conversion leaves in float32 (Cast around them): ORT's CUDA EP registers Range and
# NonMaxSuppression for float32 only, RoiAlign without float16; CumSum sums long axes (precision).
CUDA_FLOAT32_OPS = frozenset({"Range", "NonMaxSuppression", "RoiAlign", "CumSum"})


def cpu_profile(features: CpuFeatures) -> TargetProfile:
    """ORT CPU EP: u8 activations, s8 per-channel weights; pair-limited codes on x86 without VNNI."""
    x86 = features.arch in ("x86_64", "AMD64", "i686", "x86")
    return TargetProfile(
        target=Target.CPU,
        activation_dtype=QuantDType.UINT8,
        weight_dtype=QuantDType.INT8,
        reduce_range=False,
        saturating_pair_sums=x86 and not features.vnni,
        requantize_output_ops=frozenset({"Conv", "ConvTranspose", "Gemm"}),
        float_output_ops=frozenset({"MatMul"}),
        transparent_ops=CPU_QDQ_TRANSPARENT_OPS,
        fusable_activations=CPU_FUSABLE_ACTIVATIONS,
        per_channel_ops=frozenset({"Conv", "MatMul", "Gemm"}),
        cpu=features,
    )


def cuda_profile() -> TargetProfile:
    """ORT CUDA EP: weight-only MatMulNBits (INT4 by default) and float16 for the rest; no static INT8."""
    return TargetProfile(
        target=Target.CUDA,
        activation_dtype=QuantDType.INT8,
        weight_dtype=QuantDType.INT8,
        reduce_range=False,
        requantize_output_ops=frozenset(),
        float_output_ops=COMPUTE_OPS,
        transparent_ops=frozenset(),
        fusable_activations=frozenset(),
        per_channel_ops=COMPUTE_OPS,
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        requantize_matmul_before_add=False,
        static_int8=False,
        default_weight_only=Preset.W4A16,
        weight_only_form=WeightOnlyForm.MATMUL_NBITS,
        float16=True,
        float32_ops=CUDA_FLOAT32_OPS,
    )


def tensorrt_profile() -> TargetProfile:
    """ORT TensorRT EP: symmetric int8 Q/DQ on the inputs of Conv/ConvTranspose/MatMul/Gemm only."""
    return TargetProfile(
        target=Target.TENSORRT,
        activation_dtype=QuantDType.INT8,
        weight_dtype=QuantDType.INT8,
        reduce_range=False,
        requantize_output_ops=frozenset(),
        float_output_ops=COMPUTE_OPS,
        transparent_ops=frozenset(),
        fusable_activations=frozenset(),
        per_channel_ops=COMPUTE_OPS,
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        activation_symmetric=True,
        quantize_bias=False,
        requantize_matmul_before_add=False,
        residual_add_producers=frozenset({"Conv", "ConvTranspose"}),
        # TensorRT reads standard blocked DequantizeLinear; a com.microsoft op would leave the TensorRT EP
        weight_only_form=WeightOnlyForm.DEQUANTIZE_LINEAR,
        cpu_fusion_check=False,
    )


def resolve_profile(target: Target, features: CpuFeatures | None = None) -> TargetProfile:
    if target is Target.CPU:
        return cpu_profile(features or detect_cpu_features())
    if target is Target.CUDA:
        return cuda_profile()
    if target is Target.TENSORRT:
        return tensorrt_profile()
    raise ConfigError(f"unknown target {target!r}")


def apply_target_defaults(config: CompileConfig, profile: TargetProfile) -> tuple[CompileConfig, str]:
    """The config with the target's choices where the user left the defaults, and a note saying what changed.

    A target without fast static INT8 (CUDA) turns the static preset into its weight-only preset; a
    weight-only compile with ``form = auto`` gets the target's form (CUDA: MatMulNBits, TensorRT: the
    standard DequantizeLinear). Explicit choices (a weight-only preset, a form) are kept."""
    notes = []
    if not profile.static_int8 and config.preset is Preset.W8A8:
        if profile.default_weight_only is None:
            raise ConfigError(f"target {profile.target.value} has no static INT8 form; choose a weight-only preset")
        config = dataclasses.replace(config, preset=profile.default_weight_only)
        notes.append(f"target {profile.target.value}: static INT8 runs as float plus Q/DQ on "
                     f"{profile.providers[0]}, so the {Preset.W8A8.value} preset became "
                     f"{profile.default_weight_only.value} (weight-only)")
    if config.preset.weight_only_bits is None and config.weight_only != WeightOnlyConfig():
        # weight-only settings on a static INT8 compile would be ignored without a word
        changed = [f.name for f in dataclasses.fields(WeightOnlyConfig)
                   if getattr(config.weight_only, f.name) != getattr(WeightOnlyConfig(), f.name)]
        raise ConfigError(f"weight-only setting(s) {', '.join(changed)} apply to the weight-only presets only; add "
                          f"--preset {Preset.W4A16.value} or {Preset.W8A16.value} (the {config.preset.value} preset "
                          "quantises weights and activations statically)")
    if config.preset.weight_only_bits is not None and config.weight_only.form is WeightOnlyForm.AUTO \
            and profile.weight_only_form is not WeightOnlyForm.AUTO:
        config = dataclasses.replace(config, weight_only=dataclasses.replace(
            config.weight_only, form=profile.weight_only_form))
        notes.append(f"target {profile.target.value}: weight-only form {profile.weight_only_form.value}")
    if profile.float16:
        # per-layer analysis and the fallback search switch float32 Q/DQ pairs on and off in one graph
        if config.accuracy_budget is not None:
            raise ConfigError(f"an accuracy budget is not available for target {profile.target.value} "
                              "(float16 remainder); compile for --target cpu to search fallbacks")
        if config.analysis.layers is not LayerAnalysis.NONE:
            config = dataclasses.replace(config, analysis=dataclasses.replace(
                config.analysis, layers=LayerAnalysis.NONE))
            notes.append(f"target {profile.target.value}: no per-layer analysis (the float16 remainder has no "
                         "float32 reference tensors)")
    return config, "; ".join(notes)
