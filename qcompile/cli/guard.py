"""What a command reads, as an OutputGuard (qcompile/io/output_guard.py), known from its command line alone.

compile reads the model, the calibration files, the recipe and the eval data; the model's external data files
are added by compile_model once the model is loaded. `qcompile report` reads the JSON report and, through it,
names the model it describes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qcompile.data.readers import data_file_paths
from qcompile.io.output_guard import OutputGuard


def compile_guard(model: Path, calib: str, config_path: str | None, eval_data: str | None,
                  overwrite: bool) -> OutputGuard:
    """The files `qcompile compile` reads (but the model's external data, see the module docstring)."""
    guard = OutputGuard(overwrite=overwrite).reading("input model", [model])
    guard = guard.reading("calibration file", data_file_paths(calib))
    guard = guard.reading("recipe", [config_path] if config_path else [])
    return guard.reading("eval data file", data_file_paths(eval_data))


def report_guard(report_json: Path, described: Iterable[str], overwrite: bool) -> OutputGuard:
    """The files `qcompile report` must not write: the report and the models it names."""
    return OutputGuard(overwrite=overwrite).reading("report", [report_json]).reading("model", described)
