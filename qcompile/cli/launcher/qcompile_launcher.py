"""The `qcompile` console script: signal handlers first, then the imports (about 2 s: onnx, onnxruntime, numpy).

A top-level module of its own (installed from this folder), because importing anything under ``qcompile``
first runs the package's __init__, which imports the whole compiler. SIGINT, SIGTERM or SIGHUP during the
imports ends the process with 128 + the signal's number and one line, as qcompile/cli/main.py does later on
(nothing has been written yet).
"""

from __future__ import annotations

import importlib
import signal
import sys
from typing import Any, NoReturn

_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


class StartupSignal(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise(signum: int, frame: Any) -> None:
    raise StartupSignal(signum)


def main() -> NoReturn:
    for signum in _WORDS:
        signal.signal(signum, _raise)
    try:
        # imported here, not at the top: the handlers above must be in place before the compiler's imports start
        cli = importlib.import_module("qcompile.cli")
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        sys.stderr.write(f"error: {_WORDS[signum]} during start-up; nothing was written\n")
        sys.exit(128 + int(signum))
    sys.exit(cli.main())
