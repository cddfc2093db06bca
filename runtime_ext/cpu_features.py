"""What the host CPU can do for integer kernels (a ``CpuFeatures``, typed in qcompile/config/target.py), read from
``/proc/cpuinfo``.

The CPU target profile needs a handful of facts to choose the quantized format:

* ``avx2`` without ``vnni``: u8s8 products go through VPMADDUBSW, whose int16 pair-sum can saturate, so the
  profile asks for ``reduce_range`` (7-bit weights) or u8u8;
* ``vnni`` (AVX512-VNNI or AVX-VNNI): VPDPBUSD accumulates u8*s8 straight into int32, no saturation;
* ``arm_dot`` (``asimddp`` / ``dotprod``): SDOT/UDOT, and ORT allows int8 activations on ARM.

Parsing is a pure function of the text so that it is testable on captured cpuinfo samples. Flags are the
intersection over all processors listed (a hybrid CPU only has what every core has). Anything unknown (no
``/proc/cpuinfo``, unreadable, other OS) gives all flags ``False``: the conservative answer.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

from qcompile.config import CpuFeatures

__all__ = ["CpuFeatures", "detect_cpu_features", "normalize_machine"]

logger = logging.getLogger(__name__)

_CPUINFO = Path("/proc/cpuinfo")

_MACHINE_ALIASES = {
    "amd64": "x86_64",
    "x64": "x86_64",
    "x86-64": "x86_64",
    "em64t": "x86_64",
    "i386": "x86",
    "i486": "x86",
    "i586": "x86",
    "i686": "x86",
    "arm64": "aarch64",
    "armv8": "aarch64",
    "armv8l": "aarch64",
}

_X86_VNNI = frozenset({"avx512_vnni", "avx512vnni", "avx_vnni", "avxvnni"})
_ARM_DOT = frozenset({"asimddp", "dotprod"})


def normalize_machine(machine: str) -> str:
    """``platform.machine()`` spellings to one name: AMD64 -> x86_64, arm64 -> aarch64, i686 -> x86."""
    m = machine.strip().lower()
    return _MACHINE_ALIASES.get(m, m)


def _flag_sets(cpuinfo_text: str) -> list[frozenset[str]]:
    """One set per ``flags`` (x86) or ``Features`` (ARM) line."""
    sets = []
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            sets.append(frozenset(value.lower().split()))
    return sets


def _arch_from_text(cpuinfo_text: str, flags: frozenset[str]) -> str | None:
    lowered = cpuinfo_text.lower()
    if "sse2" in flags or "vendor_id" in lowered:
        return "x86_64" if ("lm" in flags or not flags) else "x86"
    if "asimd" in flags or "cpu architecture: 8" in " ".join(lowered.split()):
        return "aarch64"
    return None


def detect_cpu_features(cpuinfo_text: str | None = None, machine: str | None = None) -> CpuFeatures:
    """Parse ``cpuinfo_text`` (default: read ``/proc/cpuinfo``) into :class:`CpuFeatures`.

    ``machine`` overrides the architecture; otherwise it is inferred from the text, then from
    ``platform.machine()``. Unknown or missing information yields ``False`` flags, never an error.
    """
    if cpuinfo_text is None:
        try:
            cpuinfo_text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            logger.debug("no readable %s; reporting no SIMD features", _CPUINFO)
            cpuinfo_text = ""
    sets = _flag_sets(cpuinfo_text)
    flags = frozenset.intersection(*sets) if sets else frozenset()

    if machine is not None:
        arch = normalize_machine(machine)
    else:
        arch = _arch_from_text(cpuinfo_text, flags) or normalize_machine(platform.machine() or "unknown")

    if arch in ("x86_64", "x86"):
        return CpuFeatures(
            arch=arch,
            avx2="avx2" in flags,
            avx512="avx512f" in flags,
            vnni=bool(flags & _X86_VNNI),
        )
    if arch == "aarch64":
        return CpuFeatures(arch=arch, arm_dot=bool(flags & _ARM_DOT))
    return CpuFeatures(arch=arch)
