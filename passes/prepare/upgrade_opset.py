"""Opset upgrade: bring the default ONNX domain to the opset the emitted format needs.

Per-channel DequantizeLinear (the ``axis`` attribute) exists from opset 13, so a model at opset v < 13 is
converted with ONNX's version converter to 13 before quantisation; v ≥ 13 is left as it is. Custom domains
(com.microsoft, ai.onnx.ml) are carried over untouched. When the converter cannot convert the model, the
caller falls back to per-tensor weights, which every opset ≥ 10 accepts.
"""

from __future__ import annotations

import logging

import onnx
from onnx import version_converter

from qcompile.errors import UnsupportedModelError

logger = logging.getLogger(__name__)

PER_CHANNEL_MIN_OPSET = 13
QDQ_MIN_OPSET = 10


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def upgrade_default_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """The model converted to ``target`` in the default domain; raises UnsupportedModelError if it cannot."""
    current = default_opset(model)
    if current >= target:
        return model
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises bare RuntimeErrors per adapter
        raise UnsupportedModelError(
            f"cannot upgrade the model from opset {current} to {target}: {str(exc).splitlines()[0]}") from exc
    logger.info("upgraded the model from opset %d to %d", current, target)
    return converted
