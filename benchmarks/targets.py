"""Per-target results on ORT's CPU EP: fidelity, size and latency of minilm and effnet_lite0 compiled for each
--target (cpu, cuda, tensorrt). The CUDA/TensorRT models are built for GPUs; run here on the CPU EP they show that
they load and compute the right thing, not their GPU speed.

    python benchmarks/targets.py [--eval-dir ../shared/eval] [--rounds 5] [--runs 20]

Latency: median per round, rounds interleaved (FP32, then each target) in one process, 1 thread, batch 1;
reported as the median over rounds of target/FP32.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qcompile import compile_model
from qcompile.config import Target, config_from_mapping
from qcompile.accuracy.latency import interleaved_latency
from qcompile.io import model_size_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "real"))
from test_targets_real import effnet_top1, minilm_cosines  # noqa: E402  (the acceptance test's metrics)


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _feed(case: str, eval_path: Path) -> dict[str, np.ndarray]:
    data = np.load(eval_path)
    if case == "minilm":
        length = int(data["attention_mask"][0].sum())
        return {k: data[k][:1, :length].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    return {"input": data["input"][:1]}


def _latency(sessions: dict[str, ort.InferenceSession], feed, rounds: int, runs: int) -> dict[str, float]:
    """Median over rounds of latency / FP32 latency (the "fp32" session comes first)."""
    timings = interleaved_latency(sessions, feed, rounds=rounds, runs=runs, warmup=1)
    return {name: entry["ratio"] for name, entry in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "eval")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print("| case | target | emitted | fidelity vs FP32 (held-out rows) | size ratio | latency ratio, CPU EP 1 thread |")
    print("|---|---|---|---|---|---|")
    for case in ("minilm", "effnet_lite0"):
        folder = args.eval_dir / case
        reference = _session(folder / "model.onnx")
        sessions, rows = {"fp32": reference}, {}
        for target in Target:
            config = config_from_mapping({"target": target.value, "fidelity_samples": 0,
                                          "calibration": {"num_samples": 32}, "analysis": {"layers": "none"}})
            result = compile_model(folder / "model.onnx", folder / "calib", config)
            session = sessions[target.value] = _session(result.model)
            if case == "minilm":
                cos = minilm_cosines(reference, session, folder / "eval.npz")
                fid = f"cosine mean {cos.mean():.4f} (min {cos.min():.4f})"
            else:
                fid = f"top-1 agreement {effnet_top1(reference, session, folder / 'eval.npz'):.3f}"
            ops = {n.op_type for n in result.model.graph.node}
            emitted = ", ".join(sorted(ops & {"QuantizeLinear", "MatMulNBits", "Cast"})) or "-"
            rows[target.value] = (emitted, fid, model_size_bytes(result.model) / (folder / "model.onnx").stat().st_size)
        latency = _latency(sessions, _feed(case, folder / "eval.npz"), args.rounds, args.runs)
        for target, (emitted, fid, size) in rows.items():
            print(f"| {case} | {target} | {emitted} | {fid} | {size:.3f} | {latency[target]:.2f} |")


if __name__ == "__main__":
    main()
