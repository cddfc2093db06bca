"""Presets and the weight-only settings (w4a16, w8a16): blocked INT4/INT8 or NF4 weights, float activations.

A block of ``block_size`` weights w along K is stored as codes q with w ≈ s·(q - z) (z = 0 when symmetric;
NF4: w ≈ absmax·c_q with c the 16 normal-float levels); the algorithm decides how q is rounded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qcompile.config.field_types import check_field_types
from qcompile.errors import ConfigError


class Preset(enum.Enum):
    """What gets quantised how: static INT8 weights and activations (w8a8, the default), or weight-only
    INT4/INT8 weights with float activations (w4a16, w8a16: LLM decode is memory-bound, weight bytes decide),
    or the static formats of config/static_formats.py: FP8 E4M3FN weights and activations (fp8), uint16
    activations with int8 weights (a16w8)."""

    W8A8 = "w8a8"
    W4A16 = "w4a16"
    W8A16 = "w8a16"
    FP8 = "fp8"
    A16W8 = "a16w8"

    @property
    def weight_only_bits(self) -> int | None:
        return {"w4a16": 4, "w8a16": 8}.get(self.value)


class WeightOnlyAlgorithm(enum.Enum):
    RTN = "rtn"        # round to nearest, per block
    GPTQ = "gptq"      # Hessian-aware error feedback (Frantar et al., 2022)
    AWQ = "awq"        # activation-aware per-input-channel scale search (Lin et al., 2023)


class WeightOnlyForm(enum.Enum):
    AUTO = "auto"                              # the target profile picks (from measurement)
    DEQUANTIZE_LINEAR = "dequantize_linear"    # standard ONNX: blocked DequantizeLinear -> MatMul (opset 21)
    MATMUL_NBITS = "matmul_nbits"              # com.microsoft MatMulNBits (ORT only)


class NumberFormat(enum.Enum):
    INTEGER = "integer"    # uniform INT4/INT8 codes with per-block scale (and zero point)
    NF4 = "nf4"            # QLoRA normal-float: 16 N(0,1) quantiles × per-block absmax (com.microsoft MatMulBnb4)


class ScaleDType(enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"    # stored as fp16 and cast at load (ORT folds the Cast): half the scale bytes


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Settings of the weight-only presets (w4a16, w8a16); ignored by w8a8. The bits come from the preset.

    MatMul/Gemm weights are quantised in blocks of ``block_size`` along K. ``embedding_bits`` and
    ``lm_head_bits`` keep the token embedding table and the final classifier at 8 bits (None = float)
    unless ``quantize_classifier`` asks for the preset's bits on the classifier too. Defaults come from the
    MiniLM measurements in the README (GPTQ with act_order and clip search, asymmetric blocks of 32).
    """

    block_size: int = 32
    symmetric: bool = False
    scale_dtype: ScaleDType = ScaleDType.FLOAT32
    algorithm: WeightOnlyAlgorithm = WeightOnlyAlgorithm.GPTQ   # MiniLM w4a16: cosine .989 vs RTN .973
    clip_search: bool = True            # MiniLM w4a16: lower output error for RTN, GPTQ and AWQ alike
    act_order: bool = True              # GPTQ, static groups: MiniLM output error .00142 vs .00176
    damping: float = 0.01
    gptq_batch: int = 128
    awq_grid: int = 20
    number_format: NumberFormat = NumberFormat.INTEGER
    form: WeightOnlyForm = WeightOnlyForm.AUTO
    accuracy_level: int | None = None
    embedding_bits: int | None = 8
    lm_head_bits: int | None = 8

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"weight_only.block_size must be a power of two >= 16, got {self.block_size}")
        if not 0.0 < self.damping < 1.0:
            raise ConfigError(f"weight_only.damping must be in (0, 1), got {self.damping}")
        if self.gptq_batch < 1 or self.awq_grid < 2:
            raise ConfigError("weight_only.gptq_batch must be >= 1 and weight_only.awq_grid >= 2")
        if self.accuracy_level is not None and self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"weight_only.accuracy_level must be 0..4, got {self.accuracy_level}")
        if self.accuracy_level is not None and self.form is WeightOnlyForm.DEQUANTIZE_LINEAR:
            raise ConfigError("accuracy_level is a MatMulNBits attribute: use form matmul_nbits or auto")
        if self.embedding_bits not in (None, 8):
            raise ConfigError(f"weight_only.embedding_bits must be 8 or none (float), got {self.embedding_bits}")
        if self.lm_head_bits not in (None, 4, 8):
            raise ConfigError(f"weight_only.lm_head_bits must be 4, 8 or none (float), got {self.lm_head_bits}")
        if self.number_format is NumberFormat.NF4 and self.algorithm is WeightOnlyAlgorithm.AWQ:
            raise ConfigError("nf4 weights support the rtn and gptq algorithms")
