"""What a long compile shows while it works: progress bars for counted work, and a phase line for the rest.

    phase(name) lasting t seconds:  on a terminal (stderr), a line "name: <elapsed>" from t = PHASE_SHOW_AFTER_S
                                    on, refreshed every PHASE_TICK_S, removed when the phase ends;
                                    otherwise one log record "name: done in t s" on the ``qcompile.progress``
                                    logger when it ends (``show_phases`` sends it to stdout, so that stderr
                                    keeps errors and warnings only and an error stays one line)

Both only when the caller enabled progress; bars (``progress_bar``) are tqdm's and, like the phase line, stay off
when stderr is not a terminal, so an error remains one clean line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator

from tqdm import tqdm

__all__ = ["PROGRESS_LOGGER", "phase", "progress_bar", "show_phases"]

PROGRESS_LOGGER = "qcompile.progress"
PHASE_SHOW_AFTER_S = 2.0
PHASE_TICK_S = 0.5

logger = logging.getLogger(PROGRESS_LOGGER)


class _Stdout(logging.Handler):
    """Writes to the sys.stdout of the moment (a test runner swaps it per command)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stdout.write(self.format(record) + "\n")
        sys.stdout.flush()


def show_phases(enabled: bool) -> None:
    """Phase records on stdout as "qcompile: <phase>: done in t s" when ``enabled``; none otherwise."""
    logger.handlers[:] = [h for h in logger.handlers if not isinstance(h, _Stdout)]
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    if enabled:
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("qcompile: %(message)s"))
        logger.addHandler(handler)


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str):
    """A tqdm bar over ``total`` units, or a null context when progress is off."""
    if not enabled:
        return contextlib.nullcontext(None)
    # disable=None: no bar when stderr is not a terminal (CI logs, pipes), so errors stay one clean line
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None)


def _show_elapsed(name: str, started: float, done: threading.Event) -> None:
    if done.wait(PHASE_SHOW_AFTER_S):
        return
    with tqdm(total=None, desc=name, bar_format="{desc}: {elapsed}", leave=False) as line:
        while not done.wait(PHASE_TICK_S):
            line.refresh()


@contextlib.contextmanager
def phase(name: str, enabled: bool) -> Iterator[None]:
    """Announce the phase ``name`` as the module docstring says (nothing when ``enabled`` is False)."""
    if not enabled:
        yield
        return
    started = time.perf_counter()
    on_terminal = sys.stderr.isatty()
    done = threading.Event()
    ticker = threading.Thread(target=_show_elapsed, args=(name, started, done), daemon=True) if on_terminal else None
    if ticker is not None:
        ticker.start()
    try:
        yield
    finally:
        done.set()
        if ticker is not None:
            ticker.join(timeout=1.0)
        else:
            logger.info("%s: done in %.1f s", name, time.perf_counter() - started)
