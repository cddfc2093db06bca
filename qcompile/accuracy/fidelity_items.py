"""What the compile's fidelity is measured on, so that the printed numbers are held-out ones where possible:

    eval data given            → its first fidelity_samples items          (held out, unless it names a file
                                                                           calibration reads)
    a calibration folder split → the files qcompile/data/holdout.py kept out (held out)
    otherwise                  → the first fidelity_samples calibration items (marked: not held out)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx

from qcompile.config import CompileConfig
from qcompile.data import CalibrationSource, load_eval_data, model_input_specs
from qcompile.data.readers import data_file_paths


def items_wanted(config: CompileConfig) -> int:
    """Items the verify step and the accuracy budget would like to evaluate on."""
    budget = config.accuracy_budget
    return max(config.fidelity_samples, budget.eval_samples if budget is not None else 0)


@dataclass(frozen=True)
class FidelityItems:
    """Items to measure fidelity on, where they come from, and whether calibration saw them."""

    items: Iterable[Mapping[str, np.ndarray]]
    source: str
    held_out: bool


def fidelity_items(model: onnx.ModelProto, source: CalibrationSource, eval_data: Any,
                   config: CompileConfig) -> FidelityItems:
    """What fidelity is measured on: eval data (given, or held out of the calibration folder), else the
    calibration items, marked as not held out."""
    if eval_data is None or config.fidelity_samples == 0:
        return FidelityItems(source, source.description, held_out=False)
    evaluation = load_eval_data(eval_data, model_input_specs(model), config.fidelity_samples,
                                image=config.calibration.image)
    return FidelityItems(evaluation.items, evaluation.description, held_out=not _shares_files(source, eval_data))


def _shares_files(source: CalibrationSource, eval_data: Any) -> bool:
    """Whether eval data given as a path names any file calibration reads (then it is not held out)."""
    files = source.folder_files
    if files is None or not isinstance(eval_data, (str, Path)):
        return False
    calibration = {os.path.realpath(p) for p in files.paths}
    return any(os.path.realpath(p) in calibration for p in data_file_paths(eval_data))
