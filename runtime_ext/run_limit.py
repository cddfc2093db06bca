"""A time limit on each ONNX Runtime run of calibration, fidelity and analysis: a sample that runs longer than
``limit_s`` seconds (a Loop whose trip count is INT64_MAX, a While that never ends) is stopped, not waited for.

    timer(limit_s) → RunOptions.terminate = True → ORT stops between two kernels (inside Loop bodies too)
                   → SampleTimeLimitError (one line)

Latency measurement does not go through here: the timer thread would be part of what it measures.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from qcompile.config.calibration import DEFAULT_SAMPLE_TIME_LIMIT_S
from qcompile.errors import CalibrationDataError

__all__ = ["DEFAULT_SAMPLE_TIME_LIMIT_S", "SampleTimeLimitError", "run_limited"]

_SILENT = 4   # ORT's log severity FATAL: a stopped run is reported by us, not as ORT's coloured error line


class SampleTimeLimitError(CalibrationDataError):
    """One run of the model on one item took longer than the per-sample limit."""


def _stop(options: ort.RunOptions) -> None:
    options.terminate = True


def run_limited(session: Any, names: Sequence[str] | None, feed: Mapping[str, np.ndarray],
                limit_s: float | None = DEFAULT_SAMPLE_TIME_LIMIT_S) -> list:
    """``session.run(names, feed)``, stopped with SampleTimeLimitError after ``limit_s`` seconds (None: no limit)."""
    options = ort.RunOptions()
    options.log_severity_level = _SILENT
    if limit_s is None:
        return session.run(names, dict(feed), options)
    timer = threading.Timer(limit_s, _stop, (options,))
    timer.daemon = True
    timer.start()
    try:
        return session.run(names, dict(feed), options)
    except Exception as exc:  # ORT's pybind errors derive from Exception only
        if options.terminate:
            raise SampleTimeLimitError(
                f"one run of the model took over {limit_s:g} s and was stopped (a Loop with a huge trip count?); "
                "raise the per-sample limit with --sample-time-limit") from None
        raise exc
    finally:
        timer.cancel()
