"""Loading and saving ONNX models: size limits, external data, safe paths, atomic writes.

This package is the only place in qcompile that touches ``onnx.load*`` / ``onnx.save*`` / external data.
``limits`` holds every size limit (protobuf's 2 GiB message limit among them), ``tensors`` the walk over every
TensorProto and the size accounting, ``load`` and ``external`` loading with its safety rules, ``staging`` and
``save`` atomic writing, ``validate`` the graph-level checks of an input model.
"""

from qcompile.io.limits import (
    DEFAULT_MAX_BYTES,
    EXTERNAL_DATA_MIN_TENSOR_BYTES,
    EXTERNAL_DATA_THRESHOLD,
    PROTOBUF_MAX_BYTES,
    SERIALISABLE_BYTES,
)
from qcompile.io.load import LoadedModel, load_model
from qcompile.io.save import save_model
from qcompile.io.staging import StagedFiles, write_text_atomic
from qcompile.io.tensors import model_size_bytes

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EXTERNAL_DATA_MIN_TENSOR_BYTES",
    "EXTERNAL_DATA_THRESHOLD",
    "PROTOBUF_MAX_BYTES",
    "SERIALISABLE_BYTES",
    "LoadedModel",
    "StagedFiles",
    "load_model",
    "model_size_bytes",
    "save_model",
    "write_text_atomic",
]
