"""The local NVIDIA GPU as far as FP8 cares: its compute capability, read from ``nvidia-smi`` when there is one.

FP8 (E4M3/E5M2) tensor-core math exists from compute capability 8.9 (Ada Lovelace) and 9.0 (Hopper) on; on
older GPUs TensorRT runs FP8 Q/DQ layers in higher precision. Compiling for a GPU elsewhere is normal, so no GPU
here (None) is not an error: the report says what the target GPU needs.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

logger = logging.getLogger(__name__)

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)
_QUERY = ("nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader")


def parse_compute_capability(text: str) -> tuple[int, int] | None:
    """The lowest (major, minor) among nvidia-smi's lines ("9.0"), None when none parses."""
    found = []
    for line in text.splitlines():
        major, _, minor = line.strip().partition(".")
        if major.isdigit() and minor.isdigit():
            found.append((int(major), int(minor)))
    return min(found) if found else None


def detect_compute_capability(timeout_s: float = 5.0) -> tuple[int, int] | None:
    """The local GPU's compute capability (the lowest, with several), or None without nvidia-smi or a GPU."""
    if shutil.which(_QUERY[0]) is None:
        return None
    try:
        done = subprocess.run(_QUERY, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("nvidia-smi failed: %s", exc)
        return None
    return parse_compute_capability(done.stdout) if done.returncode == 0 else None
