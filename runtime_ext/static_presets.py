"""How each target runs the static presets fp8 and a16w8 (config/static_formats.py): the profile they get.

What ONNX Runtime 1.32 registers (onnxruntime/core/providers/{cpu,cuda}/quantization|tensor/quantize_linear.cc):

    CPU EP    QuantizeLinear/DequantizeLinear for Float8E4M3FN (opset 19+) and uint16/int16 (opset 21+), but no
              fused kernel reads them: the QDQ selectors accept 8-bit integers only, so DQ → Conv/MatMul runs
              as a float op on dequantised values. The model loads and runs (for validation), it is not fast.
    CUDA EP   Q/DQ for Float8E4M3FN/E5M2 (opsets 19-20 and 21, float or float16 scales); no 16-bit kernels. Its
              QDQ fusions are CPU-only, so FP8 Q/DQ runs as Q/DQ kernels around float GEMMs: a simulation.
    TensorRT  reads explicit FP8 Q/DQ (TensorRT ≥ 8.6: MatMul/Gemm; ≥ 10 also Conv) and builds FP8 kernels on
              GPUs with FP8 tensor cores (compute capability ≥ 8.9: Ada, Hopper, Blackwell); no int16 Q/DQ.

So every static preset uses one placement, the explicit-quantisation layout TensorRT reads: Q/DQ on the
inputs of the compute ops only, symmetric per-channel weights, no output re-quantisation and no data-movement
Q/DQ (nothing fuses them). The bias is what the target's profile says: an int32 DQ at s_x·s_w on the CPU and
CUDA EPs, float for TensorRT. A float bias does not stay float on ORT's CPU EP: its level-1
WeightBiasQuantization rewrites the bias of a Conv/Gemm whose input and weight come from DQs into
DQ(Cast(Round(b / (s_x·s_w)))) with no overflow check, and FP8 and 16-bit scales make s_x·s_w small enough to
overflow int32 (measured on effnet_lite0 fp8: outputs 6 % off the graph as written). Emitting the int32 bias
ourselves keeps it in range (bias-safe weight scales, numerics.qparams.bias_safe_weight_scale). The CPU fusion
check is off: no node is expected to become an integer kernel. a16w8 is refused for the CUDA and TensorRT
targets, which have no 16-bit Q/DQ.
"""

from __future__ import annotations

import dataclasses

from qcompile.config import CompileConfig, Preset, Target, TargetProfile
from qcompile.config.static_formats import StaticFormat, static_format
from qcompile.errors import ConfigError
from qcompile.runtime_ext.gpu_features import FP8_MIN_COMPUTE_CAPABILITY, detect_compute_capability
from qcompile.selection import COMPUTE_OPS

# Providers whose ORT build registers 16-bit Q/DQ; a16w8 is refused elsewhere.
_SIXTEEN_BIT_TARGETS = frozenset({Target.CPU})


def static_preset_profile(profile: TargetProfile, fmt: StaticFormat) -> TargetProfile:
    """``profile`` with the static preset's element types and the inputs-only placement (module docstring)."""
    return dataclasses.replace(
        profile,
        activation_dtype=fmt.activation_dtype,
        weight_dtype=fmt.weight_dtype,
        activation_symmetric=fmt.activation_symmetric,
        reduce_range=False,                      # no VPMADDUBSW kernel runs these formats
        requantize_output_ops=frozenset(),
        float_output_ops=COMPUTE_OPS,
        transparent_ops=frozenset(),
        fusable_activations=frozenset(),
        per_channel_ops=COMPUTE_OPS,
        requantize_matmul_before_add=False,
        static_int8=True,                        # static Q/DQ is what this preset emits, whatever the target
        default_weight_only=None,
        float16=False,                           # Q/DQ scales stay float32 (the float16 pass keeps Q/DQ float32)
        float32_ops=frozenset(),
        cpu_fusion_check=False,
    )


def apply_static_preset(config: CompileConfig, profile: TargetProfile,
                        compute_capability: tuple[int, int] | None = None) -> tuple[CompileConfig, TargetProfile, str]:
    """(config with the preset's element types, the profile it runs under, a note for the report).

    ``compute_capability`` is the GPU's (major, minor); None reads it from nvidia-smi when there is one.
    Unchanged for presets without a static format (w8a8, weight-only)."""
    fmt = static_format(config.preset)
    if fmt is None:
        return config, profile, ""
    preset = config.preset.value
    if fmt.activation_dtype.bits == 16 and profile.target not in _SIXTEEN_BIT_TARGETS:
        raise ConfigError(f"--preset {preset} needs 16-bit QuantizeLinear/DequantizeLinear, which ONNX Runtime's "
                          f"{profile.providers[0]} does not have; compile for --target cpu (NPU flows read it)")
    for role, spec, wanted in (("activation", config.activation, fmt.activation_dtype),
                               ("weight", config.weight, fmt.weight_dtype)):
        if spec.dtype is not None and spec.dtype is not wanted and not _is_default_weight(role, spec.dtype):
            raise ConfigError(f"--preset {preset} sets {role} dtype {wanted.value}; {role}.dtype "
                              f"{spec.dtype.value} contradicts it (leave it unset)")
    config = dataclasses.replace(
        config,
        activation=dataclasses.replace(config.activation, dtype=fmt.activation_dtype,
                                       symmetric=config.activation.symmetric or fmt.activation_symmetric),
        weight=dataclasses.replace(config.weight, dtype=fmt.weight_dtype, symmetric=True))
    return config, static_preset_profile(profile, fmt), _note(config.preset, profile, compute_capability)


def _is_default_weight(role: str, dtype) -> bool:
    """The default weight spec says int8; a preset replaces it without complaint."""
    return role == "weight" and dtype is CompileConfig().weight.dtype


def _note(preset: Preset, profile: TargetProfile, compute_capability: tuple[int, int] | None) -> str:
    if preset is Preset.A16W8:
        return ("preset a16w8: uint16 activation and int8 weight Q/DQ on compute-op inputs; ORT's CPU EP runs "
                "them as float ops on dequantised values (validation; NPU flows run them as integers)")
    if profile.target is Target.CPU:
        return ("preset fp8: FP8 E4M3FN Q/DQ on compute-op inputs; ORT's CPU EP has no FP8 compute kernels and "
                "runs them as float ops on dequantised values (for validation, not speed)")
    capability = compute_capability or detect_compute_capability()
    if capability is None:
        support = (f"FP8 kernels need a GPU of compute capability >= {_cc(FP8_MIN_COMPUTE_CAPABILITY)} "
                   "(no GPU seen here)")
    elif capability < FP8_MIN_COMPUTE_CAPABILITY:
        support = (f"this GPU (compute capability {_cc(capability)}) has no FP8 tensor cores: the Q/DQ run in "
                   f"higher precision; FP8 needs >= {_cc(FP8_MIN_COMPUTE_CAPABILITY)}")
    else:
        support = f"this GPU (compute capability {_cc(capability)}) has FP8 tensor cores"
    runtime = ("TensorRT builds FP8 kernels from the Q/DQ" if profile.target is Target.TENSORRT
               else "the CUDA EP runs FP8 Q/DQ kernels around float GEMMs (its QDQ fusions are CPU-only)")
    return f"preset fp8 for {profile.target.value}: {runtime}; {support}"


def _cc(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"
