"""Ablation of the transformer INT8 passes on ../shared/eval/minilm (static W8A8): what each one buys.

For each variant (a TOML-style config mapping, shown in the table): compile with qcompile on the case's calib/,
then on eval.npz (each row alone, padding removed) the cosine of sentence_embedding vs FP32 (mean, min), the
file size ratio, and the batch-1 latency ratio vs FP32 (ORT CPU EP, ORT_ENABLE_ALL, --threads intra-op
threads; all sessions built first, then --rounds rounds in which every variant, in an order rotated each round,
gets --warmup untimed and --runs timed runs; ratio = median over rounds of variant median / FP32 median of the
same round — benchmarks/compare.py's method).

    python benchmarks/ablation_minilm.py [--eval-dir ../shared/eval] [--case minilm] [--variants a,b]
                                         [--runs 30] [--rounds 5] [--threads 1] [--latency-row first|longest]
                                         [--latency-tokens N]
                                         [--out benchmarks/ablation_minilm.md]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from qcompile import compile_model
from qcompile.config import config_from_mapping

logger = logging.getLogger("ablation_minilm")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_EVAL_DIR = Path(os.environ.get("QCOMPILE_EVAL_DIR", REPO.parent / "shared" / "eval"))

_PLAIN = {"smoothquant": {"scope": "off"}}
_PER_TENSOR = {"weight": {"granularity": "tensor"}}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain_float_emb": ("plain (before issue 5: embeddings float)", {**_PLAIN, "embedding": {"enabled": False}}),
    "plain": ("plain + int8 embeddings", _PLAIN),
    "sq_0.5": ("+ SmoothQuant α=0.5", {"smoothquant": {"scope": "transformer", "alpha": 0.5}}),
    "sq_0.8": ("+ SmoothQuant α=0.8", {"smoothquant": {"scope": "transformer", "alpha": 0.8}}),
    "sq_auto": ("+ SmoothQuant α=auto (default)", {}),
    "sq_auto_ocs_w": ("+ auto α + outlier split (weights)", {"outlier_split": {"weights": True}}),
    "sq_auto_ocs_a": ("+ auto α + outlier split (activations)", {"outlier_split": {"activations": True}}),
    "sq_auto_attn": ("+ auto α + attention MatMuls (QKᵀ, P·V) at int8", {"quantize_activation_matmuls": True}),
    "plain_ocs_a": ("plain + outlier split (activations)", {**_PLAIN, "outlier_split": {"activations": True}}),
    "pt_plain": ("per-tensor weights, plain", {**_PER_TENSOR, **_PLAIN}),
    "pt_ocs_w": ("per-tensor weights + outlier split (weights)",
                 {**_PER_TENSOR, **_PLAIN, "outlier_split": {"weights": True}}),
    "pt_sq_auto": ("per-tensor weights + auto α", _PER_TENSOR),
    "pt_sq_auto_ocs_w": ("per-tensor weights + auto α + outlier split (weights)",
                         {**_PER_TENSOR, "outlier_split": {"weights": True}}),
}


def _load_compare():
    spec = importlib.util.spec_from_file_location("benchmarks_compare", REPO / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _recipe(mapping: dict[str, Any]) -> str:
    def flat(prefix: str, value: Any) -> list[str]:
        if isinstance(value, dict):
            return [item for k, v in value.items() for item in flat(f"{prefix}.{k}" if prefix else k, v)]
        return [f"{prefix}={value}"]
    return ", ".join(flat("", mapping)) or "defaults"


def _pass_stats(report: dict, name: str) -> dict[str, int]:
    return next((dict(p["stats"]) for p in report["passes"] if p["name"] == name), {})


def run(args: argparse.Namespace) -> str:
    compare = _load_compare()
    folder = args.eval_dir / args.case
    case = compare.make_case(args.case, folder / "model.onnx", folder / "calib", folder / "eval.npz")
    data = compare.EvalData(case, compare._model_input_names(case.model), compare._input_ranks(case.model))
    fp32_bytes = compare.model_file_bytes(case.model)
    reference = compare.model_outputs(compare._session(case.model, 0), data)
    rows: dict[str, dict[str, Any]] = {}
    paths = {"fp32": case.model}
    with tempfile.TemporaryDirectory(prefix="qcompile-ablation-") as tmp:
        for key in args.variant_list:
            label, mapping = VARIANTS[key]
            started = time.perf_counter()
            result = compile_model(case.model, case.calib, config_from_mapping(mapping))
            seconds = time.perf_counter() - started
            path = Path(tmp) / f"{key}.onnx"
            result.save(path, overwrite=True)
            paths[key] = path
            report = result.report.data
            metrics = compare.fidelity(case, data, reference,
                                       compare.model_outputs(compare._session(path, 0), data))
            smooth = _pass_stats(report, "SmoothQuantPass")
            split = _pass_stats(report, "SplitOutlierChannelsPass")
            rows[key] = {"label": label, "recipe": _recipe(mapping), "metrics": metrics,
                         "size": compare.model_file_bytes(path) / fp32_bytes, "seconds": seconds,
                         "unfused": report["summary"]["unfused_nodes"],
                         "smoothed": smooth.get("smoothed_groups", 0),
                         "split": split.get("split_weight_channels", 0) + split.get("split_activation_channels", 0)}
            logger.info("%s: %s, size %.3f, %.0f s", key, metrics, rows[key]["size"], seconds)
        feed = _latency_feed(data, args.latency_row, args.latency_tokens)
        sessions = {(m, t): compare._session(p, t) for m, p in paths.items() for t in args.thread_list}
        _, ratios, errors = compare.measure_latency(sessions, feed, list(paths), args.thread_list,
                                                    args.runs, args.warmup, args.rounds)
        sessions.clear()
    lines = [f"# Ablation on {args.case} (static W8A8)", "",
             f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: "
             f"{compare.machine_info()['cpu']}; onnxruntime {compare.machine_info()['onnxruntime']}",
             f"- command: `python benchmarks/ablation_minilm.py {' '.join(args.argv)}`",
             f"- fidelity: cosine of sentence_embedding vs FP32 over {data.n} eval rows, each alone; latency: batch "
             f"1, input {', '.join(f'{k} {list(v.shape)}' for k, v in feed.items())} ({args.latency_row} eval row"
             f"{', tiled' if args.latency_tokens else ''}), "
             f"{args.rounds} interleaved rounds x {args.runs} runs, ratio vs FP32 of the same round (< 1 is faster)",
             ""]
    header = ["variant", "cosine mean", "cosine min", "size ratio",
              *[f"latency ratio ({t} thr)" for t in args.thread_list], "smoothed groups", "split channels",
              "unfused", "compile s", "config"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in rows.items():
        cells = [row["label"], f"{row['metrics'].get('cosine mean', float('nan')):.4f}",
                 f"{row['metrics'].get('cosine min', float('nan')):.4f}", f"{row['size']:.3f}"]
        cells += [f"{ratios[(key, t)]:.2f}" if (key, t) in ratios else errors.get(key, "—") for t in args.thread_list]
        cells += [str(row["smoothed"]), str(row["split"]), str(row["unfused"]), f"{row['seconds']:.0f}",
                  f"`{row['recipe']}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _latency_feed(data, which: str, tokens: int | None = None) -> dict[str, np.ndarray]:
    """The first eval row (compare.py's choice) or the longest one (attention grows with the length squared),
    optionally tiled to ``tokens`` tokens (a synthetic long input; only its length matters for latency)."""
    if which == "first":
        feed = data.latency_feed()
    else:
        feed = data.token_row(int(np.argmax(data.inputs["attention_mask"].sum(axis=1))))
    if tokens:
        feed = {k: np.resize(v, (1, tokens)) for k, v in feed.items()}
    return feed


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/ablation_minilm.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    p.add_argument("--case", default="minilm")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", default="1")
    p.add_argument("--latency-row", choices=("first", "longest"), default="first")
    p.add_argument("--latency-tokens", type=int, help="tile the latency row to this many tokens")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "ablation_minilm.md")
    args = p.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_list if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    args.thread_list = [int(t) for t in args.threads.split(",") if t.strip()]
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    text = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    logger.info("wrote %s\n\n%s", args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
