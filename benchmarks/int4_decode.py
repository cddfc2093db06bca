"""LLM decode latency (batch 1, one token) of INT4 weight-only forms on a generated MatMul stack.

The stack has the matrices of a Llama-style decoder layer (random weights, fixed seed), repeated ``--layers``
times on x [1, 1, H]:

    a = x·Wq + x·Wk + x·Wv      o = a·Wo       x2 = x + o            (H×H each)
    m = silu(x2·Wg) ⊙ (x2·Wu)   x = x2 + m·Wd                         (H×I, H×I, I×H)

Defaults H = 2048, I = 5632 (TinyLlama-1.1B's shapes) and 4 layers (0.82 GB FP32): the 22 layers of a 1.1B
model (4.5 GB FP32) do not fit this shared 2-core machine's time budget; ``--layers 22`` runs it elsewhere.

Methods: FP32; qcompile w4a16 (RTN without clip search, block 32, asymmetric) in the standard form (blocked
DequantizeLinear -> MatMul, which ORT rewrites into MatMulNBits at accuracy_level 4), as MatMulNBits at
accuracy_level 0 and 4, and as NF4 MatMulBnb4; onnxruntime's MatMulNBitsQuantizer with its defaults (block 128, asymmetric, accuracy_level unset)
and with block 32 / accuracy_level 4. Latency: all sessions built first, then per round every method in turn
(order rotated), median of ``--runs`` timed runs; the ratio is the median over rounds of method / FP32 in the
same round. Also: file size ratio and the relative L2 error of the output vs FP32 on one random token.

    python benchmarks/int4_decode.py [--hidden 2048 --intermediate 5632 --layers 4] [--threads 1,0] [--out f.md]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from qcompile import compile_model
from qcompile.config import config_from_mapping
from qcompile.accuracy.latency import interleaved_latency
from qcompile.io import save_model

logger = logging.getLogger("int4_decode")


def decoder_stack(hidden: int, intermediate: int, layers: int, seed: int = 0) -> onnx.ModelProto:
    """The MatMul stack described in the module docstring, weights N(0, 0.5²/K)."""
    rng = np.random.default_rng(seed)
    x = gs.Variable("x", dtype=np.float32, shape=[1, 1, hidden])
    nodes: list[gs.Node] = []
    current = x

    def weight(name: str, k: int, n: int) -> gs.Constant:
        return gs.Constant(name, (rng.standard_normal((k, n), dtype=np.float32) * float(0.5 / np.sqrt(k))))

    def op(kind: str, name: str, inputs: list, **attrs) -> gs.Variable:
        out = gs.Variable(f"{name}_out", dtype=np.float32)
        nodes.append(gs.Node(kind, name=name, inputs=inputs, outputs=[out], attrs=attrs))
        return out

    for i in range(layers):
        p = f"layer{i}"
        q, k, v = (op("MatMul", f"{p}_{n}", [current, weight(f"{p}_W{n}", hidden, hidden)]) for n in "qkv")
        a = op("Add", f"{p}_add_qk", [q, k])
        a = op("Add", f"{p}_add_v", [a, v])
        o = op("MatMul", f"{p}_o", [a, weight(f"{p}_Wo", hidden, hidden)])
        x2 = op("Add", f"{p}_res1", [current, o])
        g = op("MatMul", f"{p}_gate", [x2, weight(f"{p}_Wg", hidden, intermediate)])
        u = op("MatMul", f"{p}_up", [x2, weight(f"{p}_Wu", hidden, intermediate)])
        m = op("Mul", f"{p}_silu", [g, op("Sigmoid", f"{p}_sig", [g])])
        m = op("Mul", f"{p}_glu", [m, u])
        d = op("MatMul", f"{p}_down", [m, weight(f"{p}_Wd", intermediate, hidden)])
        current = op("Add", f"{p}_res2", [x2, d])
    current.name, current.shape = "y", [1, 1, hidden]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[current], opset=21)
    model = gs.export_onnx(graph)
    model.ir_version = 10
    return model


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def ort_quantizer(fp32_path: Path, out: Path, **kwargs) -> Path:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), **kwargs)
    quantizer.process()
    save_model(quantizer.model.model, out)
    return out


def ours(fp32_path: Path, out: Path, calib, table: dict) -> Path:
    config = config_from_mapping({"preset": "w4a16", "fidelity_samples": 0,
                                  "weight_only": {"algorithm": "rtn", "clip_search": False, "block_size": 32,
                                                  **table}})
    result = compile_model(fp32_path, calib, config)
    unfused = result.report.data["summary"]["unfused_nodes"]
    logger.info("%s: %d nodes quantised, %d unfused", out.name, result.report.data["summary"]["quantized_nodes"],
                unfused)
    result.save(out, overwrite=True)
    return out


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(sessions: dict[str, ort.InferenceSession], feed, rounds: int, runs: int, warmup: int):
    """(median ms, median ratio to FP32) per session; the "fp32" session must come first."""
    assert next(iter(sessions)) == "fp32"
    timings = interleaved_latency(sessions, feed, rounds=rounds, runs=runs, warmup=warmup)
    return {name: (entry["median_ms"], entry["ratio"]) for name, entry in timings.items()}


METHODS = {
    "qcompile DQ form (ORT -> MatMulNBits al4)": ("ours", {}),
    "qcompile MatMulNBits accuracy_level 0": ("ours", {"form": "matmul_nbits", "accuracy_level": 0}),
    "qcompile MatMulNBits accuracy_level 4": ("ours", {"form": "matmul_nbits", "accuracy_level": 4}),
    "qcompile NF4 (MatMulBnb4)": ("ours", {"number_format": "nf4"}),
    "ORT MatMulNBitsQuantizer defaults (block 128, al unset)": ("ort", {}),
    "ORT MatMulNBitsQuantizer block 32, al 4": ("ort", {"block_size": 32, "accuracy_level": 4}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", default="1,0")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", help="comma-separated indexes into the method list (default all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("qcompile").setLevel(logging.WARNING)
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    methods = list(METHODS.items())
    if args.methods:
        methods = [methods[int(i)] for i in args.methods.split(",")]
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((1, 1, args.hidden), dtype=np.float32)}
    calib = [{"x": rng.standard_normal((1, 1, args.hidden), dtype=np.float32)} for _ in range(2)]
    with tempfile.TemporaryDirectory(prefix="int4-decode-") as tmp:
        work = Path(tmp)
        fp32 = work / "fp32.onnx"
        save_model(decoder_stack(args.hidden, args.intermediate, args.layers), fp32)
        paths = {"fp32": fp32}
        for index, (name, (kind, table)) in enumerate(methods):
            start = time.perf_counter()
            out = work / f"m{index}.onnx"
            paths[name] = ours(fp32, out, calib, table) if kind == "ours" else ort_quantizer(fp32, out, **table)
            logger.info("%s built in %.0f s", name, time.perf_counter() - start)
        fp32_bytes = file_bytes(fp32)
        reference = session(fp32, 0).run(None, feed)[0]
        quality = {}
        for name, path in paths.items():
            got = session(path, 0).run(None, feed)[0]
            quality[name] = (file_bytes(path) / fp32_bytes,
                             float(np.linalg.norm(got - reference) / np.linalg.norm(reference)))
        results = {}
        for threads in [int(t) for t in args.threads.split(",")]:
            sessions = {name: session(path, threads) for name, path in paths.items()}
            results[threads] = measure(sessions, feed, args.rounds, args.runs, args.warmup)
            del sessions
    thread_list = list(results)
    head = "| method | size ratio | rel. L2 error vs FP32 | " + " | ".join(
        f"ms ({t or 'all'} thr) | speed-up vs FP32 ({t or 'all'} thr)" for t in thread_list) + " |"
    lines = [f"Stack: H={args.hidden}, I={args.intermediate}, {args.layers} layers "
             f"({args.layers * (4 * args.hidden ** 2 + 3 * args.hidden * args.intermediate) / 1e6:.0f} M weights), "
             f"batch 1, 1 token; {args.rounds} rounds x {args.runs} runs.", "", head,
             "|" + "---|" * (3 + 2 * len(thread_list))]
    for name in paths:
        size, error = quality[name]
        cells = " | ".join(f"{results[t][name][0]:.2f} | {1 / results[t][name][1]:.2f}x" for t in thread_list)
        lines.append(f"| {name} | {size:.3f} | {error:.4f} | {cells} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
