"""The one place qcompile creates ONNX Runtime sessions.

``make_session`` turns a model (ModelProto, serialized bytes or a file path) plus a few typed options into an
``ort.InferenceSession``. A ModelProto goes to ORT as serialized bytes; protobuf cannot serialize a message over
2 GB, so such a model is given to ORT without its large weights, which follow as in-memory initializers
(``SessionOptions.add_external_initializers``): nothing is written to disk.

Anything ORT raises while building the session becomes a one-line QCompileError:
``ModelLoadError`` when the file is missing or not a protobuf, ``UnsupportedModelError`` otherwise.
Requested execution providers that this onnxruntime build lacks are a ``ConfigError`` (ORT itself would only
warn and fall back to CPU, which would make a CUDA fusion check silently report CPU kernels).

Custom-op libraries (``custom_op_library``): loading a shared library runs its code in this process, so it is
opt-in only: a session registers one only when the caller names it (``--custom-op-library PATH`` /
``CompileConfig.custom_op_library``), never by default, from a recipe file or from anything in the model.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from qcompile.errors import ConfigError, ModelLoadError, QCompileError, UnsupportedModelError
from qcompile.io import SERIALISABLE_BYTES, model_size_bytes

__all__ = [
    "GraphOptimization",
    "available_providers",
    "has_cuda",
    "make_session",
    "ort_error_line",
]

logger = logging.getLogger(__name__)

LARGE_MODEL_BYTES = SERIALISABLE_BYTES   # above this, serialising is unsafe: weights go in memory
_IN_MEMORY_INITIALIZER_BYTES = 1 << 20

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
    line = _ORT_PREFIX.sub("", first) or first
    return _strip_source_location(line)


_SOURCE_LOCATION = re.compile(r"^\S+\.(?:h|cc|cpp):\d+ ")


def _strip_source_location(line: str) -> str:
    """Drop the ``/onnxruntime_src/x.h:46 void f(const T&, ...) `` prefix some ORT errors carry."""
    match = _SOURCE_LOCATION.match(line)
    if not match or "(" not in line[match.end():]:
        return line
    depth, start = 0, line.index("(", match.end())
    for i in range(start, len(line)):
        depth += {"(": 1, ")": -1}.get(line[i], 0)
        if depth == 0:
            rest = line[i + 1:].removeprefix(" const").strip()
            return rest or line
    return line


def _copy_fields(source, target, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend") and not isinstance(value, (str, bytes)):   # a repeated field
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _weightless_copy(model: onnx.ModelProto, min_bytes: int) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """The model without its main-graph initializers of >= ``min_bytes`` (declared as external data at a
    location that does not exist), and those initializers. Nothing large is copied."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    large = []
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= min_bytes:
            _add_stub_initializer(skeleton.graph, tensor.name, tensor.data_type, tensor.dims)
            large.append(tensor)
        else:
            skeleton.graph.initializer.add().CopyFrom(tensor)
    return skeleton, large


def _add_stub_initializer(graph: onnx.GraphProto, name: str, data_type: int, dims) -> None:
    """An initializer whose data ORT takes from SessionOptions.add_external_initializers."""
    stub = graph.initializer.add(name=name, data_type=data_type, dims=list(dims),
                                 data_location=onnx.TensorProto.EXTERNAL)
    stub.external_data.add(key="location", value="qcompile-in-memory.bin")


def _inputs_as_initializers(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of a (weightless) model whose graph inputs named in ``arrays`` become stub initializers."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [v for v in copy.graph.input if v.name not in arrays]
    del copy.graph.input[:]
    copy.graph.input.extend(kept)
    for name, array in arrays.items():
        _add_stub_initializer(copy.graph, name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
    return copy


@contextlib.contextmanager
def _model_source(model: onnx.ModelProto | bytes | str | Path, options: ort.SessionOptions,
                  initializers: Mapping[str, np.ndarray] | None = None) -> Iterator[bytes | str]:
    """What ORT is given: bytes, or a path. A ModelProto over protobuf's 2 GB limit goes without its large
    weights, which are handed to ORT as in-memory initializers (ORT copies each once; no file is written);
    ``initializers`` name graph inputs of ``model`` that are really weights, given the same way."""
    if initializers:
        if not isinstance(model, onnx.ModelProto):
            raise TypeError("initializers can only be given with a ModelProto")
        names = list(initializers)
        options.add_external_initializers(
            names, [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(initializers[n])) for n in names])
        yield _inputs_as_initializers(model, initializers).SerializeToString()
        return
    if isinstance(model, onnx.ModelProto):
        if model_size_bytes(model) <= LARGE_MODEL_BYTES:
            yield model.SerializeToString()
            return
        skeleton, large = _weightless_copy(model, _IN_MEMORY_INITIALIZER_BYTES)
        values = [ort.OrtValue.ortvalue_from_numpy(onnx.numpy_helper.to_array(t)) for t in large]
        options.add_external_initializers([t.name for t in large], values)
        yield skeleton.SerializeToString()
        return
    if isinstance(model, (bytes, bytearray, memoryview)):
        yield bytes(model)
        return
    if isinstance(model, (str, Path)):
        yield str(Path(model))
        return
    raise TypeError(f"model must be a ModelProto, bytes, str or Path, not {type(model).__name__}")


def _register_custom_ops(options: ort.SessionOptions, library: Path) -> None:
    """Load a custom-op library the caller asked for by name (see the module docstring)."""
    if not library.is_file():
        raise ConfigError(f"custom op library {library} does not exist or is not a file")
    logger.info("registering custom op library %s (asked for)", library)
    try:
        options.register_custom_ops_library(str(library))
    except Exception as exc:  # ORT's pybind errors derive from Exception only
        raise ConfigError(f"cannot load custom op library {library}: {ort_error_line(exc)}") from exc


def make_session(
    model: onnx.ModelProto | bytes | str | Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    optimization: GraphOptimization = GraphOptimization.ALL,
    optimized_model_path: Path | None = None,
    config_entries: Mapping[str, str] | None = None,
    log_severity: int = 3,
    initializers: Mapping[str, np.ndarray] | None = None,
    custom_op_library: str | Path | None = None,
) -> ort.InferenceSession:
    """Build an ``ort.InferenceSession``.

    threads: intra-op threads (inter-op is then 1, sequential execution); None leaves ORT's default.
    optimized_model_path: where ORT writes the graph after optimisation (``optimized_model_filepath``).
    config_entries: extra ``add_session_config_entry`` pairs, e.g. ``{"session.qdqisint8allowed": "1"}``.
    log_severity: ORT's log level for this session (3 = errors only; 2 would print ORT's warnings).
    initializers: arrays for graph inputs of ``model`` that are weights (see qcompile.graph.weights): ORT gets
    them as initializers without the model carrying their bytes.
    custom_op_library: a shared library of ORT custom ops to register (opt-in: it runs the library's code).
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

    # ORT's process-wide logger prints what happens before a session's own logger exists (model load, graph
    # resolution) to fd 2; qcompile reports through its own log and report instead
    ort.set_default_logger_severity(max(int(log_severity), 3))
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
    if custom_op_library is not None:
        _register_custom_ops(so, Path(custom_op_library))

    if not isinstance(model, (onnx.ModelProto, bytes, bytearray, memoryview, str, Path)):
        raise TypeError(f"model must be a ModelProto, bytes, str or Path, not {type(model).__name__}")
    source: bytes | str = b""
    try:
        with _model_source(model, so, initializers) as source:
            return ort.InferenceSession(source, sess_options=so, providers=list(providers))
    except QCompileError:
        raise
    except Exception as exc:  # ORT's pybind errors derive from Exception only
        line = ort_error_line(exc)
        name = type(exc).__name__
        where = f" {source}" if isinstance(source, str) else ""
        if name in ("NoSuchFile", "InvalidProtobuf", "ModelLoaded", "NoModel"):
            raise ModelLoadError(f"onnxruntime cannot load the model{where}: {line}") from exc
        raise UnsupportedModelError(f"onnxruntime cannot create a session for the model{where}: {line}") from exc
