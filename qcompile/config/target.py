"""The compile target as data: which execution provider the model is for and what runs fast there.

``TargetProfile`` is the typed interface between a runtime and the passes: the Q/DQ pass reads which integer
types to emit, whether weights lose a bit (reduce_range), which ops need a re-quantised output, through which
ops ORT drops a DQ→op→Q pair; the float16 pass reads whether and where the float remainder becomes float16.
The profiles themselves (cpu, cuda, tensorrt, from the host's ``CpuFeatures``) are built in
runtime_ext/target.py; the type lives here because passes and the core import only core modules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qcompile.config.weight_only import Preset, WeightOnlyForm
from qcompile.numerics.qparams import QuantDType


class Target(enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


@dataclass(frozen=True)
class CpuFeatures:
    """The host CPU as far as integer GEMM kernels care (read by runtime_ext/cpu_features.py)."""

    arch: str  # 'x86_64' | 'aarch64' | 'x86' | whatever platform.machine() said, lower-cased
    avx2: bool = False
    avx512: bool = False  # AVX512F
    vnni: bool = False  # AVX512-VNNI or AVX-VNNI
    arm_dot: bool = False  # ARMv8.2 dot product (asimddp / dotprod)


@dataclass(frozen=True)
class TargetProfile:
    """What one target asks of the emitted graph. Defaults are ORT CPU EP behaviour."""

    target: Target
    activation_dtype: QuantDType
    weight_dtype: QuantDType
    reduce_range: bool                        # 7-bit weights on GEMM-kernel ops; see weight_reduce_range
    requantize_output_ops: frozenset[str]    # need Q on the output to become integer kernels
    float_output_ops: frozenset[str]         # fuse with a float output (MatMulIntegerToFloat, QGemm float out)
    transparent_ops: frozenset[str]          # DQ -> op -> Q with equal parameters runs the op on integers
    fusable_activations: frozenset[str]      # folded into the output Q (ReluQuantFusion, ClipQuantFusion)
    per_channel_ops: frozenset[str]           # ops whose integer kernel accepts per-channel weight scales
    cpu: CpuFeatures | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)   # the ORT execution providers the model is for
    activation_symmetric: bool = False        # zero point 0 on every activation (TensorRT)
    quantize_bias: bool = True                # int32 bias DQ (ORT CPU QLinearConv/QGemm); False: float bias
    requantize_matmul_before_add: bool = True  # ORT CPU: a Q between MatMul and Add stops MatMulAddFusion
    residual_add_producers: frozenset[str] = frozenset()   # Add(op(x), r) -> Q/DQ on r too (TensorRT)
    static_int8: bool = True                  # static INT8 (w8a8) runs fast on this target
    default_weight_only: Preset | None = None  # what the default preset becomes when static_int8 is False
    weight_only_form: WeightOnlyForm = WeightOnlyForm.AUTO
    float16: bool = False                     # the float remainder is emitted as float16 (I/O stays float32)
    float32_ops: frozenset[str] = frozenset()  # ops the float16 conversion leaves in float32
    cpu_fusion_check: bool = True             # ORT CPU EP's fusions say what this target runs (not TensorRT)
    # x86 without VNNI: u8s8 GEMMs add pairs of products in a saturating int16 (passes/quantize/pair_sums.py)
    saturating_pair_sums: bool = False

    def weight_reduce_range(self, depthwise: bool) -> bool:
        """Whether a node's weights lose a bit. Only GEMM kernels pair-sum u8·s8 products into int16
        (VPMADDUBSW); ORT's depthwise QLinearConv (one input and one output channel per group) runs MLAS's
        depthwise kernel, which widens both operands to int16 and multiply-adds into int32 (no saturation),
        so depthwise weights keep all 8 bits — the layers with 9 weights per channel, where a lost bit costs most."""
        return self.reduce_range and not depthwise

    def describe(self) -> dict:
        return {
            "target": self.target.value,
            "providers": list(self.providers),
            "activation_dtype": self.activation_dtype.value,
            "activation_symmetric": self.activation_symmetric,
            "weight_dtype": self.weight_dtype.value,
            "reduce_range": self.reduce_range,
            "static_int8": self.static_int8,
            "float16_remainder": self.float16,
            "cpu_fusion_check": self.cpu_fusion_check,
            "saturating_pair_sums": self.saturating_pair_sums,
            "cpu": None if self.cpu is None else {
                "arch": self.cpu.arch, "avx2": self.cpu.avx2, "avx512": self.cpu.avx512, "vnni": self.cpu.vnni,
                "arm_dot": self.cpu.arm_dot},
        }
