"""The exceptions qcompile raises on purpose.

Every error a user can cause (bad model, bad data, bad configuration) is a QCompileError subclass whose
message is one self-contained line; the CLI prints it as ``error: <message>`` and exits with code 2.
Anything else escaping is a bug in qcompile.
"""

from __future__ import annotations


class QCompileError(Exception):
    """Base class of every error qcompile reports to users."""

    exit_code = 2


class ConfigError(QCompileError):
    """An invalid or impossible configuration (unknown TOML key, bad enum value, conflicting options)."""


class ModelLoadError(QCompileError):
    """The model file is missing, corrupt, too large or hostile."""


class ModelSaveError(QCompileError):
    """The output cannot be written (would overwrite the input, unwritable folder, ...)."""


class CalibrationDataError(QCompileError):
    """Calibration data does not match the model (names, dtypes, ranks) or holds NaN/Inf."""


class CalibrationError(QCompileError):
    """A calibrator cannot produce a range (e.g. it saw no data)."""


class SelectionError(QCompileError):
    """A node selector (--op-types, --exclude, override) matches nothing or is malformed."""


class UnsupportedModelError(QCompileError):
    """The graph uses something qcompile cannot handle and cannot pass through."""


class AccuracyBudgetError(QCompileError):
    """An accuracy budget that cannot be met, even with every quantised node kept float."""


class ReportError(QCompileError):
    """A report file that cannot be read (missing, not JSON, not a compile report)."""


class PassError(QCompileError):
    """A pass failed; the message names the pass and the node."""
