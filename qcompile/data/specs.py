"""What the model expects on each graph input (InputSpec), and the one-line error and formatting every data check uses.

The inputs to feed are the graph inputs that are not initializers, in graph order; a dim is an int when fixed,
a str when symbolic and named, None when symbolic and unnamed (a negative dim_value counts as unnamed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx.helper import tensor_dtype_to_np_dtype

from qcompile.errors import CalibrationDataError, UnsupportedModelError

Dim = int | str | None
Feed = dict[str, np.ndarray]
# KV caches: Optimum writes past_key_values.N.key / .value -> present.N.key / .value; older exports past.N / present.N
_PAST = re.compile(r"^(past_key_values|past)([._].+)$")


@dataclass(frozen=True)
class InputSpec:
    """What the model expects on one graph input: its name, numpy dtype and shape (ints fixed, str/None symbolic).

    ``shape`` is ``None`` only when the model does not state the rank; then the rank is not checked.
    """

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))

    @classmethod
    def from_value_info(cls, value_info: onnx.ValueInfoProto) -> "InputSpec":
        kind = value_info.type.WhichOneof("value")
        if kind != "tensor_type":
            raise UnsupportedModelError(
                f"input '{value_info.name}' is a {kind or 'untyped value'}, not a tensor; "
                "calibration feeds tensors only")
        tensor_type = value_info.type.tensor_type
        if tensor_type.elem_type == onnx.TensorProto.UNDEFINED:
            raise UnsupportedModelError(f"input '{value_info.name}' has no element type")
        dtype = np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if not tensor_type.HasField("shape"):
            return cls(value_info.name, dtype, None)  # type: ignore[arg-type]
        dims: list[Dim] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param:
                dims.append(dim.dim_param)
            else:
                dims.append(None)  # unnamed dynamic dim (also -1 written by some exporters)
        return cls(value_info.name, dtype, tuple(dims))


def model_input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The InputSpec of every graph input that is not an initializer, in graph order."""
    initializers = {t.name for t in model.graph.initializer}
    return [InputSpec.from_value_info(v) for v in model.graph.input if v.name not in initializers]


def present_name_for(past: str) -> str | None:
    match = _PAST.match(past)
    return f"present{match.group(2)}" if match else None


def past_sequence_axis(spec: InputSpec) -> int | None:
    """The axis of a past-cache input that counts earlier tokens (may be 0 in the prefill), or None.

    Rule: the input is named as a past cache and has rank 4 ([B, heads, P, head_dim]) or 3 ([B*heads, P, d]);
    its sequence axis is the second to last (Optimum, Hugging Face, ORT GenAI all put it there)."""
    if present_name_for(spec.name) is None or spec.shape is None or len(spec.shape) not in (3, 4):
        return None
    return len(spec.shape) - 2


def data_error(message: str) -> CalibrationDataError:
    """A CalibrationDataError whose message is guaranteed to be one line."""
    return CalibrationDataError(" ".join(str(message).split("\n")).replace("\r", " "))


def format_shape(shape: Sequence[Dim] | None) -> str:
    """``[1, ?, batch]``: fixed dims, ``?`` for unnamed symbolic ones; ``[any rank]`` when the rank is unknown."""
    if shape is None:
        return "[any rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def format_names(names: Iterable[str]) -> str:
    """``['a', 'b']``: names sorted and quoted."""
    return "[" + ", ".join(repr(n) for n in sorted(names)) + "]"
