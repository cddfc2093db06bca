"""Atomic writes: files staged as temporaries in their destination folder, then renamed into place together.

Rules: a destination's folder must exist and the destination must not be a directory or a non-regular file
(renaming over /dev/null or a FIFO would replace the node itself); no ``protected`` path (the input model and
its external data files) is ever written over, by name or through a link.  Each temporary is fsync'ed before
``os.replace`` puts it in place; if anything fails (any exception, KeyboardInterrupt included) no temporary
is left and an existing destination is untouched.  ``StagedFiles.commit`` renames all its files with SIGINT and
SIGTERM held back and removes those already placed if it is interrupted, so the destinations get all of the
files or none.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from qcompile.errors import ModelSaveError
from qcompile.io.messages import one_line

__all__ = ["StagedFiles", "write_text_atomic"]


def _default_file_mode() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def _check_destination(dest: Path, protected: Sequence[str | os.PathLike], *, what: str) -> None:
    parent = dest.parent
    if not parent.is_dir():
        raise ModelSaveError(one_line(f"cannot write {what} {dest}: folder {parent} does not exist"))
    if dest.is_dir():
        raise ModelSaveError(one_line(f"cannot write {what} {dest}: it is a directory"))
    if dest.exists() and not dest.is_file():  # renaming over /dev/null or a FIFO would replace the node itself
        raise ModelSaveError(one_line(f"cannot write {what} {dest}: it exists and is not a regular file"))
    real = os.path.realpath(dest)
    for p in protected:
        if os.path.realpath(p) == real or (dest.exists() and os.path.exists(p) and os.path.samefile(p, dest)):
            raise ModelSaveError(one_line(
                f"refusing to overwrite the input model file {p} with {what} {dest}; choose another output path"))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back for a few renames (main thread only); a held signal goes to its handler on exit.

    The Python-level handlers are swapped for one that only records, rather than masking the signals: a mask
    covers the calling thread only, and the kernel hands a process-directed signal to any thread that does not
    mask it (ORT's pool threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not None:       # None: a handler not installed from Python; leave it
            previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)              # e.g. KeyboardInterrupt, raised here
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), received[0])       # the default action, now that the files are in place


class StagedFiles:
    """Temporary files in the destination folders, moved into place together by commit() or removed by cleanup().

    commit() renames every file with SIGINT/SIGTERM held back, and if anything interrupts it (a rename fails, or a
    held signal arrives as the signals are released) it removes the files it had moved into place, so a Ctrl-C
    leaves either all of them or none."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, Path]] = []

    def open(self, dest: Path):
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        self._pending.append((tmp, dest))
        try:
            os.fchmod(fd, _default_file_mode())
        except OSError:
            pass
        return os.fdopen(fd, "wb")

    def discard(self, dest: Path) -> None:
        """Drop the staged file for ``dest`` (written, then found not to be needed)."""
        for tmp, staged in [p for p in self._pending if p[1] == dest]:
            self._pending.remove((tmp, staged))
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def commit(self) -> None:
        placed: list[Path] = []
        try:
            with _signals_held():
                while self._pending:
                    tmp, dest = self._pending[0]
                    os.replace(tmp, dest)
                    self._pending.pop(0)
                    placed.append(dest)
                for parent in {dest.parent for dest in placed}:  # make the renames durable; best effort
                    _fsync_folder(parent)
        except BaseException:
            for dest in placed:
                with contextlib.suppress(OSError):
                    dest.unlink()
            self.cleanup()
            raise

    def cleanup(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._pending.clear()


def _fsync_folder(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _finish(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def write_text_atomic(path: str | os.PathLike, text: str, *, protected: Sequence[str | os.PathLike] = (),
                      staging: StagedFiles | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, refusing any ``protected`` path (with ``staging``: staged
    there only, as in save_model)."""
    dest = Path(os.path.abspath(os.fspath(path)))
    _check_destination(dest, protected, what="file")
    own_staging = staging is None
    staging = staging if staging is not None else StagedFiles()
    try:
        with staging.open(dest) as f:
            f.write(text.encode("utf-8"))
            _finish(f)
        if own_staging:
            staging.commit()
    except OSError as e:
        staging.cleanup()
        raise ModelSaveError(one_line(f"cannot write {dest}: {e.strerror or e}")) from e
    except BaseException:
        staging.cleanup()
        raise
