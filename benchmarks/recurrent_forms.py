"""LSTM weights at int8: DequantizeLinear form vs com.microsoft DynamicQuantizeLSTM vs float, on ORT's CPU EP.

    python benchmarks/recurrent_forms.py                       # the default grid of (hidden, input, steps)
    python benchmarks/recurrent_forms.py --hidden 512 --input 512 --steps 40 --bidirectional

For each shape: one LSTM with random weights (uniform ±1/sqrt(H), PyTorch's init), inputs N(0,1), batch 1. The
two quantised forms are built by passes/quantize/quantize_recurrent.py's own rewrites; latency is the median of
``--repeats`` runs at 1 ORT thread (noisy on a shared machine: compare within one run), error is the relative
L2 error of Y against the float LSTM over ``--samples`` inputs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qcompile.config import Target
from qcompile.runtime_ext.target import resolve_profile
from qcompile.graph.edits import Namer
from qcompile.passes.quantize.quantize_recurrent import (RECURRENT_WEIGHT_INPUTS, insert_weight_dequantize,
                                                         rewrite_as_dynamic_lstm)


def lstm_model(hidden: int, inputs: int, directions: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(hidden)
    w = rng.uniform(-bound, bound, (directions, 4 * hidden, inputs)).astype(np.float32)
    r = rng.uniform(-bound, bound, (directions, 4 * hidden, hidden)).astype(np.float32)
    b = rng.uniform(-bound, bound, (directions, 8 * hidden)).astype(np.float32)
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], name="lstm", hidden_size=hidden,
                            direction="bidirectional" if directions == 2 else "forward")
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 1, inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])


def quantised(model: onnx.ModelProto, dynamic: bool) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    namer = Namer(graph)
    node = graph.nodes[0]
    if dynamic:
        # limited code pairs where this host's u8s8 GEMM saturates, as the compiler emits them
        rewrite_as_dynamic_lstm(node, namer, saturating_pair_sums=resolve_profile(Target.CPU).saturating_pair_sums)
    else:
        for index in RECURRENT_WEIGHT_INPUTS:
            node.inputs[index] = insert_weight_dequantize(graph, namer, node.inputs[index])
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    return out


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure(hidden: int, inputs: int, steps: int, directions: int, samples: int, repeats: int) -> list[tuple]:
    model = lstm_model(hidden, inputs, directions)
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((steps, 1, inputs)).astype(np.float32)} for _ in range(samples)]
    reference = session(model)
    expected = [reference.run(None, f)[0] for f in feeds]
    rows = []
    for label, candidate in (("float", model), ("dequantize_linear", quantised(model, False)),
                             ("dynamic_quantize", quantised(model, True))):
        sess = session(candidate)
        got = [sess.run(None, f)[0] for f in feeds]
        error = max(float(np.linalg.norm(g - e) / np.linalg.norm(e)) for g, e in zip(got, expected))
        for _ in range(3):
            sess.run(None, feeds[0])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            sess.run(None, feeds[0])
            times.append(time.perf_counter() - start)
        rows.append((hidden, inputs, steps, directions, label, statistics.median(times) * 1e3, error,
                     len(candidate.SerializeToString())))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, action="append")
    parser.add_argument("--input", type=int)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    hiddens = args.hidden or [8, 32, 64, 128, 256, 512]
    print(f"{'H':>5} {'I':>5} {'T':>4} {'D':>2} {'form':<18} {'ms (median)':>11} {'rel. L2 err':>11} {'bytes':>10}")
    for hidden in hiddens:
        for row in measure(hidden, args.input or hidden, args.steps, 2 if args.bidirectional else 1,
                           args.samples, args.repeats):
            print(f"{row[0]:>5} {row[1]:>5} {row[2]:>4} {row[3]:>2} {row[4]:<18} {row[5]:>11.3f} {row[6]:>11.5f} {row[7]:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
