"""Weight-only presets on a real encoder: RTN vs GPTQ vs AWQ (± clip search) on ../shared/eval/minilm.

For each variant: compile with qcompile (w4a16 unless --preset), then on eval.npz (each row alone, padding
removed) the cosine of sentence_embedding vs FP32 (mean, min), the size ratio, the mean and max per-layer relative
output error tr(ΔWᵀHΔW)/tr(WᵀHW) on the calibration inputs (from the report), and the batch-1 latency ratio vs
FP32 (interleaved rounds in one process, median of per-round medians, 1 thread).

    python benchmarks/weight_only_accuracy.py [--eval-dir ../shared/eval] [--variants rtn,gptq,awq] [--out f.md]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qcompile import compile_model
from qcompile.config import config_from_mapping
from qcompile.accuracy.latency import interleaved_latency

logger = logging.getLogger("weight_only_accuracy")

_NO_CLIP = {"clip_search": False}
VARIANTS = {
    "default": {},
    "rtn": {"algorithm": "rtn", **_NO_CLIP},
    "rtn_clip": {"algorithm": "rtn", "clip_search": True},
    "gptq": {"algorithm": "gptq", **_NO_CLIP},
    "gptq_act_order": {"algorithm": "gptq", "act_order": True, **_NO_CLIP},
    "gptq_clip": {"algorithm": "gptq", "clip_search": True},
    "gptq_act_order_clip": {"algorithm": "gptq", "act_order": True, "clip_search": True},
    "awq": {"algorithm": "awq", **_NO_CLIP},
    "awq_clip": {"algorithm": "awq", "clip_search": True},
    "rtn_sym": {"algorithm": "rtn", "symmetric": True, **_NO_CLIP},
    "gptq_sym": {"algorithm": "gptq", "symmetric": True, **_NO_CLIP},
    "rtn_b128": {"algorithm": "rtn", "block_size": 128, **_NO_CLIP},
    "gptq_b128": {"algorithm": "gptq", "block_size": 128, **_NO_CLIP},
    "rtn_nbits_al0": {"algorithm": "rtn", "form": "matmul_nbits", "accuracy_level": 0, **_NO_CLIP},
    "rtn_fp16_scales": {"algorithm": "rtn", "scale_dtype": "float16", **_NO_CLIP},
    "rtn_nf4": {"algorithm": "rtn", "number_format": "nf4", **_NO_CLIP},
}


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _rows(eval_path: Path) -> list[dict[str, np.ndarray]]:
    data = np.load(eval_path)
    rows = []
    for i in range(data["input_ids"].shape[0]):
        length = int(data["attention_mask"][i].sum())
        rows.append({k: data[k][i:i + 1, :length].astype(np.int64) for k in ("input_ids", "attention_mask",
                                                                              "token_type_ids")})
    return rows


def sentence_cosines(ref: ort.InferenceSession, quant: ort.InferenceSession, rows) -> np.ndarray:
    out = []
    for feed in rows:
        a = ref.run(["sentence_embedding"], feed)[0].reshape(-1).astype(np.float64)
        b = quant.run(["sentence_embedding"], feed)[0].reshape(-1).astype(np.float64)
        out.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
    return np.array(out)


def latency_ratio(ref: ort.InferenceSession, quant: ort.InferenceSession, feed, rounds: int = 5,
                  runs: int = 20) -> float:
    return interleaved_latency({"ref": ref, "q": quant}, feed, rounds=rounds, runs=runs)["q"]["ratio"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", type=Path, default=Path(os.environ.get(
        "QCOMPILE_EVAL_DIR", Path(__file__).resolve().parents[2] / "shared" / "eval")))
    parser.add_argument("--variants", default="rtn,gptq,awq")
    parser.add_argument("--preset", default="w4a16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    case = args.eval_dir / "minilm"
    model, calib = case / "model.onnx", case / "calib"
    rows = _rows(case / "eval.npz")
    ref = _session(model, 1)
    lines = ["| variant | cosine mean | cosine min | size ratio | layer rel. output error mean / max | "
             "latency ratio (1 thread) | compile s |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            config = config_from_mapping({"preset": args.preset, "weight_only": VARIANTS[name]})
            start = time.perf_counter()
            result = compile_model(model, calib, config)
            seconds = time.perf_counter() - start
            path = Path(tmp) / f"{name}.onnx"
            result.save(path, overwrite=True)
            quant = _session(path, 1)
            cos = sentence_cosines(ref, quant, rows)
            errors = [n["relative_output_error"] for n in result.report.data["nodes"]
                      if "relative_output_error" in n]
            err_text = f"{np.mean(errors):.5f} / {np.max(errors):.5f}" if errors else "-"
            ratio = latency_ratio(ref, quant, rows[0])
            line = (f"| {name} | {cos.mean():.4f} | {cos.min():.4f} | "
                    f"{result.report.data['summary']['size_ratio']:.3f} | {err_text} | {ratio:.2f} | {seconds:.0f} |")
            logger.info(line)
            lines.append(line)
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
