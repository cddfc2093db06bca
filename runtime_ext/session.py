"""The one place qcompile creates ONNX Runtime sessions.

``make_session`` turns a model (ModelProto, serialized bytes or a file path) plus a few typed options into an
``ort.InferenceSession``. A ModelProto goes to ORT as serialized bytes; protobuf cannot serialize a message over
2 GB, so such a model must be given as a path (qcompile.io writes it with external data) and is refused here
with :class:`~qcompile.errors.UnsupportedModelError` (only io.py may save models).

Anything ORT raises while building the session becomes a one-line QCompileError:
``ModelLoadError`` when the file is missing or not a protobuf, ``UnsupportedModelError`` otherwise.
Requested execution providers that this onnxruntime build lacks are a ``ConfigError`` (ORT itself would only
warn and fall back to CPU, which would make a CUDA fusion check silently report CPU kernels).
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import onnxruntime as ort

from qcompile.errors import ConfigError, ModelLoadError, UnsupportedModelError

__all__ = [
    "MAX_PROTO_BYTES",
    "GraphOptimization",
    "available_providers",
    "has_cuda",
    "make_session",
    "ort_error_line",
]

logger = logging.getLogger(__name__)

MAX_PROTO_BYTES = 2**31 - 1  # protobuf's hard limit for one serialized message

_ORT_PREFIX = re.compile(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


class GraphOptimization(enum.Enum):
    """ORT graph optimisation level (``ort.GraphOptimizationLevel``)."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"

    def to_ort(self) -> ort.GraphOptimizationLevel:
        return {
            GraphOptimization.DISABLED: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            GraphOptimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            GraphOptimization.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            GraphOptimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self]


def available_providers() -> list[str]:
    """Execution providers compiled into the installed onnxruntime."""
    return list(ort.get_available_providers())


def has_cuda() -> bool:
    """True when the installed onnxruntime has the CUDA execution provider (says nothing about a GPU)."""
    return "CUDAExecutionProvider" in ort.get_available_providers()


def ort_error_line(exc: BaseException) -> str:
    """First non-empty line of an ORT error, without the ``[ONNXRuntimeError] : 1 : FAIL :`` prefix."""
    text = str(exc).strip()
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or type(exc).__name__
    return _ORT_PREFIX.sub("", first) or first


def _model_source(model: onnx.ModelProto | bytes | str | Path) -> bytes | str:
    if isinstance(model, onnx.ModelProto):
        size = model.ByteSize()
        if size > MAX_PROTO_BYTES:
            raise UnsupportedModelError(
                f"model over 2 GB ({size / 2**30:.1f} GiB) must be given as a path (saved with external data)"
            )
        return model.SerializeToString()
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, (str, Path)):
        return str(Path(model))
    raise TypeError(f"model must be a ModelProto, bytes, str or Path, not {type(model).__name__}")


def make_session(
    model: onnx.ModelProto | bytes | str | Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    optimization: GraphOptimization = GraphOptimization.ALL,
    optimized_model_path: Path | None = None,
    config_entries: Mapping[str, str] | None = None,
    log_severity: int = 3,
) -> ort.InferenceSession:
    """Build an ``ort.InferenceSession``.

    threads: intra-op threads (inter-op is then 1, sequential execution); None leaves ORT's default.
    optimized_model_path: where ORT writes the graph after optimisation (``optimized_model_filepath``).
    config_entries: extra ``add_session_config_entry`` pairs, e.g. ``{"session.qdqisint8allowed": "1"}``.
    log_severity: ORT's log level for this session (3 = errors only; 2 would print ORT's warnings).
    """
    if isinstance(providers, str):
        raise ConfigError(f"providers must be a sequence of provider names, not the string {providers!r}")
    if not providers:
        raise ConfigError("at least one execution provider is required")
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise ConfigError(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
            f"(available: {', '.join(available)})"
        )
    if not isinstance(optimization, GraphOptimization):
        raise ConfigError(f"optimization must be a GraphOptimization, not {optimization!r}")

    so = ort.SessionOptions()
    so.graph_optimization_level = optimization.to_ort()
    so.log_severity_level = int(log_severity)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be a positive integer, got {threads!r}")
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    for key, value in (config_entries or {}).items():
        so.add_session_config_entry(str(key), str(value))

    source = _model_source(model)
    try:
        return ort.InferenceSession(source, sess_options=so, providers=list(providers))
    except Exception as exc:  # ORT's pybind errors derive from Exception only
        line = ort_error_line(exc)
        name = type(exc).__name__
        where = f" {source}" if isinstance(source, str) else ""
        if name in ("NoSuchFile", "InvalidProtobuf", "ModelLoaded", "NoModel"):
            raise ModelLoadError(f"onnxruntime cannot load the model{where}: {line}") from exc
        raise UnsupportedModelError(f"onnxruntime cannot create a session for the model{where}: {line}") from exc
