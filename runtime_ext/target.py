"""Target profiles: which quantised formats ONNX Runtime runs fast on a given execution provider and CPU.

A profile is data, not code paths: the Q/DQ pass asks it which integer types to emit, whether weights lose a
bit (reduce_range), which compute ops must have their output re-quantised for ORT to fuse them into an integer
kernel, and through which data-movement ops ORT drops a DQ→op→Q pair (the op then runs on integers).

x86 without VNNI: MLAS's u8s8 kernel multiplies with VPMADDUBSW, which adds two u8×s8 products into a
saturating int16; 255·127·2 > 32767, so full-range int8 weights can saturate. With 7-bit weights
(255·63·2 = 32130) it cannot. With VNNI (VPDPBUSD accumulates in int32) or on arm64 (dot products) full-range
weights are safe. ORT's QDQ fusions on x86 require uint8 activations (signed activations are left unfused).
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompile.config import Target
from qcompile.errors import ConfigError
from qcompile.qparams import QuantDType
from qcompile.runtime_ext.cpu_features import CpuFeatures, detect_cpu_features

# Ops whose DQ -> op -> Q (same scale and zero point on both sides) ORT's CPU EP turns into the op on integers.
CPU_QDQ_TRANSPARENT_OPS = frozenset({
    "MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Resize",
    "Expand", "Identity",
})
# Activation functions between a compute op and its output Q that ORT folds into the Q (ReluQuantFusion,
# ClipQuantFusion) when the Q's integer range lies within the function's range.
CPU_FUSABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})


@dataclass(frozen=True)
class TargetProfile:
    target: Target
    activation_dtype: QuantDType
    weight_dtype: QuantDType
    reduce_range: bool
    requantize_output_ops: frozenset[str]    # need Q on the output to become integer kernels
    float_output_ops: frozenset[str]         # fuse with a float output (MatMulIntegerToFloat, QGemm float out)
    transparent_ops: frozenset[str]
    fusable_activations: frozenset[str]
    per_channel_ops: frozenset[str]           # ops whose integer kernel accepts per-channel weight scales
    cpu: CpuFeatures | None = None

    def describe(self) -> dict:
        return {
            "target": self.target.value,
            "activation_dtype": self.activation_dtype.value,
            "weight_dtype": self.weight_dtype.value,
            "reduce_range": self.reduce_range,
            "cpu": None if self.cpu is None else {
                "arch": self.cpu.arch, "avx2": self.cpu.avx2, "avx512": self.cpu.avx512, "vnni": self.cpu.vnni,
                "arm_dot": self.cpu.arm_dot},
        }


def cpu_profile(features: CpuFeatures) -> TargetProfile:
    """ORT CPU EP: u8 activations, s8 per-channel weights; 7-bit weights on x86 without VNNI."""
    x86 = features.arch in ("x86_64", "AMD64", "i686", "x86")
    return TargetProfile(
        target=Target.CPU,
        activation_dtype=QuantDType.UINT8,
        weight_dtype=QuantDType.INT8,
        reduce_range=x86 and not features.vnni,
        requantize_output_ops=frozenset({"Conv", "ConvTranspose", "Gemm"}),
        float_output_ops=frozenset({"MatMul"}),
        transparent_ops=CPU_QDQ_TRANSPARENT_OPS,
        fusable_activations=CPU_FUSABLE_ACTIVATIONS,
        per_channel_ops=frozenset({"Conv", "MatMul", "Gemm"}),
        cpu=features,
    )


def resolve_profile(target: Target, features: CpuFeatures | None = None) -> TargetProfile:
    if target is Target.CPU:
        return cpu_profile(features or detect_cpu_features())
    raise ConfigError(f"target {target.value!r} is not available yet; use --target cpu")
