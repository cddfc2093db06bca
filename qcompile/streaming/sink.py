"""Where the output model's tensors go as they are made: inline in the proto, or appended to one data file.

With a data file, a tensor of at least ``EXTERNAL_DATA_MIN_TENSOR_BYTES`` is written at once (aligned like
qcompile.io.save does) and the proto keeps only its reference, so memory never holds the output's weights; the
file's name in the references is ``location`` (what the saved model's data file will be called).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from qcompile.io.limits import EXTERNAL_ALIGN_MIN_BYTES, EXTERNAL_ALIGNMENT, EXTERNAL_DATA_MIN_TENSOR_BYTES


class TensorSink:
    """Adds initializers to ``graph``; their bytes inline, or in ``data_path`` (see the module docstring)."""

    def __init__(self, graph: onnx.GraphProto, data_path: Path | None, location: str | None = None) -> None:
        self.graph = graph
        self.data_path = data_path
        self.location = location or (data_path.name if data_path else "")
        self._file = open(data_path, "wb") if data_path is not None else None
        self.bytes_written = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None

    def add_array(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        return self.add_raw(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape, array.tobytes())

    def add_raw(self, name: str, data_type: int, dims, data: bytes) -> str:
        tensor = self.graph.initializer.add(name=name, data_type=data_type, dims=[int(d) for d in dims])
        if self._file is None or len(data) < EXTERNAL_DATA_MIN_TENSOR_BYTES:
            tensor.raw_data = data
            return name
        offset = self._file.tell()
        if len(data) >= EXTERNAL_ALIGN_MIN_BYTES and offset % EXTERNAL_ALIGNMENT:
            self._file.write(b"\0" * (EXTERNAL_ALIGNMENT - offset % EXTERNAL_ALIGNMENT))
            offset = self._file.tell()
        self._file.write(data)
        self.bytes_written = self._file.tell()
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(len(data)))):
            tensor.external_data.add(key=key, value=value)
        return name
