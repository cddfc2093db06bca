"""Which MX / block-float DequantizeLinear forms the installed onnx + onnxruntime can check and run (CPU EP).

    python benchmarks/mx_support.py

MXFP8 / MXFP4 (OCP Microscaling): blocks of 32 elements along K share one power-of-two scale stored as E8M0;
elements are FP8 E4M3 (MXFP8) or FP4 E2M1 (MXFP4). In ONNX that is a blocked DequantizeLinear (``axis``,
``block_size``) whose input is FLOAT8E4M3FN or FLOAT4E2M1 (opset 23) and whose scale would be FLOAT8E8M0.
Each probe builds a one-node model, runs onnx.checker (full check) and then ONNX Runtime's CPU EP, and prints
"runs", or the first line of the error. Run it after upgrading either package: it is the evidence behind the
MX plan in the report of issue 19.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

BLOCK = 32


def probe(opset: int, values: np.ndarray, scale: np.ndarray, blocked: bool) -> str:
    attrs = {"axis": 1, "block_size": BLOCK} if blocked else {}
    if scale.dtype == ml_dtypes.float8_e8m0fnu:
        attrs["output_dtype"] = TensorProto.FLOAT      # y would otherwise take the scale's type
    node = helper.make_node("DequantizeLinear", ["w", "s"], ["y"], **attrs)
    graph = helper.make_graph([node], "probe", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                 list(values.shape))],
                              [numpy_helper.from_array(values, "w"), numpy_helper.from_array(scale, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=11)
    try:
        onnx.checker.check_model(model, full_check=True)
        out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    except Exception as exc:      # the point is to report what fails, and how
        return str(exc).strip().splitlines()[0][:150]
    expected = values.astype(np.float32) * np.repeat(scale.astype(np.float32), BLOCK, axis=1)[:, :values.shape[1]] \
        if blocked else values.astype(np.float32) * scale.astype(np.float32)
    return "runs" if np.allclose(out, expected) else "runs, wrong values"


def main() -> None:
    rows = np.linspace(-6, 6, 2 * 64, dtype=np.float32).reshape(2, 64)
    fp8 = rows.astype(ml_dtypes.float8_e4m3fn)
    fp4 = rows.astype(ml_dtypes.float4_e2m1fn)
    pow2 = np.array([[0.5, 2.0], [1.0, 4.0]], np.float32)
    e8m0 = pow2.astype(ml_dtypes.float8_e8m0fnu)
    print(f"onnx {onnx.__version__} (opset {onnx.defs.onnx_opset_version()}), onnxruntime {ort.__version__}")
    print("| form | opset | result |")
    print("|---|---|---|")
    cases = [
        ("FP8 E4M3FN elements, per-tensor float32 scale", 19, fp8, np.array(0.5, np.float32), False),
        ("FP8 E4M3FN elements, blocks of 32, float32 power-of-two scales (MXFP8 values)", 21, fp8, pow2, True),
        ("FP4 E2M1 elements, per-tensor float32 scale", 23, fp4, np.array(0.5, np.float32), False),
        ("FP4 E2M1 elements, blocks of 32, float32 scales (MXFP4 values)", 23, fp4, pow2, True),
        ("FP8 E4M3FN elements, blocks of 32, E8M0 scales (MXFP8)", 24, fp8, e8m0, True),
        ("FP4 E2M1 elements, blocks of 32, E8M0 scales (MXFP4)", 24, fp4, e8m0, True),
    ]
    for name, opset, values, scale, blocked in cases:
        print(f"| {name} | {opset} | {probe(opset, values, scale, blocked)} |")


if __name__ == "__main__":
    main()
