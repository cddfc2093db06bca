"""Which nodes static Q/DQ can lower, and along which axis their weights get scales.

A selected node y = f(x, W[, b]) is lowered to static INT8 iff f is a compute op, W is a finite, non-empty
float32 constant, x is a float32 activation, and (Gemm) transA = 0; otherwise the reason is returned and the
node stays float with it. A MatMul of two float activations (attention QKᵀ, P·V) is its own case. The weight's
scale axis is its output-channel axis: Conv 0, Gemm 0 with transB else 1, a 2-D MatMul weight 1.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.graph.ops import COMPUTE_OPS, WEIGHT_INPUT

_FLOAT_TYPES = (np.float32,)


def is_float_tensor(tensor: gs.Tensor) -> bool:
    """float32, or untyped (treated as float); ONNX types numpy lacks are not."""
    dtype = getattr(tensor, "dtype", None)
    if dtype is None:
        return True
    try:
        return np.dtype(dtype) in [np.dtype(t) for t in _FLOAT_TYPES]
    except TypeError:  # ONNX types numpy lacks (bfloat16, float8) stay float, unquantised
        return False


def weight_axis(node: gs.Node, weight: np.ndarray, profile) -> int | None:
    """The output-channel axis of a constant weight, or None where ORT takes only per-tensor scales."""
    if node.op not in profile.per_channel_ops:
        return None
    if node.op == "Conv":
        return 0
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "MatMul" and weight.ndim == 2:
        return 1
    return None


def _dtype_name(dtype: object) -> str:
    try:
        return str(np.dtype(dtype))
    except TypeError:
        return str(dtype)


def _is_other_float(dtype: object) -> bool:
    """A floating type other than float32 (float16, float64, or an ONNX float numpy lacks such as bfloat16)."""
    if dtype is None:
        return False
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:
        return "float" in str(dtype).lower()


def is_activation_matmul(node: gs.Node) -> bool:
    """A MatMul of two float activations (no constant weight)."""
    return node.op == "MatMul" and len(node.inputs) == 2 and all(
        isinstance(t, gs.Variable) and is_float_tensor(t) for t in node.inputs)


def unsupported_reason(node: gs.Node) -> str:
    """Why the node has no static INT8 lowering, or "" when it has one."""
    if node.op not in COMPUTE_OPS:
        return f"op type {node.op} has no static INT8 lowering yet"
    if len(node.inputs) <= WEIGHT_INPUT:
        return "missing weight input"
    weight = node.inputs[WEIGHT_INPUT]
    if not isinstance(weight, gs.Constant):
        if node.op == "MatMul":
            return "activation x activation MatMul (no constant weight)"
        return "weight is not a constant"
    if not isinstance(node.inputs[0], gs.Variable) or not is_float_tensor(node.inputs[0]):
        dtype = getattr(node.inputs[0], "dtype", None)
        if _is_other_float(dtype):   # float16 / float64 / bfloat16 graphs: say so, not "not a float"
            return (f"activation input is {_dtype_name(dtype)}; static INT8 quantises float32 compute (convert the "
                    "model to float32 first)")
        return "activation input is not a float tensor"
    if weight.values.dtype != np.float32:
        return f"weight dtype {weight.values.dtype} is not float32"
    if weight.values.size == 0:
        return "zero-size weight"
    if not np.isfinite(weight.values).all():
        return "weight holds NaN or Inf values"
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return "Gemm with transA=1"
    return ""
