"""The static presets beyond INT8 (``--preset fp8``, ``--preset a16w8``) as data: element types and opsets.

A static preset quantises weights and activations with the same Q/DQ placement as w8a8, only the element
types change:

    fp8     activations FLOAT8E4M3FN per tensor, s = amax/448 (calibrated); weights FLOAT8E4M3FN per output
            channel, s_c = max|W_c|/448; zero points 0. QuantizeLinear/DequantizeLinear on float8 need opset 19
            (saturate attribute, default 1). The format of NVIDIA ModelOpt / AMD Quark for Hopper-class GPUs.
    a16w8   activations uint16 per tensor (asymmetric, 65536 levels), weights int8 per output channel
            (symmetric). 16-bit Q/DQ needs opset 21. The format of Qualcomm's and AMD's NPU flows, for models
            that int8 activations hurt.

How each target runs them (and which it refuses) is decided in runtime_ext/static_presets.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompile.config.weight_only import Preset
from qcompile.numerics.qparams import QuantDType


@dataclass(frozen=True)
class StaticFormat:
    """The element types of a static preset and the opset its Q/DQ need."""

    activation_dtype: QuantDType
    weight_dtype: QuantDType
    activation_symmetric: bool
    min_opset: int


FP8_FORMAT = StaticFormat(QuantDType.FLOAT8E4M3FN, QuantDType.FLOAT8E4M3FN, activation_symmetric=True, min_opset=19)
A16W8_FORMAT = StaticFormat(QuantDType.UINT16, QuantDType.INT8, activation_symmetric=False, min_opset=21)


def static_format(preset: Preset) -> StaticFormat | None:
    """The format of a static non-INT8 preset; None for w8a8 (the target decides) and the weight-only ones."""
    if preset is Preset.FP8:
        return FP8_FORMAT
    if preset is Preset.A16W8:
        return A16W8_FORMAT
    return None
