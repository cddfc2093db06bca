"""What a compile decides before any pass runs; compile and inspect both call prepare_compile, so they agree.

    profile = resolve_profile(config.target)
    config', profile' = apply_static_preset(config, profile)      fp8 / a16w8: element types, placement
    config' = apply_target_defaults(config, profile)             e.g. cuda: w8a8 -> w4a16
    opset   : v = the model's default-domain opset                (plan_opset)
              weight-only, v < 21     → upgrade to 21 (blocked DequantizeLinear, INT4/UINT4); no fallback
              fp8 v < 19, a16w8 v < 21 → upgrade (float8 / 16-bit Q/DQ); no fallback
              v < 10                  → upgrade to 13 (no QuantizeLinear before opset 10); no fallback
              v < 13, per-channel     → upgrade to 13 (DequantizeLinear's axis); if the converter cannot,
                                        per-tensor weights instead, which every opset ≥ 10 accepts
              otherwise               → the model as it is
    IR version: v_ir < 4 (every initializer also a graph input) → the initializers leave graph.input and the
              model is stamped max(4, the least IR version its opsets need); the Q/DQ constants the passes add
              are initializers that no IR-3 checker would accept otherwise
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from dataclasses import dataclass

import onnx

from qcompile.config import CompileConfig, Granularity
from qcompile.config.static_formats import static_format
from qcompile.errors import UnsupportedModelError
from qcompile.passes.prepare.upgrade_opset import (PER_CHANNEL_MIN_OPSET, QDQ_MIN_OPSET, default_opset,
                                                   upgrade_default_opset)
from qcompile.runtime_ext.static_presets import apply_static_preset
from qcompile.runtime_ext.target import apply_target_defaults, resolve_profile

logger = logging.getLogger(__name__)

WEIGHT_ONLY_MIN_OPSET = 21     # blocked DequantizeLinear and INT4/UINT4 tensors exist from opset 21
INITIALIZERS_NOT_INPUTS_IR = 4  # from IR version 4 an initializer need not be listed as a graph input


class OpsetNeed(enum.Enum):
    """Why the model's opset is raised, which decides what happens when the converter fails."""

    NONE = "none"
    WEIGHT_ONLY = "weight-only"       # required: no per-tensor form for blocked weights
    STATIC_FORMAT = "static-format"   # required: float8 Q/DQ from opset 19, 16-bit from 21
    QDQ = "qdq"                       # required: no QuantizeLinear below opset 10
    PER_CHANNEL = "per-channel"       # optional: per-tensor weights instead


@dataclass(frozen=True)
class OpsetPlan:
    current: int
    target: int
    need: OpsetNeed


def plan_opset(model: onnx.ModelProto, config: CompileConfig) -> OpsetPlan:
    """The opset the compile converts ``model`` to under ``config`` (the table in the module docstring)."""
    opset = default_opset(model)
    if config.preset.weight_only_bits is not None and opset < WEIGHT_ONLY_MIN_OPSET:
        return OpsetPlan(opset, WEIGHT_ONLY_MIN_OPSET, OpsetNeed.WEIGHT_ONLY)
    fmt = static_format(config.preset)
    if fmt is not None and opset < fmt.min_opset:
        return OpsetPlan(opset, fmt.min_opset, OpsetNeed.STATIC_FORMAT)
    if opset < QDQ_MIN_OPSET:
        return OpsetPlan(opset, PER_CHANNEL_MIN_OPSET, OpsetNeed.QDQ)
    if opset < PER_CHANNEL_MIN_OPSET and config.weight.granularity is Granularity.CHANNEL:
        return OpsetPlan(opset, PER_CHANNEL_MIN_OPSET, OpsetNeed.PER_CHANNEL)
    return OpsetPlan(opset, opset, OpsetNeed.NONE)


def prepare_opset(model: onnx.ModelProto, config: CompileConfig) -> tuple[onnx.ModelProto, CompileConfig, str]:
    """(model at the planned opset, config, note for the report); per-tensor weights if an optional upgrade
    fails, a one-line UnsupportedModelError if a required one does."""
    plan = plan_opset(model, config)
    upgrade = f"upgraded opset {plan.current} -> {plan.target}"
    if plan.need is OpsetNeed.NONE:
        return model, config, ""
    if plan.need is OpsetNeed.WEIGHT_ONLY:
        return upgrade_default_opset(model, plan.target), config, f"{upgrade} for blocked weight-only quantisation"
    if plan.need is OpsetNeed.STATIC_FORMAT:
        return (upgrade_default_opset(model, plan.target), config,
                f"{upgrade} for {config.preset.value} QuantizeLinear/DequantizeLinear")
    try:
        upgraded = upgrade_default_opset(model, plan.target)
    except UnsupportedModelError as exc:
        if plan.need is OpsetNeed.QDQ:
            raise UnsupportedModelError(f"opset {plan.current} has no QuantizeLinear and {exc}") from None
        note = f"{exc}; using per-tensor weights instead"
        logger.warning(note)
        return model, dataclasses.replace(config, weight=dataclasses.replace(
            config.weight, granularity=Granularity.TENSOR)), note
    return upgraded, config, upgrade if plan.need is OpsetNeed.QDQ else f"{upgrade} for per-channel weights"


def lift_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """An IR-3 model as IR ≥ 4 with its initializers no longer graph inputs (module docstring); others as they are."""
    if model.ir_version >= INITIALIZERS_NOT_INPUTS_IR:
        return model
    lifted = onnx.ModelProto()
    lifted.CopyFrom(model)
    constants = {t.name for t in lifted.graph.initializer}
    inputs = [i for i in lifted.graph.input if i.name not in constants]
    del lifted.graph.input[:]
    lifted.graph.input.extend(inputs)
    needed = onnx.helper.find_min_ir_version_for(list(lifted.opset_import), ignore_unknown=True)
    lifted.ir_version = max(INITIALIZERS_NOT_INPUTS_IR, needed)
    logger.info("IR version %d -> %d: initializers are no longer graph inputs", model.ir_version, lifted.ir_version)
    return lifted


@dataclass(frozen=True)
class Preparation:
    """The target profile, the config after the target's defaults, and the model the passes start from."""

    profile: object
    config: CompileConfig
    model: onnx.ModelProto
    target_note: str     # what the target's defaults changed (the report's target.note)
    opset_note: str      # the opset upgrade or its fallback (a report warning)


def prepare_compile(model: onnx.ModelProto, config: CompileConfig) -> Preparation:
    """Target profile and defaults, then the opset (module docstring)."""
    profile = resolve_profile(config.target)
    config, profile, preset_note = apply_static_preset(config, profile)
    config, target_note = apply_target_defaults(config, profile)
    target_note = "; ".join(n for n in (preset_note, target_note) if n)
    working, config, opset_note = prepare_opset(model, config)
    working = lift_ir_version(working)
    return Preparation(profile=profile, config=config, model=working, target_note=target_note,
                       opset_note=opset_note)
