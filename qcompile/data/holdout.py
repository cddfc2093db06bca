"""Held-out items for honest fidelity: a calibration folder gives up some of its files when no eval data is given.

For a folder of n ≥ MIN_FILES_TO_HOLD_OUT files and a wish for w items (fidelity samples, budget eval items),

    h = min(w, ⌊n · HOLDOUT_FRACTION⌋)   files are held out, at indices ⌊(j + ½) · n / h⌋ for j < h,

evenly spread through the name order (a folder sorted by class gives up files of every class); calibration uses
the other n − h. Smaller folders and in-memory sources are not split: fidelity is then measured on calibration
items, and the report says that it is not held out.
"""

from __future__ import annotations

from qcompile.data.source import CalibrationSource, folder_source

__all__ = ["HOLDOUT_FRACTION", "MIN_FILES_TO_HOLD_OUT", "held_out_indices", "split_holdout"]

HOLDOUT_FRACTION = 0.25
MIN_FILES_TO_HOLD_OUT = 4


def held_out_indices(n: int, wanted: int) -> list[int]:
    """The indices of the files held out of ``n`` (module docstring); empty when nothing is held out."""
    if n < MIN_FILES_TO_HOLD_OUT or wanted <= 0:
        return []
    h = min(wanted, int(n * HOLDOUT_FRACTION))
    return sorted({int((j + 0.5) * n / h) for j in range(h)})


def split_holdout(source: CalibrationSource, wanted: int) -> tuple[CalibrationSource, CalibrationSource | None]:
    """(calibration source, held-out source or None) for a folder source, as the module docstring says."""
    files = source.folder_files
    if files is None:
        return source, None
    held = held_out_indices(len(files.paths), wanted)
    if not held:
        return source, None
    chosen = set(held)
    calib_paths = [p for i, p in enumerate(files.paths) if i not in chosen]
    held_paths = [files.paths[i] for i in held]
    calibration = folder_source(files.folder, files.kind, calib_paths, source.inputs, source.sample_cap,
                                files.image)
    return calibration, folder_source(files.folder, files.kind, held_paths, source.inputs, None, files.image)
