"""The calibration source of compile_model: a folder, a re-iterable of feed dicts, or a one-shot iterator that is
first spooled item by item to .npz files in a temporary folder (closed with the compile), so it can be read
several times (ranges, then fidelity) with memory that does not grow with the number of items. Token-only
windows for a KV-cache decoder become prefill + decode steps (data/kv_cache.py).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qcompile.config import CompileConfig
from qcompile.data.kv_cache import detect_kv_cache, first_item_names, kv_calibration_source
from qcompile.data.source import CalibrationSource, open_calibration_source
from qcompile.data.specs import InputSpec, model_input_specs
from qcompile.errors import CalibrationDataError

__all__ = ["open_calibration"]


def open_calibration(calib: Any, model: onnx.ModelProto, config: CompileConfig,
                      stack: contextlib.ExitStack) -> CalibrationSource:
    """The calibration source; a one-shot iterator is first spooled to a temporary folder (closed by ``stack``)."""
    specs = model_input_specs(model)
    if _is_one_shot(calib):
        calib = _spool_to_folder(calib, specs, config.calibration.num_samples,
                                 Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qcompile-calib-"))))
    layout = detect_kv_cache(model)
    names = first_item_names(calib) if layout is not None else None
    if layout is not None and names is not None and not names & layout.past_names:
        # token-only windows for a KV-cache decoder: the FP32 model makes the pasts (data/kv_cache.py)
        tokens = open_calibration_source(calib, [s for s in specs if s.name in names],
                                         num_samples=config.calibration.num_samples)
        return kv_calibration_source(model, layout, tokens, specs, custom_op_library=config.custom_op_library)
    return open_calibration_source(calib, specs, num_samples=config.calibration.num_samples,
                                   image=config.calibration.image)


def _is_one_shot(calib: object) -> bool:
    return not isinstance(calib, (str, Path, bytes)) and hasattr(calib, "__next__") and iter(calib) is calib


def _spool_to_folder(items, specs: list[InputSpec], cap: int | None, folder: Path) -> Path:
    """A one-shot iterator is written item by item to .npz files, so it can be read several times
    (ranges, then fidelity) with memory that does not grow with the number of items."""
    for index, item in enumerate(items):
        if cap is not None and index >= cap:
            break
        if not isinstance(item, Mapping):
            if len(specs) != 1:
                raise CalibrationDataError(f"calibration item {index} is a {type(item).__name__}, not a dict of "
                                           "input name -> array")
            item = {specs[0].name: item}
        try:
            arrays = {str(k): np.asarray(v) for k, v in item.items()}
        except (ValueError, TypeError) as exc:  # ragged nested lists, objects numpy cannot convert
            raise CalibrationDataError(f"calibration item {index}: not a numeric array ({exc})") from None
        if any(a.dtype == object for a in arrays.values()):
            raise CalibrationDataError(f"calibration item {index} holds non-numeric (object) arrays")
        np.savez(folder / f"item_{index:08d}.npz", **arrays)
    return folder
