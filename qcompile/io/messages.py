"""The one-line error messages of model I/O: whitespace collapsed, optionally cut to a length."""

from __future__ import annotations

from qcompile.errors import ModelLoadError

__all__ = ["load_error", "one_line"]


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` on one line; with ``limit``, at most ``limit`` characters (ending in "...")."""
    line = " ".join(str(text).split())
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


def load_error(name: str, reason: str, limit: int | None = None) -> ModelLoadError:
    """The error for a model ``name`` that cannot be loaded because of ``reason``."""
    return ModelLoadError(one_line(f"cannot load model {name}: {reason}", limit))
