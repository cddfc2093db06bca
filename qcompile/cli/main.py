"""The `qcompile` process: the command group, logging, signals, and how an error ends the process.

Every command runs under ``_as_process``: logging is configured (-v/-q where the command has them), a
QCompileError becomes ``error: <message>`` on stderr and exit 2, any other exception (a bug) one line and exit 3
(its traceback with --debug); a message is one line of at most MESSAGE_LIMIT characters (cut in the middle). SIGINT, SIGTERM and
SIGHUP unwind like an exception from the moment the command line is parsed (the console script's launcher
covers the imports before), so no temporary file is left behind, and end the process with 128 + the signal's
number (130, 143, 129) and one line saying that nothing was written.
"""

from __future__ import annotations

import copy
import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import click
from onnx_graphsurgeon.logger import G_LOGGER

from qcompile.version import __version__
from qcompile.cli.compile import compile_command
from qcompile.cli.tools import compare_command, inspect_command, report_command
from qcompile.errors import QCompileError
from qcompile.io.messages import readable_line

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_HANGUP = 129        # 128 + SIGHUP (the terminal closed)
EXIT_INTERRUPTED = 130   # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143    # 128 + SIGTERM
MESSAGE_LIMIT = 300      # characters of an error line; longer ones end in "..."

_SIGNAL_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


class _Signalled(KeyboardInterrupt):
    """SIGTERM (a pipeline's timeout or kill) or SIGHUP unwinds like Ctrl-C, so no temporary file is left."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum: int, frame: Any) -> None:
    raise _Signalled(signum)


def _unwind_on_signals() -> None:
    """SIGTERM and SIGHUP raise like SIGINT (main thread only; a handler someone else installed is kept)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, _raise_signalled) or _is_launcher_handler(signum):
            signal.signal(signum, _raise_signalled)


def _is_launcher_handler(signum: int) -> bool:
    return getattr(signal.getsignal(signum), "__module__", None) == "qcompile_launcher"


def _interrupted(exc: KeyboardInterrupt) -> NoReturn:
    signum = getattr(exc, "signum", signal.SIGINT)
    _fail(f"{_SIGNAL_WORDS.get(signum, 'interrupted')}; nothing was written", 128 + int(signum))


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = (logging.ERROR if quiet else logging.WARNING if verbose == 0 else logging.INFO if verbose == 1
             else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("onnx_graphsurgeon").setLevel(max(level, logging.ERROR))
    # graphsurgeon's own logger prints to stdout; its errors reach us as exceptions
    G_LOGGER.severity = G_LOGGER.WARNING if verbose >= 2 else G_LOGGER.CRITICAL + 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {readable_line(message, MESSAGE_LIMIT)}", err=True)
    sys.exit(code)


def _as_process(command: click.Command) -> click.Command:
    """``command`` run as described in the module docstring (a copy; ``command`` itself is left as it is)."""
    body: Callable[..., Any] = command.callback  # type: ignore[assignment]

    @functools.wraps(body)
    def run(**params: Any) -> Any:
        _configure_logging(params.get("verbose", 0), params.get("quiet", False))
        _unwind_on_signals()
        try:
            return body(**params)
        except QCompileError as exc:
            _fail(str(exc), EXIT_USER_ERROR)
        except KeyboardInterrupt as exc:
            _interrupted(exc)
        except Exception as exc:  # a bug: one line unless --debug
            if params.get("debug"):
                raise
            _fail(f"internal error ({type(exc).__name__}: {_first_line(exc)}); rerun with --debug and report it",
                  EXIT_INTERNAL_ERROR)

    process = copy.copy(command)
    process.callback = run
    return process


class _DefaultToCompile(click.Group):
    """`qcompile MODEL --calib DIR` runs the compile command; named subcommands run themselves."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["compile", *args]
        return super().parse_args(ctx, args)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        # click turns a KeyboardInterrupt while parsing into "Aborted!" and exit 1; ours says what happened
        _unwind_on_signals()
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt as exc:
            _interrupted(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            _interrupted(exc)


@click.group(cls=_DefaultToCompile, context_settings={"help_option_names": ["-h", "--help"]},
             commands=[_as_process(command)
                       for command in (compile_command, report_command, inspect_command, compare_command)])
@click.version_option(__version__, prog_name="qcompile")
def main() -> None:
    """qcompile: FP32 ONNX + calibration data -> INT8 ONNX that ONNX Runtime runs fast.

    Usage: qcompile MODEL.onnx --calib DATA_DIR [options]   (see `qcompile compile --help`)
    """
