"""The one-line error messages of model I/O: whitespace collapsed, optionally cut to a length."""

from __future__ import annotations

from qcompile.errors import ModelLoadError

__all__ = ["load_error", "one_line", "readable_line"]


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` on one line; with ``limit``, at most ``limit`` characters (ending in "...")."""
    line = " ".join(str(text).split())
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


def readable_line(text: str, limit: int) -> str:
    """``text`` on one line of at most ``limit`` characters, cut in the middle ("...") so that both the start
    (what failed) and the end (why) stay; names and values, which make lines long, sit in between."""
    line = one_line(text)
    if len(line) <= limit:
        return line
    tail = (limit - 3) // 3
    return line[: limit - 3 - tail] + "..." + line[-tail:]


def load_error(name: str, reason: str, limit: int | None = None) -> ModelLoadError:
    """The error for a model ``name`` that cannot be loaded because of ``reason``."""
    return ModelLoadError(one_line(f"cannot load model {name}: {reason}", limit))
