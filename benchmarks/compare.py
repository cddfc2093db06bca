"""Compare qcompile with FP32 and with onnxruntime.quantization on the same models and data.

    python benchmarks/compare.py [--eval-dir DIR] [--cases fmnist_cnn,minilm,effnet_lite0]
                                 [--model M.onnx --calib DIR --eval E.npz] [--runs 30] [--rounds 5]
                                 [--threads 1,0] [--out benchmarks/results.md]

Methods (all on the same calibration folder and the same eval data, in one process):

    fp32              the input model
    qcompile          qcompile.compile_model(model, calib, CompileConfig())          (default config)
    ort_static        onnxruntime.quantization.quantize_static, QDQ, MinMax, defaults
    ort_static_best   quantize_static, QDQ, MinMax, per_channel=True, reduce_range=True
    ort_dynamic       onnxruntime.quantization.quantize_dynamic, weight_type=QInt8, defaults
    inc_static        Intel Neural Compressor (onnx-neural-compressor) StaticQuantConfig defaults   (--inc-python)
    inc_smoothquant   INC SmoothQuantConfig, alpha 0.5, per-channel weights                        (--inc-python)
    qcompile_w4a16    qcompile.compile_model(..., CompileConfig(preset=Preset.W4A16))    (INT4 weight-only)
    ort_matmulnbits   onnxruntime MatMulNBitsQuantizer, 4 bits, block 32, symmetric      (INT4 weight-only)

Default methods per case: all of them, except that inc_smoothquant, qcompile_w4a16 and ort_matmulnbits
(methods for weight matrices of transformer-style MatMuls) run only on models with at least one MatMul whose
second input is a constant (an initializer or a Constant node's output); --methods picks an explicit list for
every case. The INC methods run their child under the interpreter given by --inc-python (INC needs numpy<2, so
it lives in its own venv, see benchmarks/README.md) with benchmarks/inc_worker.py; without the option, or when
that interpreter cannot import onnx_neural_compressor, they are reported as "not available: <reason>".

Each quantiser runs in a fresh child process (``--_compile-worker``); its compile time is measured inside the
child around load + quantise + save (interpreter start and imports excluded) and its peak RSS is the child's
own VmHWM from /proc/self/status (the whole process, imports included; the peak right after the imports is
reported next to it so the compile's own share can be read off). Not ru_maxrss: see _peak_rss_kb.

Latency: batch 1, CPU EP, ORT_ENABLE_ALL, intra_op threads in --threads (0 = ORT's default: all cores).
All sessions are created first; then for each of --rounds rounds, for each thread setting, every method (in
an order rotated each round) gets --warmup untimed runs and --runs timed runs, and the round's median is
kept. The table shows the median over rounds of those medians, and the ratio to FP32 is the median over
rounds of (method round median / FP32 round median), i.e. always against FP32 timed in the same round.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger("benchmarks.compare")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EVAL_DIR = Path(os.environ.get("QCOMPILE_EVAL_DIR", REPO.parent / "shared" / "eval"))
DEFAULT_CASES = ("fmnist_cnn", "minilm", "effnet_lite0")
DEFAULT_OUT = REPO / "benchmarks" / "results.md"

METHODS = ("fp32", "qcompile", "ort_static", "ort_static_best", "ort_dynamic", "inc_static", "inc_smoothquant",
           "qcompile_w4a16", "ort_matmulnbits")
INC_METHODS = frozenset({"inc_static", "inc_smoothquant"})
# Methods aimed at the weight matrices of MatMuls (transformers): on by default only where such MatMuls exist.
WEIGHT_MATMUL_METHODS = frozenset({"inc_smoothquant", "qcompile_w4a16", "ort_matmulnbits"})
INC_WORKER = Path(__file__).resolve().with_name("inc_worker.py")
METHOD_LABELS = {
    "fp32": "FP32",
    "qcompile": "qcompile (default config)",
    "ort_static": "ORT quantize_static (QDQ, MinMax, defaults)",
    "ort_static_best": "ORT quantize_static (QDQ, per_channel, reduce_range)",
    "ort_dynamic": "ORT quantize_dynamic (QInt8 weights)",
    "inc_static": "INC StaticQuantConfig (defaults: QOperator, U8S8, per-tensor)",
    "inc_smoothquant": "INC SmoothQuant (alpha 0.5, per-channel)",
    "qcompile_w4a16": "qcompile --preset w4a16 (INT4 weight-only)",
    "ort_matmulnbits": "ORT MatMulNBitsQuantizer (INT4, block 32, symmetric)",
}

# Per real case: how to measure fidelity. mode "cls": batched, top-1 agreement (+ accuracy when labels exist);
# mode "token": one row at a time with padding removed, cosine of `output` vs FP32.
KNOWN_CASES: dict[str, dict[str, Any]] = {
    "fmnist_cnn": {"mode": "cls", "batch": 500},
    "effnet_lite0": {"mode": "cls", "batch": 10},
    "minilm": {"mode": "token", "output": "sentence_embedding"},
}
LABEL_KEYS = ("y", "labels", "label")


# ------------------------------------------------------------------------------------------------ small helpers


def _md_escape(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def _all_tensors(graph) -> list:
    out = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                out.append(attr.t)
            out.extend(attr.tensors)
            if attr.HasField("g"):
                out.extend(_all_tensors(attr.g))
            for g in attr.graphs:
                out.extend(_all_tensors(g))
    return out


def model_file_bytes(path: Path) -> int:
    """Bytes of the .onnx file plus every external data file it references."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in sorted(locations))


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    cpu, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu is None:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cpu = cpu or platform.processor() or "unknown"
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        import qcompile
        qc_version = qcompile.__version__
    except Exception:  # noqa: BLE001 - informational only
        qc_version = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "onnxruntime": ort.__version__,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "avx512f": "avx512f" in flags,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "qcompile": qc_version,
    }


# ------------------------------------------------------------------------------------------------ compile worker


def _model_input_names(model_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in inits]


def _calib_files(calib: Path) -> list[Path]:
    return sorted(Path(calib).glob("*.npz"))


def _make_reader(calib: Path, input_names: Sequence[str]):
    from onnxruntime.quantization import CalibrationDataReader

    class NpzFolderReader(CalibrationDataReader):
        """One feed dict per calib/*.npz file (sorted), restricted to the model's inputs."""

        def __init__(self) -> None:
            self._files = _calib_files(calib)
            self._it = iter(self._files)

        def get_next(self):
            path = next(self._it, None)
            if path is None:
                return None
            with np.load(path) as z:
                return {k: z[k] for k in input_names if k in z.files}

        def rewind(self) -> None:
            self._it = iter(self._files)

        def __len__(self) -> int:
            return len(self._files)

    return NpzFolderReader()


def _peak_rss_kb() -> tuple[int, str]:
    """This process's peak RSS in KiB and where it came from.

    VmHWM (/proc/self/status) is the high-water mark of the current address space, which execve replaces, so
    it covers only this program. ru_maxrss is NOT usable for a child started by fork+exec (or vfork+exec,
    which subprocess uses): Linux folds the pre-exec address space's high-water mark, i.e. the forking parent's
    RSS, into the child's ru_maxrss, both for the child's own RUSAGE_SELF and for the parent's wait4 /
    RUSAGE_CHILDREN. It is only the fallback where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]), "VmHWM"
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def _compile_worker(method: str, model: Path, calib: Path, out_dir: Path) -> int:
    """Child-process entry: quantise with `method`, write out_dir/model.onnx and out_dir/worker.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_model = out_dir / "model.onnx"
    result: dict[str, Any] = {"method": method}
    try:
        if method in ("qcompile", "qcompile_w4a16"):
            from qcompile import compile_model
            from qcompile.config import CompileConfig, Preset
        elif method == "ort_matmulnbits":
            import onnx
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        else:
            from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                                  quantize_static)
        result["baseline_rss_kb"], _ = _peak_rss_kb()
        started = time.perf_counter()
        if method in ("qcompile", "qcompile_w4a16"):
            preset = Preset.W4A16 if method == "qcompile_w4a16" else Preset.W8A8
            compiled = compile_model(model, calib, CompileConfig(preset=preset))
            compiled.save(out_model, out_dir / "report.json", overwrite=True)
            summary = compiled.report.data.get("summary", {})
            result["notes"] = {k: summary.get(k) for k in ("quantized_nodes", "skipped_compute_nodes",
                                                            "unfused_nodes")}
            result["warnings"] = list(compiled.report.data.get("warnings", []))
        elif method in ("ort_static", "ort_static_best"):
            reader = _make_reader(calib, _model_input_names(model))
            kwargs = dict(quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax)
            if method == "ort_static_best":
                kwargs.update(per_channel=True, reduce_range=True)
            quantize_static(str(model), str(out_model), reader, **kwargs)
        elif method == "ort_dynamic":
            quantize_dynamic(str(model), str(out_model), weight_type=QuantType.QInt8)
        elif method == "ort_matmulnbits":
            # accuracy_level left at its default (None: the kernel's own default, fp32 compute)
            quantizer = MatMulNBitsQuantizer(onnx.load(str(model)), bits=4, block_size=32, is_symmetric=True)
            quantizer.process()
            quantizer.model.save_model_to_file(str(out_model))
        else:
            raise ValueError(f"unknown method {method!r}")
        result["seconds"] = time.perf_counter() - started
        result["peak_rss_kb"], result["rss_source"] = _peak_rss_kb()
        result["ok"] = True
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which records it in the table
        import traceback

        traceback.print_exc()
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    (out_dir / "worker.json").write_text(json.dumps(result))
    return code


@dataclass
class Compiled:
    method: str
    path: Path | None = None
    seconds: float | None = None
    peak_rss_mb: float | None = None
    baseline_rss_mb: float | None = None
    error: str | None = None
    unavailable: str | None = None   # the method cannot run here (e.g. no INC interpreter): why
    notes: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def run_compile(method: str, model: Path, calib: Path, out_dir: Path, timeout: float,
                inc_python: Path | None = None) -> Compiled:
    """Run one quantiser in a fresh child: `python compare.py --_compile-worker` for ours and ORT's, `INC_PYTHON
    inc_worker.py` for INC's. Peak RSS is the child's own VmHWM (os.wait4's ru_maxrss only as a fallback)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "worker.log"
    if method == "ort_matmulnbits" and importlib.util.find_spec("onnx_ir") is None:
        # onnxruntime's quantizer imports onnx-ir, which onnxruntime does not declare
        return Compiled(method, unavailable="MatMulNBitsQuantizer needs onnx-ir: pip install -e '.[bench]'")
    if method in INC_METHODS:
        if inc_python is None:
            return Compiled(method, unavailable="no --inc-python given (INC needs its own venv, numpy<2)")
        if not Path(inc_python).exists():
            return Compiled(method, unavailable=f"--inc-python {inc_python} does not exist")
        cmd = [str(inc_python), str(INC_WORKER), method, str(model), str(calib), str(out_dir)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_compile-worker", method, str(model), str(calib),
               str(out_dir)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            # wait4 reaps exactly this child and returns ITS rusage, unlike RUSAGE_CHILDREN (the max over every
            # child ever waited for); its ru_maxrss still includes our own RSS at fork time (see _peak_rss_kb),
            # so it is only used when the child could not report its own VmHWM.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    info: dict[str, Any] = {}
    info_path = out_dir / "worker.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
    peak_kb = info.get("peak_rss_kb") if info.get("rss_source") == "VmHWM" else usage.ru_maxrss
    compiled = Compiled(method, peak_rss_mb=peak_kb / 1024.0)
    if info.get("unavailable"):
        compiled.unavailable = info.get("error", "not available")
        logger.warning("%s not available: %s", method, compiled.unavailable)
        return compiled
    if info.get("versions"):
        compiled.notes = {"versions": info["versions"]}
    if info.get("ok") and (out_dir / "model.onnx").exists():
        compiled.path = out_dir / "model.onnx"
        compiled.seconds = info["seconds"]
        compiled.notes.update(info.get("notes", {}))
        compiled.warnings = info.get("warnings", [])
    elif info.get("error"):
        compiled.error = info["error"]
    else:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
        compiled.error = (f"worker exited with code {proc.returncode}"
                          + (" (killed: timeout)" if proc.returncode == -9 else "")
                          + (f": {tail[0]}" if tail else ""))
    if info.get("baseline_rss_kb"):
        compiled.baseline_rss_mb = info["baseline_rss_kb"] / 1024.0
    if compiled.error:
        logger.warning("%s failed: %s", method, compiled.error)
    else:
        logger.info("%s compiled in %.2f s, peak RSS %.0f MB", method, compiled.seconds, compiled.peak_rss_mb)
    return compiled


# ------------------------------------------------------------------------------------------------ cases and data


@dataclass
class Case:
    name: str
    model: Path
    calib: Path
    eval: Path
    mode: str = "cls"
    batch: int = 10
    output: str | None = None


def make_case(name: str, model: Path, calib: Path, eval_path: Path) -> Case:
    spec = KNOWN_CASES.get(name)
    if spec is None:
        inputs = _model_input_names(model)
        spec = {"mode": "token" if "attention_mask" in inputs else "cls", "batch": 10}
    return Case(name, Path(model), Path(calib), Path(eval_path), spec["mode"], spec.get("batch", 10),
                spec.get("output"))


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class EvalData:
    """eval.npz mapped onto the model's inputs: arrays [N, ...] with the model's rank (an extra leading sample
    axis, as models/generate.py's write_eval makes, is folded into the batch)."""

    def __init__(self, case: Case, input_names: Sequence[str], input_ranks: dict[str, int]) -> None:
        with np.load(case.eval) as z:
            arrays = {k: z[k] for k in z.files}
        self.inputs: dict[str, np.ndarray] = {}
        for name in input_names:
            if name in arrays:
                key = name
            elif len(input_names) == 1 and "x" in arrays:
                key = "x"
            else:
                raise KeyError(f"eval file {case.eval} has no array for model input {name!r}: {sorted(arrays)}")
            value = arrays[key]
            rank = input_ranks.get(name)
            if rank is not None and value.ndim == rank + 1:
                value = value.reshape(value.shape[0] * value.shape[1], *value.shape[2:])
            self.inputs[name] = value
        self.labels = next((arrays[k].reshape(-1) for k in LABEL_KEYS if k in arrays and k not in input_names),
                           None)
        self.n = len(next(iter(self.inputs.values())))
        self.case = case

    def token_row(self, i: int) -> dict[str, np.ndarray]:
        length = int(self.inputs["attention_mask"][i].sum())
        return {k: np.ascontiguousarray(v[i: i + 1, :length]) for k, v in self.inputs.items()}

    def batches(self):
        for start in range(0, self.n, self.case.batch):
            yield {k: np.ascontiguousarray(v[start: start + self.case.batch]) for k, v in self.inputs.items()}

    def latency_feed(self) -> dict[str, np.ndarray]:
        if self.case.mode == "token":
            return self.token_row(0)
        return {k: np.ascontiguousarray(v[0:1]) for k, v in self.inputs.items()}


def _input_ranks(model_path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.input
            if v.type.tensor_type.HasField("shape")}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def model_outputs(session, data: EvalData) -> np.ndarray | list[np.ndarray]:
    """FP32-comparable outputs of one session over the whole eval set."""
    case = data.case
    names = [o.name for o in session.get_outputs()]
    if case.mode == "token":
        out_name = case.output if case.output in names else names[-1]
        return [session.run([out_name], data.token_row(i))[0] for i in range(data.n)]
    return np.concatenate([session.run([names[0]], feed)[0] for feed in data.batches()], axis=0)


def fidelity(case: Case, data: EvalData, ref, out) -> dict[str, float]:
    if case.mode == "token":
        cos = [_cosine(r, q) for r, q in zip(ref, out)]
        return {"cosine mean": float(np.mean(cos)), "cosine min": float(np.min(cos))}
    if out.ndim == 2:
        metrics = {"top-1 agreement": float(np.mean(out.argmax(1) == ref.argmax(1)))}
        if data.labels is not None and len(data.labels) == len(out):
            metrics["accuracy"] = float(np.mean(out.argmax(1) == data.labels))
        return metrics
    cos = [_cosine(r, q) for r, q in zip(ref, out)]
    return {"cosine mean": float(np.mean(cos)), "cosine min": float(np.min(cos))}


# ------------------------------------------------------------------------------------------------ benchmark


@dataclass
class Row:
    method: str
    compiled: Compiled
    size_bytes: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[int, float] = field(default_factory=dict)
    latency_ratio: dict[int, float] = field(default_factory=dict)
    error: str | None = None


def measure_latency(sessions: dict[tuple[str, int], Any], feed: dict[str, np.ndarray], methods: Sequence[str],
                    threads: Sequence[int], runs: int, warmup: int, rounds: int
                    ) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], float], dict[str, str]]:
    round_medians: dict[tuple[str, int], list[float]] = {k: [] for k in sessions}
    errors: dict[str, str] = {}
    for r in range(rounds if methods else 0):
        for t in threads:
            order = list(methods[r % len(methods):]) + list(methods[: r % len(methods)])
            for m in order:
                key = (m, t)
                if key not in sessions or m in errors:
                    continue
                sess = sessions[key]
                try:
                    for _ in range(warmup):
                        sess.run(None, feed)
                    times = []
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        sess.run(None, feed)
                        times.append((time.perf_counter() - t0) * 1e3)
                except Exception as exc:  # noqa: BLE001
                    errors[m] = f"run failed: {type(exc).__name__}: {exc}"
                    continue
                round_medians[key].append(statistics.median(times))
        logger.info("latency round %d/%d done", r + 1, rounds)
    median_ms = {k: statistics.median(v) for k, v in round_medians.items() if v}
    ratios: dict[tuple[str, int], float] = {}
    for (m, t), values in round_medians.items():
        ref = round_medians.get(("fp32", t), [])
        if values and len(ref) == len(values):
            ratios[(m, t)] = statistics.median(v / f for v, f in zip(values, ref))
    return median_ms, ratios, errors


def has_constant_weight_matmul(model_path: Path) -> bool:
    """True when some MatMul (any graph level) multiplies by a constant: an initializer or a Constant's output."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)

    def walk(graph, constants: set[str]) -> bool:
        constants = constants | {t.name for t in graph.initializer}
        constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        for node in graph.node:
            if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in constants:
                return True
            for attr in node.attribute:
                if any(walk(g, constants) for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)):
                    return True
        return False

    return walk(model.graph, set())


def default_methods(model_path: Path) -> list[str]:
    """Every method, minus the weight-MatMul ones (WEIGHT_MATMUL_METHODS) when the model has no constant-weight
    MatMul (CNNs whose only dense layer is a Gemm)."""
    if has_constant_weight_matmul(model_path):
        return list(METHODS)
    return [m for m in METHODS if m not in WEIGHT_MATMUL_METHODS]


def run_case(case: Case, work: Path, *, runs: int, warmup: int, rounds: int, threads: Sequence[int],
             methods: Sequence[str] | None, compile_timeout: float, inc_python: Path | None = None
             ) -> tuple[list[Row], dict[str, Any]]:
    """Benchmark one case; methods None = default_methods(case.model)."""
    logger.info("=== case %s: %s (calib %s, %d files; eval %s)", case.name, case.model, case.calib,
                len(_calib_files(case.calib)), case.eval)
    if methods is None:
        methods = default_methods(case.model)
    methods = ["fp32", *[m for m in methods if m != "fp32"]]
    rows: list[Row] = []
    for m in methods:
        if m == "fp32":
            rows.append(Row(m, Compiled(m, path=case.model)))
        else:
            rows.append(Row(m, run_compile(m, case.model, case.calib, work / case.name / m, compile_timeout,
                                           inc_python)))

    data = EvalData(case, _model_input_names(case.model), _input_ranks(case.model))
    fp32_bytes = model_file_bytes(case.model)
    eval_sessions: dict[str, Any] = {}
    ref = None
    for row in rows:
        if row.compiled.unavailable:
            continue
        if row.compiled.error:
            row.error = row.compiled.error
            continue
        try:
            row.size_bytes = model_file_bytes(row.compiled.path)
            started = time.perf_counter()
            sess = _session(row.compiled.path, 0)
            out = model_outputs(sess, data)
            if row.method == "fp32":
                ref = out
            row.metrics = fidelity(case, data, ref, out)
            eval_sessions[row.method] = sess
            logger.info("%s fidelity %s (%.1f s)", row.method,
                        ", ".join(f"{k} {v:.4f}" for k, v in row.metrics.items()), time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - a peer's model that ORT cannot load/run is a result too
            row.error = f"{type(exc).__name__}: {exc}"
            logger.warning("%s failed at evaluation: %s", row.method, row.error)
    eval_sessions.clear()

    sessions: dict[tuple[str, int], Any] = {}
    for row in rows:
        if row.error or row.compiled.unavailable:
            continue
        for t in threads:
            try:
                sessions[(row.method, t)] = _session(row.compiled.path, t)
            except Exception as exc:  # noqa: BLE001
                row.error = f"session (threads={t}) failed: {type(exc).__name__}: {exc}"
                break
    sessions = {k: v for k, v in sessions.items() if not next(r for r in rows if r.method == k[0]).error}
    live = [r.method for r in rows if not r.error and not r.compiled.unavailable]
    median_ms, ratios, errors = measure_latency(sessions, data.latency_feed(), live, threads, runs, warmup, rounds)
    for row in rows:
        if row.method in errors:
            row.error = errors[row.method]
        for t in threads:
            if (row.method, t) in median_ms:
                row.latency_ms[t] = median_ms[(row.method, t)]
            if (row.method, t) in ratios:
                row.latency_ratio[t] = ratios[(row.method, t)]
    sessions.clear()
    extra = {"fp32_bytes": fp32_bytes, "calib_files": len(_calib_files(case.calib)), "eval_items": data.n,
             "latency_feed": {k: list(v.shape) for k, v in data.latency_feed().items()}}
    return rows, extra


# ------------------------------------------------------------------------------------------------ report


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def case_table(case: Case, rows: list[Row], extra: dict[str, Any], threads: Sequence[int]) -> str:
    metric_names: list[str] = []
    for row in rows:
        for k in row.metrics:
            if k not in metric_names:
                metric_names.append(k)
    fp32_bytes = extra["fp32_bytes"]

    def tlabel(t: int) -> str:
        return "1 thread" if t == 1 else ("all threads" if t == 0 else f"{t} threads")

    header = ["method", *metric_names, "size ratio"]
    for t in threads:
        header += [f"latency {tlabel(t)} ms", f"ratio {tlabel(t)}"]
    header += ["compile s", "compile peak RSS MB"]
    lines = [f"### {case.name}", "",
             f"model `{case.model}` ({fp32_bytes / 1e6:.2f} MB), calibration {extra['calib_files']} files from "
             f"`{case.calib}`, eval {extra['eval_items']} items from `{case.eval}`, latency input "
             + ", ".join(f"{k} {v}" for k, v in extra["latency_feed"].items()) + ".", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        c = row.compiled
        cells = [METHOD_LABELS.get(row.method, row.method)]
        if c.unavailable:
            cells += [f"not available: {_md_escape(c.unavailable)}"] + ["—"] * (len(header) - 2)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        if row.error and not row.metrics:
            cells += [f"FAILED: {_md_escape(row.error)}"] + ["—"] * (len(metric_names) - 1)
        else:
            cells += [_fmt(row.metrics.get(k), ".4f") for k in metric_names]
        cells.append(_fmt(row.size_bytes / fp32_bytes if row.size_bytes else None, ".3f"))
        for t in threads:
            cells += [_fmt(row.latency_ms.get(t), ".3f"), _fmt(row.latency_ratio.get(t), ".2f")]
        if row.method == "fp32":
            cells += ["—", "—"]
        else:
            rss = _fmt(c.peak_rss_mb, ".0f")
            if c.baseline_rss_mb is not None and c.peak_rss_mb is not None:
                rss += f" (+{c.peak_rss_mb - c.baseline_rss_mb:.0f})"
            cells += [_fmt(c.seconds, ".2f"), rss]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for row in rows:
        if row.error and row.metrics:
            notes.append(f"- {METHOD_LABELS.get(row.method, row.method)}: {_md_escape(row.error, 400)}")
        if row.method in INC_METHODS and row.compiled.notes.get("versions"):
            notes.append(f"- {METHOD_LABELS[row.method]}: ran under --inc-python with "
                         + ", ".join(f"{k} {v}" for k, v in row.compiled.notes["versions"].items()))
        if row.method in ("qcompile", "qcompile_w4a16") and row.compiled.notes:
            notes.append(f"- {row.method} report: "
                         + ", ".join(f"{k} {v}" for k, v in row.compiled.notes.items())
                         + (f"; warnings: {_md_escape('; '.join(row.compiled.warnings), 400)}"
                            if row.compiled.warnings else "; no warnings"))
        for t in threads:
            ratio = row.latency_ratio.get(t)
            if row.method != "fp32" and ratio is not None and ratio > 1.0:
                notes.append(f"- {METHOD_LABELS.get(row.method, row.method)} is slower than FP32 at "
                             f"{tlabel(t)} ({ratio:.2f}x).")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def header_md(info: dict[str, Any], args: argparse.Namespace, argv: Sequence[str]) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    vnni = "yes" if info["avx512_vnni"] else "no"
    return "\n".join([
        "# qcompile vs FP32 vs onnxruntime.quantization vs Intel Neural Compressor", "",
        f"- date: {now}",
        f"- machine: {info['cpu']}, {info['cores']} logical cores ({info['usable_cores']} usable), "
        f"AVX512-VNNI: {vnni}, AVX-VNNI: {'yes' if info['avx_vnni'] else 'no'}, "
        f"AVX512F: {'yes' if info['avx512f'] else 'no'}",
        f"- software: onnxruntime {info['onnxruntime']}, qcompile {info['qcompile']}, Python {info['python']}, "
        f"numpy {info['numpy']}",
        f"- command: `python benchmarks/compare.py {' '.join(argv)}`",
        f"- latency: batch 1, CPUExecutionProvider, ORT_ENABLE_ALL, {args.warmup} warm-ups + {args.runs} timed "
        f"runs per method per round, {args.rounds} rounds interleaved across methods; ms = median of per-round "
        "medians; ratio = median over rounds of (method / FP32 of the same round); < 1 is faster than FP32.",
        "- compile s: wall time of load + quantise + save inside a fresh child process; compile peak RSS MB: "
        "that child's peak RSS (VmHWM of the whole child process, incl. Python + imports), in parentheses the "
        "growth over the peak right after the imports.",
        "- Intel Neural Compressor (inc_*): "
        + (f"compiled by `{args.inc_python} benchmarks/inc_worker.py` (its own venv, numpy<2; its models are run "
           "by this process's onnxruntime like every other method)." if args.inc_python else
           "not run: no --inc-python given (see benchmarks/README.md)."),
        "- default methods per case: all; inc_smoothquant, qcompile_w4a16 and ort_matmulnbits only for models with "
        "a constant-weight MatMul." if args.method_list is None else
        f"- methods: {', '.join(args.method_list)}",
        "",
    ])


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated case folders in --eval-dir")
    p.add_argument("--model", type=Path, help="benchmark this model instead of --cases (needs --calib, --eval)")
    p.add_argument("--calib", type=Path)
    p.add_argument("--eval", type=Path)
    p.add_argument("--name", help="case name for --model (default: the model file's stem)")
    p.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHODS)} for every case (fp32 is "
                   "always added); default: per case, see default_methods")
    p.add_argument("--inc-python", type=Path, help="interpreter of a venv with onnx-neural-compressor, for inc_*")
    p.add_argument("--runs", type=int, default=30, help="timed runs per method per round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", default="1,0", help="intra-op thread settings; 0 = ORT default (all cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--work-dir", type=Path, help="keep the quantised models here (default: a temp dir)")
    p.add_argument("--compile-timeout", type=float, default=1800.0)
    args = p.parse_args(argv)
    if args.model and not (args.calib and args.eval):
        p.error("--model needs --calib and --eval")
    if args.runs < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--runs and --rounds must be >= 1, --warmup >= 0")
    args.thread_list = [int(t) for t in args.threads.split(",") if t.strip()]
    args.method_list = None
    if args.methods is not None:
        args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in args.method_list if m not in METHODS]
        if unknown:
            p.error(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        if "fp32" not in args.method_list:
            args.method_list.insert(0, "fp32")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_compile-worker"]:
        method, model, calib, out_dir = argv[1:5]
        return _compile_worker(method, Path(model), Path(calib), Path(out_dir))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    logger.setLevel(logging.INFO)
    args = parse_args(argv)

    if args.model:
        cases = [make_case(args.name or args.model.stem.replace(".onnx", ""), args.model, args.calib, args.eval)]
    else:
        cases = []
        for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
            folder = args.eval_dir / name
            cases.append(make_case(name, folder / "model.onnx", folder / "calib", folder / "eval.npz"))

    info = machine_info()
    parts = [header_md(info, args, argv)]
    with tempfile.TemporaryDirectory(prefix="qcompile-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        for case in cases:
            started = time.perf_counter()
            try:
                rows, extra = run_case(case, work, runs=args.runs, warmup=args.warmup, rounds=args.rounds,
                                       threads=args.thread_list, methods=args.method_list,
                                       compile_timeout=args.compile_timeout, inc_python=args.inc_python)
                parts.append(case_table(case, rows, extra, args.thread_list))
            except Exception as exc:  # noqa: BLE001 - one broken case must not lose the others
                logger.exception("case %s failed", case.name)
                parts.append(f"### {case.name}\n\nFAILED: {_md_escape(f'{type(exc).__name__}: {exc}', 400)}\n")
            logger.info("case %s took %.0f s", case.name, time.perf_counter() - started)
    text = "\n".join(parts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    logger.info("wrote %s\n\n%s", args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
