"""The `qcompile` process: the command group, logging, signals, and how an error ends the process.

Every command runs under ``_as_process``: logging is configured (-v/-q where the command has them), a
QCompileError becomes ``error: <message>`` on stderr and exit 2, any other exception (a bug) one line and exit 3
(its traceback with --debug). `compile` also unwinds on Ctrl-C (exit 130) and on SIGTERM (exit 143) like an
exception, so no temporary file is left behind, and says that nothing was written.
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

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130   # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143    # 128 + SIGTERM


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a pipeline's timeout or kill) unwinds like Ctrl-C, so no temporary file is left behind."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def _terminate_like_interrupt() -> None:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


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
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _as_process(command: click.Command, *, interruptible: bool) -> click.Command:
    """``command`` run as described in the module docstring (a copy; ``command`` itself is left as it is)."""
    body: Callable[..., Any] = command.callback  # type: ignore[assignment]

    @functools.wraps(body)
    def run(**params: Any) -> Any:
        _configure_logging(params.get("verbose", 0), params.get("quiet", False))
        if interruptible:
            _terminate_like_interrupt()
        try:
            return body(**params)
        except QCompileError as exc:
            _fail(str(exc), EXIT_USER_ERROR)
        except KeyboardInterrupt as exc:
            if not interruptible:
                raise
            terminated = isinstance(exc, _Terminated)
            _fail(f"{'terminated' if terminated else 'interrupted'}; nothing was written",
                  EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
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


@click.group(cls=_DefaultToCompile, context_settings={"help_option_names": ["-h", "--help"]},
             commands=[_as_process(compile_command, interruptible=True),
                       *(_as_process(tool, interruptible=False)
                         for tool in (report_command, inspect_command, compare_command))])
@click.version_option(__version__, prog_name="qcompile")
def main() -> None:
    """qcompile: FP32 ONNX + calibration data -> INT8 ONNX that ONNX Runtime runs fast.

    Usage: qcompile MODEL.onnx --calib DATA_DIR [options]   (see `qcompile compile --help`)
    """
