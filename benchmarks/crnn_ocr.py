"""A real CRNN captcha/OCR model (ddddocr's common.onnx: Conv backbone + BiLSTM + Gemm over 8,210 classes) at INT8.

    pip download ddddocr --no-deps -d /tmp/dddd && python -m zipfile -e /tmp/dddd/ddddocr-*.whl /tmp/dddd/x
    python benchmarks/crnn_ocr.py --ddddocr /tmp/dddd/x/ddddocr                 # every method, 32 calib / 200 eval
    python benchmarks/crnn_ocr.py --ddddocr /tmp/dddd/x/ddddocr --per-layer     # + one part quantised at a time

Images: random captcha-like strings (4-6 of [0-9a-zA-Z], two-letter words absent) drawn with a random Debian
DejaVu font, size, colour and small rotation per character on a noisy light background with interference lines
(PIL), 40-70 px high and 100-220 px wide; calibration and evaluation sets come from different seeds. Preprocessing
is ddddocr's (core/ocr_engine.py, the beta model): resize to height 64 keeping the aspect ratio (LANCZOS),
grayscale, /255, [1, 1, 64, W]. Decoding is ddddocr's greedy CTC: argmax per step, repeats merged, blank 0
dropped. String agreement is the fraction of eval images whose decoded index sequence equals FP32's; accuracy
is against the rendered text (through the beta charset parsed from ddddocr's charset_manager.py).

Methods: qcompile defaults; qcompile --quantize-classifier (with per-node sensitivity: the five most sensitive
nodes are listed); the same with --method percentile / entropy; with an accuracy budget (string agreement on
``--budget-samples`` images of a third seed, the most sensitive nodes fall back to float until it holds); onnxruntime.quantization quantize_static (QDQ,
per-channel and per-tensor, MinMax, QUInt8/QInt8, the same calibration images) and quantize_dynamic (QInt8, its defaults, which
turn the LSTM into DynamicQuantizeLSTM). Latency: median of ``--runs`` runs at one ORT thread on a 160 px wide
image (noisy on a shared machine). Compile time: wall clock of each quantiser, calibration included.
"""

from __future__ import annotations

import argparse
import ast
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from qcompile import compile_model
from qcompile.config import (AccuracyBudget, AnalysisConfig, CalibrationMethod as QCalibrationMethod, CompileConfig,
                             LayerAnalysis, QuantSpec)

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
MODEL_INPUT = "input1"
TARGET_HEIGHT = 64
CALIB_SEED, EVAL_SEED, BUDGET_SEED = 1000, 2000, 3000
OUTPUT = "387"                   # logits [T, 1, 8210] (the model declares [1, seqlen])


# ------------------------------------------------------------------------------------------------------- data

def render_captcha(rng: np.random.Generator, fonts: list[Path]) -> tuple[Image.Image, str]:
    """A captcha-like RGB image and its text."""
    text = "".join(rng.choice(list(ALPHABET), size=int(rng.integers(4, 7))))
    height = int(rng.integers(40, 71))
    width = int(max(100, min(220, height * len(text) * rng.uniform(0.55, 0.8))))
    background = tuple(int(v) for v in rng.integers(200, 256, 3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):            # interference lines
        points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(2)]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(80, 200, 3)), width=int(rng.integers(1, 3)))
    step = width / (len(text) + 0.6)
    for index, char in enumerate(text):
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), int(height * rng.uniform(0.55, 0.8)))
        glyph = Image.new("RGBA", (height, height), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((height * 0.15, height * 0.05), char, font=font,
                                   fill=tuple(int(v) for v in rng.integers(0, 120, 3)) + (255,))
        glyph = glyph.rotate(float(rng.uniform(-20, 20)), resample=Image.BICUBIC)
        x = int(step * (index + 0.3) + rng.uniform(-2, 2) - height * 0.15)
        image.paste(glyph, (x, int(rng.uniform(-3, 3))), glyph)
    noise = rng.integers(-25, 26, (height, width, 3))
    image = Image.fromarray(np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    return image, text


def preprocess(image: Image.Image) -> np.ndarray:
    """ddddocr's preprocessing for its default-size models: height 64, aspect kept, LANCZOS, grayscale, /255."""
    width = int(image.size[0] * (TARGET_HEIGHT / image.size[1]))
    gray = image.resize((width, TARGET_HEIGHT), Image.LANCZOS).convert("L")
    return (np.asarray(gray, np.float32) / 255.0)[None, None]


def make_set(n: int, seed: int, fonts: list[Path]) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    rng = np.random.default_rng(seed)
    feeds, texts = [], []
    for _ in range(n):
        image, text = render_captcha(rng, fonts)
        feeds.append({MODEL_INPUT: preprocess(image)})
        texts.append(text)
    return feeds, texts


def beta_charset(ddddocr_dir: Path) -> list[str]:
    """The charset list literal returned by CharsetManager._get_beta_charset (parsed, not imported)."""
    tree = ast.parse((ddddocr_dir / "models" / "charset_manager.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "_get_beta_charset":
            for stmt in ast.walk(node):
                if isinstance(stmt, ast.Return) and stmt.value is not None:
                    return ast.literal_eval(stmt.value)
    raise SystemExit("could not find _get_beta_charset in ddddocr's charset_manager.py")


# ------------------------------------------------------------------------------------------------------- running

def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ctc_decode(logits: np.ndarray) -> tuple[int, ...]:
    """ddddocr's greedy CTC over [T, 1, C] logits: argmax, merge repeats, drop blank 0."""
    best = logits.reshape(logits.shape[0], -1).argmax(axis=-1)
    out, previous = [], None
    for index in best.tolist():
        if index != previous and index != 0:
            out.append(index)
        previous = index
    return tuple(out)


def decode_all(sess: ort.InferenceSession, feeds) -> list[tuple[int, ...]]:
    return [ctc_decode(sess.run(None, feed)[0]) for feed in feeds]


def latency_ms(sess: ort.InferenceSession, runs: int) -> float:
    rng = np.random.default_rng(0)
    feed = {MODEL_INPUT: rng.random((1, 1, TARGET_HEIGHT, 160), dtype=np.float32)}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over the calibration feeds."""

    def __init__(self, feeds) -> None:
        self._iter = iter(feeds)

    def get_next(self):
        return next(self._iter, None)


def ort_static(per_channel: bool):
    def run(model_path: Path, out: Path, calib) -> None:
        quantize_static(str(model_path), str(out), _Reader(calib), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return run


def ort_dynamic(model_path: Path, out: Path, calib) -> None:
    quantize_dynamic(str(model_path), str(out), weight_type=QuantType.QInt8)


def string_agreement(fp32_outputs, quantised_outputs) -> float:
    """The budget metric: fraction of items whose greedy-CTC strings agree (lists of {output: array})."""
    return float(np.mean([ctc_decode(a[OUTPUT]) == ctc_decode(b[OUTPUT])
                          for a, b in zip(fp32_outputs, quantised_outputs)]))


def qcompile_method(config: CompileConfig, **kwargs):
    def run(model_path: Path, out: Path, calib) -> dict:
        result = compile_model(str(model_path), calib, config, **kwargs)
        result.save(out)
        return result.report.data
    return run


def most_sensitive(report: dict, count: int = 5) -> list[tuple[str, str, float]]:
    """(name, op, relative output error with only that node quantised) of the ``count`` most sensitive nodes."""
    nodes = [n for n in (report.get("layers") or {}).get("nodes", []) if "sensitivity_rank" in n]
    nodes.sort(key=lambda n: n["sensitivity_rank"])
    return [(n["name"], n.get("op_type", "?"), n["sensitivity"]["relative_error"]) for n in nodes[:count]]


def part_configs(model: onnx.ModelProto) -> dict[str, CompileConfig]:
    """One part of the model quantised, the rest float (by --exclude on every other compute node)."""
    compute = {"Conv": [], "LSTM": [], "Gemm": []}
    for node in model.graph.node:
        if node.op_type in compute:
            compute[node.op_type].append(node.name)
    configs = {}
    for part, names in compute.items():
        others = tuple(n for p, ns in compute.items() if p != part for n in ns)
        configs[f"qcompile only {part} ({len(names)})"] = CompileConfig(exclude=others, quantize_classifier=True)
    return configs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddddocr", type=Path, required=True, help="the extracted ddddocr package folder")
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--per-layer", action="store_true", help="also quantise Conv / LSTM / Gemm one at a time")
    parser.add_argument("--budget", type=float, default=0.99, help="string agreement the budget row must keep")
    parser.add_argument("--budget-samples", type=int, default=100, help="images (own seed) the budget is held on")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--only", action="append", help="run only the methods whose name contains this (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ort.set_default_logger_severity(3)   # the model declares its output [1, seqlen]; ORT warns on every run
    model_path = args.ddddocr / "common.onnx"
    fonts = sorted(p for p in FONT_DIR.glob("DejaVu*.ttf") if "ExtraLight" not in p.name and "Math" not in p.name)
    calib, _ = make_set(args.calib, CALIB_SEED, fonts)
    evals, texts = make_set(args.eval, EVAL_SEED, fonts)
    charset = beta_charset(args.ddddocr)
    model = onnx.load(str(model_path))
    fp32 = session(str(model_path))
    reference = decode_all(fp32, evals)
    fp32_accuracy = np.mean(["".join(charset[i] for i in r) == t for r, t in zip(reference, texts)])
    print(f"FP32: {model_path} ({model_path.stat().st_size / 1e6:.1f} MB), accuracy vs rendered text "
          f"{fp32_accuracy:.3f} on {len(evals)} eval images, {len(calib)} calibration images")
    budget_set, _ = make_set(args.budget_samples, BUDGET_SEED, fonts)     # held out from calib and eval
    percentile = QuantSpec(method=QCalibrationMethod.PERCENTILE)
    methods = {"qcompile defaults": qcompile_method(CompileConfig()),
               "qcompile --quantize-classifier": qcompile_method(CompileConfig(
                   quantize_classifier=True, analysis=AnalysisConfig(layers=LayerAnalysis.SENSITIVITY))),
               "qcompile --quantize-classifier --method percentile": qcompile_method(CompileConfig(
                   quantize_classifier=True, activation=percentile)),
               "qcompile --quantize-classifier --method entropy": qcompile_method(CompileConfig(
                   quantize_classifier=True, activation=QuantSpec(method=QCalibrationMethod.ENTROPY))),
               f"qcompile --quantize-classifier, budget: string agreement >= {args.budget}": qcompile_method(
                   CompileConfig(quantize_classifier=True, accuracy_budget=AccuracyBudget(
                       min_metric=args.budget, eval_samples=args.budget_samples)),
                   eval_data=budget_set, metric=string_agreement),
               "ort quantize_static (QDQ, per-channel)": ort_static(True),
               "ort quantize_static (QDQ, per-tensor)": ort_static(False),
               "ort quantize_dynamic": ort_dynamic}
    if args.per_layer:
        methods.update({name: qcompile_method(config) for name, config in part_configs(model).items()})
    if args.only:
        methods = {name: method for name, method in methods.items() if any(part in name for part in args.only)}
    sensitive: list[tuple] = []
    rows = [("FP32", 1.0, 1.0, fp32_accuracy, 0.0, latency_ms(fp32, args.runs), "")]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="crnn-ocr-"))
    work.mkdir(parents=True, exist_ok=True)
    for index, (name, method) in enumerate(methods.items()):
        out = work / f"method_{index}.onnx"
        start = time.perf_counter()
        try:
            report = method(model_path, out, calib)
            seconds = time.perf_counter() - start
            sess = session(str(out))
        except Exception as exc:          # a peer that fails is a row, not the end of the run
            rows.append((name, float("nan"), float("nan"), float("nan"), time.perf_counter() - start, float("nan"),
                         f"failed: {str(exc).splitlines()[0][:160]}"))
            continue
        decoded = decode_all(sess, evals)
        agreement = np.mean([a == b for a, b in zip(decoded, reference)])
        accuracy = np.mean(["".join(charset[i] for i in d) == t for d, t in zip(decoded, texts)])
        note = ""
        if isinstance(report, dict):
            kinds = {}
            for entry in report.get("nodes", []):
                if entry.get("status") == "quantized":
                    kinds[entry["op_type"]] = kinds.get(entry["op_type"], 0) + 1
            note = "quantised: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            fallback = report.get("fallback") or {}
            if fallback.get("nodes"):
                note += f"; fell back to float: {', '.join(n['name'] for n in fallback['nodes'])}"
            sensitive.extend((name, *entry) for entry in most_sensitive(report))
        rows.append((name, out.stat().st_size / model_path.stat().st_size, agreement, accuracy, seconds,
                     latency_ms(sess, args.runs), note))
        logging.warning("%s: %s", name, rows[-1][1:])
    print()
    print("| method | size ratio | string agreement vs FP32 | accuracy vs text | compile s | ms (1 thread) | notes |")
    print("|---|---|---|---|---|---|---|")
    for name, ratio, agreement, accuracy, seconds, ms, note in rows:
        print(f"| {name} | {ratio:.3f} | {agreement:.3f} | {accuracy:.3f} | {seconds:.1f} | {ms:.1f} | {note} |")
    if sensitive:
        print()
        print("| compile | node | op | relative logit error, only this node quantised |")
        print("|---|---|---|---|")
        for compile_name, node, op, error in sensitive:
            print(f"| {compile_name} | {node} | {op} | {error:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
