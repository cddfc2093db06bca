"""Memory and time of the streaming weight-only compile against depth, on Llama-shaped models with external data.

    python benchmarks/weight_only_scale.py WORK_DIR [--layers 2,4,8] [--algorithms rtn,gptq] [--big 32] [--out f.md]

For each depth L, models/llama_shaped.py writes a model (TinyLlama widths: d 2048, FFN 5632, 16/4 heads, vocab
32000, random weights) to WORK_DIR, and a fresh child process compiles it with ``--preset w4a16`` defaults but
the algorithm (fidelity off: it would load the FP32 model whole) and saves it. The child reports its compile
wall time and CPU time (user + sys, which the shared machine's load does not inflate) and its peak RSS as VmHWM
(/proc/self/status: this process only; see benchmarks/compare.py) with the VmHWM right after the imports. One
decoder block is B = (2·d² + 2·d·d_kv + 3·d·FFN)·4 bytes (172 MiB here). ``--big L`` adds one
run at depth L (32: 1.58 B parameters, 6.3 GB of float32 on disk) with the first algorithm only.
The table gives peak − import baseline in blocks, and the line fitted through (L, seconds) with the 7B
extrapolation (Llama-2-7B: d 4096, FFN 11008, 32 layers; RTN's time is proportional to the weights, GPTQ's grows
faster, K·N per column sweep plus a K³ factorisation per input, so its figure is a lower bound).
Timings on a shared machine are noisy; the CPU seconds are the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("weight_only_scale")

DIM, FFN, HEADS, KV_HEADS, VOCAB = 2048, 5632, 16, 4, 32000
LLAMA7B_LAYER_WEIGHTS = 4 * 4096 * 4096 + 3 * 4096 * 11008


def block_bytes() -> int:
    kv = DIM // HEADS * KV_HEADS
    return 4 * (2 * DIM * DIM + 2 * DIM * kv + 3 * DIM * FFN)


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _worker(model: Path, calib: Path, out: Path, algorithm: str) -> int:
    """Child process: compile and save, then print one JSON line."""
    from qcompile import compile_model
    from qcompile.config import config_from_mapping

    baseline = _vm_hwm_kb()
    config = config_from_mapping({"preset": "w4a16", "fidelity_samples": 0, "weight_only": {"algorithm": algorithm}})
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = compile_model(model, calib, config)
    result.save(out)
    seconds, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    summary = result.report.data["summary"]
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_kb": _vm_hwm_kb(), "import_kb": baseline,
                      "quantized": summary["quantized_nodes"], "output_bytes": summary["output_bytes"],
                      "input_bytes": summary["input_bytes"], "pipeline": result.report.data.get("pipeline")}))
    return 0


def run_one(work: Path, layers: int, algorithm: str) -> dict:
    from models.llama_shaped import llama_shaped

    case = work / f"llama_L{layers}"
    if not (case / "llama.onnx").exists():
        llama_shaped(case, layers=layers, dim=DIM, ffn=FFN, heads=HEADS, kv_heads=KV_HEADS, vocab=VOCAB)
    out = work / f"out_L{layers}_{algorithm}"
    out.mkdir(exist_ok=True)
    child = subprocess.run([sys.executable, __file__, "--_worker", str(case / "llama.onnx"), str(case / "calib"),
                            str(out / "model.onnx"), algorithm], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if child.returncode:
        raise SystemExit(f"L={layers} {algorithm} failed: {child.stderr.strip().splitlines()[-1:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    result.update(layers=layers, algorithm=algorithm)
    logger.info("%s", result)
    return result


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        return _worker(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--layers", default="2,4,8")
    parser.add_argument("--algorithms", default="rtn,gptq")
    parser.add_argument("--big", type=int, default=0, help="one more run at this depth (first algorithm)")
    parser.add_argument("--keep-models", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    algorithms = args.algorithms.split(",")
    runs = [run_one(args.work, int(layers), algorithm) for layers in args.layers.split(",") for algorithm in algorithms]
    if args.big:
        runs.append(run_one(args.work, args.big, algorithms[0]))
    if not args.keep_models:
        for case in args.work.glob("llama_L*"):
            shutil.rmtree(case, ignore_errors=True)
    block_mb = block_bytes() / 2**20
    lines = [f"Llama-shaped (d {DIM}, FFN {FFN}, heads {HEADS}/{KV_HEADS}, vocab {VOCAB}); one block B = "
             f"{block_mb:.0f} MiB FP32. Peak = VmHWM of the compiling process.", "",
             "| algorithm | layers | model GB | wall s | CPU s | peak RSS MiB | peak − imports MiB | (peak − imports) / B |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        own = (r["peak_kb"] - r["import_kb"]) / 1024
        lines.append(f"| {r['algorithm']} | {r['layers']} | {r['input_bytes'] / 1e9:.2f} | {r['seconds']:.0f} | "
                     f"{r['cpu_seconds']:.0f} | {r['peak_kb'] / 1024:.0f} | {own:.0f} | {own / block_mb:.2f} |")
    lines.append("")
    layer_weights = block_bytes() / 4
    for algorithm in algorithms:
        points = [(r["layers"], r["cpu_seconds"]) for r in runs if r["algorithm"] == algorithm]
        if len({p[0] for p in points}) < 2:
            continue
        slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
        per_weight = slope / layer_weights
        lines.append(f"{algorithm}: CPU s ≈ {intercept:.1f} + {slope:.2f}·L; 7B extrapolation (32 layers of "
                     f"{LLAMA7B_LAYER_WEIGHTS / 1e6:.0f} M weights, same per-weight rate): "
                     f"{intercept + 32 * per_weight * LLAMA7B_LAYER_WEIGHTS:.0f} CPU s"
                     + (" (a lower bound: see the module docstring)" if algorithm != "rtn" else ""))
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
