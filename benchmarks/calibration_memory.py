"""Peak RSS and time of calibration only, 16 vs 128 samples: qcompile's streaming collector vs ORT's calibrators.

For every (case, method, implementation, sample count) a fresh child process (this script with ``--worker``)
loads the model, builds a lazy, re-iterable calibration source over ``calib/*.npz`` (sample i is file
``i % n_files``, so 128 samples cycle the 64 files twice), runs calibration once and prints one JSON line with
the calibration wall time (imports and model loading excluded) and peak RSS (``VmHWM`` from
``/proc/self/status``). Both implementations calibrate the same tensor set: the float, non-initializer inputs and
outputs of every node (the set ORT's ``select_tensors_to_calibrate`` picks with no op-type filter), found with
``onnx.shape_inference``.

* ours: ``collect_statistics(gs.import_onnx(model), [StatRequest(t, RANGE, method, percentile=99.999,
  symmetric=False, unsigned=True) ...], source)`` (default 1 GiB memory budget, default threads).
* ORT: ``create_calibrator(model, calibrate_method=MinMax|Percentile|Entropy, extra_options={percentile:
  99.999, symmetric: False})``; time = ``collect_data`` + ``compute_data`` (``augment_graph`` and session
  creation happen inside ``create_calibrator`` and are reported separately as ``setup_s``). ORT has no MSE.

Each child runs under ``RLIMIT_AS`` (default 12 GB) and a wall-clock timeout (default 240 s); failures are
recorded as "out of memory" / "timeout" / "error" instead of numbers.

    python benchmarks/calibration_memory.py [--cases minilm effnet_lite0] [--methods ...] [--timeout 240]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVAL_ROOT = Path("/work/shared/eval")
METHODS = ("minmax", "percentile", "entropy", "mse")
SAMPLES = (16, 128)


# ----------------------------------------------------------------------------------------------- child side
class LazyNpzSource:
    """Re-iterable, list-like calibration source: item i is ``np.load(files[i % len(files)])`` as a dict."""

    def __init__(self, files, count):
        self.files = list(files)
        self.count = count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        import numpy as np
        if not 0 <= index < self.count:
            raise IndexError(index)
        with np.load(self.files[index % len(self.files)]) as data:
            return {key: data[key] for key in data.files}

    def __iter__(self):
        for index in range(self.count):
            yield self[index]


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _tensors_to_calibrate(model) -> list[str]:
    import onnx
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    infos = {vi.name: vi for vi in graph.value_info}
    infos.update({vi.name: vi for vi in graph.output})
    infos.update({vi.name: vi for vi in graph.input})
    initializers = {init.name for init in graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    names: list[str] = []
    seen: set[str] = set()
    for node in graph.node:
        for name in list(node.input) + list(node.output):
            if not name or name in seen or name in initializers or name not in infos:
                continue
            vi = infos[name]
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in floats:
                seen.add(name)
                names.append(name)
    return names


def _import_collector():
    # needs the installed package (pip install -e .): it maps calibrators/ to qcompile.calibrators
    from qcompile.calibrators.collector import collect_statistics
    return collect_statistics


def worker(case: str, impl: str, method: str, count: int, as_limit_gb: float) -> None:
    import resource
    if as_limit_gb > 0:
        limit = int(as_limit_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np  # noqa: F401
    import onnx

    case_dir = EVAL_ROOT / case
    files = sorted((case_dir / "calib").glob("*.npz"))
    source = LazyNpzSource(files, count)
    result = {"case": case, "impl": impl, "method": method, "n": count}

    if impl == "ours":
        import onnx_graphsurgeon as gs
        from qcompile.config import CalibrationMethod
        from qcompile.io import load_model
        from qcompile.pass_infra import StatKind, StatRequest
        collect_statistics = _import_collector()
        model = load_model(case_dir / "model.onnx").model
        tensors = _tensors_to_calibrate(model)
        graph = gs.import_onnx(model)
        calib = CalibrationMethod(method)
        requests = [StatRequest(t, StatKind.RANGE, calib, percentile=99.999, symmetric=False, unsigned=True)
                    for t in tensors]
        rss_before = _peak_rss_mb()
        start = time.perf_counter()
        ranges = collect_statistics(graph, requests, source)
        elapsed = time.perf_counter() - start
        result.update(tensors=len(tensors), ranges=len(ranges), setup_s=0.0)
    else:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod as OrtMethod
        from onnxruntime.quantization.calibrate import create_calibrator
        ort_method = {"minmax": OrtMethod.MinMax, "percentile": OrtMethod.Percentile,
                      "entropy": OrtMethod.Entropy}[method]
        extra = {"symmetric": False}
        if method == "percentile":
            extra["percentile"] = 99.999

        class Reader(CalibrationDataReader):
            def __init__(self, src):
                self._it = iter(src)

            def get_next(self):
                return next(self._it, None)

        model = onnx.load(str(case_dir / "model.onnx"))
        tensors = _tensors_to_calibrate(model)
        with tempfile.TemporaryDirectory() as tmp:
            rss_before = _peak_rss_mb()
            t0 = time.perf_counter()
            calibrator = create_calibrator(case_dir / "model.onnx", None, str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=ort_method, providers=["CPUExecutionProvider"],
                                           extra_options=extra)
            setup = time.perf_counter() - t0
            start = time.perf_counter()
            calibrator.collect_data(Reader(source))
            ranges = calibrator.compute_data()
            elapsed = time.perf_counter() - start
        result.update(tensors=len(tensors), ranges=len(ranges.data) if hasattr(ranges, "data") else len(ranges),
                      setup_s=round(setup, 3))
    result.update(time_s=round(elapsed, 4), rss_mb=round(_peak_rss_mb(), 1), rss_before_mb=round(rss_before, 1))
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- parent side
def run_child(case, impl, method, count, timeout, as_limit_gb) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case, impl, method, str(count),
           "--as-limit-gb", str(as_limit_gb)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            data = json.loads(line[len("RESULT "):])
            data["status"] = "ok"
            return data
    text = proc.stderr + proc.stdout
    if any(m in text for m in ("MemoryError", "bad_alloc", "Failed to allocate", "Cannot allocate")) \
            or proc.returncode in (-9, 137):
        return {"status": "out of memory"}
    lines = [ln for ln in text.strip().splitlines() if "Error" in ln or "Exception" in ln] or ["?"]
    return {"status": "error", "detail": lines[-1][:200]}


def _fmt(value, digits=1):
    return f"{value:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=4, metavar=("CASE", "IMPL", "METHOD", "N"))
    parser.add_argument("--cases", nargs="+", default=["minilm", "effnet_lite0"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--impls", nargs="+", default=["ours", "ort"], choices=["ours", "ort"])
    parser.add_argument("--samples", nargs=2, type=int, default=list(SAMPLES), metavar=("SMALL", "LARGE"))
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--as-limit-gb", type=float, default=12.0)
    parser.add_argument("--json", help="also write the raw per-child results here")
    args = parser.parse_args(argv)

    if args.worker:
        case, impl, method, count = args.worker
        worker(case, impl, method, int(count), args.as_limit_gb)
        return 0

    small, large = args.samples
    rows, raw = [], []
    for case in args.cases:
        for method in args.methods:
            for impl in args.impls:
                if impl == "ort" and method == "mse":
                    rows.append((case, method, impl, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"))
                    continue
                res = {}
                for count in (small, large):
                    res[count] = run_child(case, impl, method, count, args.timeout, args.as_limit_gb)
                    raw.append(dict(res[count], case=case, impl=impl, method=method, n=count))
                    print(f"# {case} {method} {impl} n={count}: {json.dumps(res[count])}", file=sys.stderr,
                          flush=True)
                a, b = res[small], res[large]
                cell = lambda r, key, d=1: _fmt(r[key], d) if r.get("status") == "ok" else r.get("status")  # noqa: E731
                ok = a.get("status") == "ok" and b.get("status") == "ok"
                ratio = _fmt(b["rss_mb"] / a["rss_mb"], 2) if ok else "-"
                per = _fmt(1000 * b["time_s"] / large, 2) if b.get("status") == "ok" else b.get("status")
                marginal = _fmt(1000 * (b["time_s"] - a["time_s"]) / (large - small), 2) if ok else "-"
                tensors = str(b.get("tensors", a.get("tensors", "-")))
                rows.append((case, method, impl, cell(a, "rss_mb"), cell(b, "rss_mb"), ratio, per, marginal,
                             tensors))

    header = ("case", "method", "impl", f"RSS MB @{small}", f"RSS MB @{large}", f"ratio {large}/{small}",
              f"time/sample ms @{large}", f"marginal ms/sample ({small}->{large})", "tensors")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
