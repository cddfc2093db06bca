"""A time limit on each ONNX Runtime run of calibration, fidelity and analysis: a sample that runs longer than
``limit_s`` seconds (a Loop whose trip count is INT64_MAX, a While that never ends) is stopped, not waited for.

    elapsed ≥ limit_s → RunOptions.terminate = True → ORT stops between two kernels (inside Loop bodies too)
                      → SampleTimeLimitError (one line)
    a signal meanwhile → RunOptions.terminate = True → the signal's exception propagates (ORT releases the
                      GIL but blocks the calling thread, so the run is on a worker thread and this one waits)

Latency measurement does not go through here: the worker thread would be part of what it measures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from qcompile.config.calibration import DEFAULT_SAMPLE_TIME_LIMIT_S
from qcompile.errors import CalibrationDataError

__all__ = ["DEFAULT_SAMPLE_TIME_LIMIT_S", "SampleTimeLimitError", "run_limited"]

_SILENT = 4   # ORT's log severity FATAL: a stopped run is reported by us, not as ORT's coloured error line
_WAIT_STEP_S = 0.05   # how often the waiting thread looks at the clock (and lets a signal in)
_STOP_GRACE_S = 5.0   # how long a signalled wait gives ORT to stop before it propagates anyway


class SampleTimeLimitError(CalibrationDataError):
    """One run of the model on one item took longer than the per-sample limit."""


def run_limited(session: Any, names: Sequence[str] | None, feed: Mapping[str, np.ndarray],
                limit_s: float | None = DEFAULT_SAMPLE_TIME_LIMIT_S) -> list:
    """``session.run(names, feed)``, stopped with SampleTimeLimitError after ``limit_s`` seconds (None: no limit).

    The run goes on a worker thread while this one waits in short, interruptible steps, so that a signal
    (Ctrl-C, SIGTERM) unwinds at once: it sets ORT's terminate flag, waits a moment for the run to stop, and
    propagates."""
    options = ort.RunOptions()
    options.log_severity_level = _SILENT
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = session.run(names, dict(feed), options)
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="qcompile-ort-run", daemon=True)
    deadline = None if limit_s is None else time.monotonic() + limit_s
    timed_out = False
    worker.start()
    try:
        while worker.is_alive():
            worker.join(_WAIT_STEP_S)
            if deadline is not None and not timed_out and time.monotonic() >= deadline and worker.is_alive():
                options.terminate = True
                timed_out = True
    except BaseException:   # a signal arrived while the run was going on
        options.terminate = True
        worker.join(_STOP_GRACE_S)
        raise
    if "error" in outcome:
        if timed_out:
            raise SampleTimeLimitError(
                f"one run of the model took over {limit_s:g} s and was stopped (a Loop with a huge trip count?); "
                "raise the per-sample limit with --sample-time-limit") from None
        raise outcome["error"]
    return outcome["value"]
