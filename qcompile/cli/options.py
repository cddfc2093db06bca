"""The command-line options, in groups that commands stack as decorators.

Options that change the CompileConfig default to "not given" (so a TOML recipe's value stands, see build.py);
their help shows the built-in default, read from CompileConfig() so it is stated in one place only. Enum-valued
options accept the enum's values and hand the command the enum member.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

import click

from qcompile.cli.build import OutlierSides
from qcompile.config import (AccuracyBudget, CalibrationMethod, CalibrationProvider, CompileConfig, ImageLayout,
                             LayerAnalysis, Preset, Target, WeightOnlyAlgorithm, WeightOnlyForm, WeightRounding)

_DEFAULT = CompileConfig()
_DEFAULT_EVAL_SAMPLES = {f.name: f.default for f in dataclasses.fields(AccuracyBudget)}["eval_samples"]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class EnumChoice(click.Choice):
    """A choice among an Enum's values that converts to the member (messages and --help as click.Choice)."""

    def __init__(self, enum_type: type[enum.Enum]):
        super().__init__([member.value for member in enum_type])
        self.enum_type = enum_type

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> enum.Enum:
        if isinstance(value, self.enum_type):
            return value
        return self.enum_type(super().convert(value, param, ctx))


def _stack(*options: Decorator) -> Decorator:
    """One decorator applying ``options``; they appear in --help in the order listed."""
    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func
    return apply


def _csv(values: tuple[Any, ...]) -> str:
    return ",".join(str(v) for v in values)


selection_options = _stack(
    click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML recipe; flags override it."),
    click.option("--op-types", multiple=True, show_default=_csv(_DEFAULT.op_types),
                 help="Op types to quantise, comma-separated."),
    click.option("--exclude", multiple=True, help="Node names or regexes to keep float (repeatable, comma-separated)."),
    click.option("--quantize-classifier", is_flag=True,
                 help="Quantise the final classifier to static int8 without measuring (by default its precision "
                      "is measured: static int8, int8 weights with a float input, or float)."),
    click.option("--keep-classifier-float", is_flag=True,
                 help="Keep the final classifier float without measuring."),
)

image_options = _stack(
    click.option("--image-size", help="Image data: resize to N or HxW (default: the model's input size)."),
    click.option("--mean", show_default=_csv(_DEFAULT.calibration.image.mean),
                 help="Image data: per-channel mean after x/255, e.g. 0.485,0.456,0.406."),
    click.option("--std", show_default=_csv(_DEFAULT.calibration.image.std),
                 help="Image data: per-channel std after x/255, e.g. 0.229,0.224,0.225."),
    click.option("--layout", type=EnumChoice(ImageLayout), show_default=_DEFAULT.calibration.image.layout.value,
                 help="Image tensor layout."),
)

calibration_options = _stack(
    click.option("--num-samples", type=int, show_default="all", help="Use at most this many calibration samples."),
    click.option("--batch-size", type=int, show_default=str(_DEFAULT.calibration.batch_size),
                 help="Calibration batch size."),
    image_options,
    click.option("--method", type=EnumChoice(CalibrationMethod), show_default=_DEFAULT.activation.method.value,
                 help="Activation calibration method."),
    click.option("--percentile", type=float, show_default=str(_DEFAULT.activation.percentile),
                 help="Percentile for --method percentile."),
    click.option("--calib-provider", type=EnumChoice(CalibrationProvider),
                 show_default=_DEFAULT.calibration.provider.value,
                 help="Execution provider calibration runs on (cuda needs qcompile[gpu])."),
    click.option("--workers", help="Calibrate on Ray tasks, one per shard of --calib: 'ray' (local cluster) or "
                                   "ray://HOST:PORT; needs qcompile[distributed]."),
    click.option("--sample-time-limit", type=float, show_default=f"{_DEFAULT.calibration.sample_time_limit_s:g}",
                 help="Seconds one run of the model on one item may take (calibration, fidelity)."),
    click.option("--fidelity-samples", type=int, show_default=str(_DEFAULT.fidelity_samples),
                 help="Items fidelity vs FP32 is measured on (held-out ones where there are, see --eval-data)."),
    click.option("--weight-rounding", type=EnumChoice(WeightRounding), show_default=_DEFAULT.rounding.method.value,
                 help="Static INT8 weights: round to nearest, or learn floor/ceil per weight on the calibration "
                      "inputs (minimises each layer's output error)."),
)

target_options = _stack(
    click.option("--target", type=EnumChoice(Target), show_default=_DEFAULT.target.value,
                 help="Runtime target: cpu (static INT8 ORT's CPU EP fuses), cuda (weight-only INT4 MatMulNBits + "
                      "float16), tensorrt (symmetric INT8 Q/DQ on Conv/MatMul/Gemm inputs)."),
    click.option("--custom-op-library", type=click.Path(dir_okay=False),
                 help="Opt-in: load this ORT custom-op shared library into qcompile's sessions (runs its code)."),
)

weight_only_options = _stack(
    click.option("--preset", type=EnumChoice(Preset), show_default=_DEFAULT.preset.value,
                 help="w8a8 (static INT8), fp8 (FP8 E4M3FN Q/DQ: TensorRT on FP8 GPUs; CPU runs it for validation), "
                      "a16w8 (uint16 activations, int8 weights: NPU flows) or weight-only w4a16 / w8a16."),
    click.option("--block-size", type=int, show_default=str(_DEFAULT.weight_only.block_size),
                 help="Weight-only: block size along K (32, 64, 128)."),
    click.option("--algorithm", type=EnumChoice(WeightOnlyAlgorithm),
                 show_default=_DEFAULT.weight_only.algorithm.value, help="Weight-only: rtn, gptq or awq."),
    click.option("--form", type=EnumChoice(WeightOnlyForm), show_default=_DEFAULT.weight_only.form.value,
                 help="Weight-only: dequantize_linear (standard), matmul_nbits (ORT contrib) or auto (target)."),
    click.option("--accuracy-level", type=click.IntRange(0, 4), help="MatMulNBits accuracy_level (4 = int8 compute)."),
    click.option("--symmetric/--asymmetric", default=None,
                 show_default="symmetric" if _DEFAULT.weight_only.symmetric else "asymmetric",
                 help="Weight-only: symmetric blocks (no zero points)."),
    click.option("--act-order/--no-act-order", default=None,
                 show_default="act-order" if _DEFAULT.weight_only.act_order else "no-act-order",
                 help="GPTQ: visit K by decreasing Hessian diagonal."),
    click.option("--clip-search/--no-clip-search", default=None,
                 show_default="clip-search" if _DEFAULT.weight_only.clip_search else "no-clip-search",
                 help="Weight-only: search a clip ratio per block."),
)

accuracy_options = _stack(
    click.option("--min-cosine", type=float, help="Accuracy budget: mean cosine vs FP32 of every output (e.g. "
                                                  "0.99); the most sensitive nodes fall back to float until it holds."),
    click.option("--max-error", type=float, help="Accuracy budget: relative L2 error vs FP32 of every output."),
    click.option("--min-top1-agreement", type=float, help="Accuracy budget: task agreement with FP32 "
                 "(top-1 of class scores [B, C]; collapsed argmax sequences of [B, T, C] scores)."),
    click.option("--eval-data", help="Held-out data for fidelity and the budget: a folder (like --calib) or an .npz "
                                     "of arrays keyed by input name (default: a quarter of the --calib files, up "
                                     "to the items needed, held out of calibration; folders of 4+ files)."),
    click.option("--eval-samples", type=int, show_default=str(_DEFAULT_EVAL_SAMPLES),
                 help="Eval items the budget is checked on."),
    click.option("--layer-analysis", type=EnumChoice(LayerAnalysis), show_default=_DEFAULT.analysis.layers.value,
                 help="Per-layer error in the report: none, sqnr or sensitivity (one run per node)."),
    click.option("--no-latency-check", "no_latency_check", is_flag=True,
                 help="Skip the quick FP32-vs-quantised timing after the compile (and its not-faster warning)."),
    click.option("--analysis-samples", type=int, show_default=str(_DEFAULT.analysis.samples),
                 help="Calibration items for the per-layer analysis."),
)

transformer_options = _stack(
    click.option("--smoothquant", metavar="ALPHA|auto|off", is_flag=False, flag_value="auto",
                 help="SmoothQuant on every MatMul/Gemm input: a fixed α in [0, 1], 'auto' (search α per layer, "
                      "the value without an argument) or 'off'. Default: auto α on graphs with LayerNormalization."),
    click.option("--split-outliers", type=EnumChoice(OutlierSides), show_default="off",
                 help="Outlier-channel splitting of MatMul/Gemm inputs."),
    click.option("--split-ratio", type=float, show_default=str(_DEFAULT.outlier_split.expand_ratio),
                 help="Outlier splitting: extra channels per layer, as a fraction of its input channels."),
    click.option("--quantize-attention", is_flag=True,
                 help="Quantise MatMuls of two activations too (attention QK^T, P*V; float by default)."),
    click.option("--float-embeddings", is_flag=True, help="Keep Gather tables (embeddings) float."),
)

progress_options = _stack(
    click.option("--no-progress", is_flag=True, help="No progress bars."),
    click.option("-v", "--verbose", count=True, help="More logging (-vv for debug)."),
    click.option("-q", "--quiet", is_flag=True, help="Only errors."),
)

# inspect takes the two choices that change its plan without the rest of the compile's flags
inspect_format_options = _stack(
    click.option("--preset", type=EnumChoice(Preset), show_default=_DEFAULT.preset.value,
                 help="Plan for this preset (w8a8, fp8, a16w8, w4a16, w8a16)."),
    click.option("--target", type=EnumChoice(Target), show_default=_DEFAULT.target.value,
                 help="Plan for this runtime target."),
)

debug_option = click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
