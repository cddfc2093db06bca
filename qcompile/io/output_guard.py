"""The output guard: a run never writes a file it reads, and replaces an existing file only when asked to.

With R the files a run reads (the model, its external data, every calibration file, the recipe, the eval data,
the report a page is rendered from) and O the files it writes, an output o is allowed iff

    realpath(o) ∉ {realpath(r) : r ∈ R}  ∧  ¬∃ r ∈ R: samefile(o, r)     (no name, symlink or hard link aliases)
    ∧  (¬exists(o) ∨ overwrite)                                          (an existing file only with --overwrite)
    ∧  realpath(o) ≠ realpath(o') for the other outputs o' ∈ O

The check runs before any work (the CLI: once the command line is parsed; compile_model: once the model and
its external data are loaded) and again when the files are staged (qcompile.io.staging's ``protected``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qcompile.errors import ModelSaveError
from qcompile.io.messages import one_line

__all__ = ["OutputGuard", "ReadFile"]


@dataclass(frozen=True)
class ReadFile:
    """A file the run reads, and what it is to the user (for the message)."""

    path: Path
    role: str          # "input model", "calibration file", "recipe", ...


def _aliases(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:    # one of them does not exist
        return False


@dataclass(frozen=True)
class OutputGuard:
    """The files a run reads and whether existing outputs may be replaced (module docstring)."""

    reads: tuple[ReadFile, ...] = ()
    overwrite: bool = False

    def reading(self, role: str, paths: Iterable[str | os.PathLike]) -> OutputGuard:
        """This guard with ``paths`` added to the files read."""
        added = tuple(ReadFile(Path(os.path.abspath(os.fspath(p))), role) for p in paths)
        return OutputGuard(self.reads + added, self.overwrite)

    @property
    def protected(self) -> tuple[Path, ...]:
        """The paths staging must never write (qcompile.io.staging's ``protected``)."""
        return tuple(r.path for r in self.reads)

    def check(self, outputs: Sequence[tuple[str | os.PathLike, str]]) -> None:
        """Raise ModelSaveError (one line) unless every ``(path, what)`` output may be written."""
        resolved: list[tuple[Path, str]] = []
        for raw, what in outputs:
            path = Path(os.path.abspath(os.fspath(raw)))
            for read in self.reads:
                if _aliases(path, read.path):
                    raise ModelSaveError(one_line(
                        f"refusing to overwrite the {read.role} {read.path} with the {what} (this run reads it); "
                        "choose another path", 300))
            for other, other_what in resolved:
                if os.path.realpath(path) == os.path.realpath(other):
                    raise ModelSaveError(one_line(
                        f"the {other_what} and the {what} must be different files ({path})", 300))
            if not self.overwrite and os.path.lexists(path):
                raise ModelSaveError(one_line(
                    f"{path} exists; pass --overwrite (API: overwrite=True) to replace the {what}", 300))
            resolved.append((path, what))
