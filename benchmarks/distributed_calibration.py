"""Calibration wall time on a local Ray cluster: 1 vs 2 workers, beside the in-process collector.

The calibration set is ``<eval>/minilm/calib`` cycled to ``--samples`` items (file i of the temporary folder is
a copy of ``calib/<i mod n>``: 64 files -> 128 items repeat each file twice). One process starts a local
cluster with ``ray.init(num_cpus=2)`` (start-up timed separately), then runs ``compile_model`` in interleaved
rounds of:

* in-process   ``collect_statistics`` (ORT's default intra-op threads), no Ray
* ray 1 worker ``WorkersConfig(shards=1, threads=1)``: one task, one ORT thread
* ray 2 workers ``WorkersConfig(shards=2, threads=1)``: two tasks at once, one ORT thread each

and reads the calibration wall time from the report (the ``calibration`` records of ``passes``: stat
planning, shard tasks, merge and compute, i.e. what a user waits for). Medians over rounds; the machine is
shared, so compare ratios within one run.

The report's tensor ranges are compared with the in-process run twice: with the default config (SmoothQuant
searches α on a row sample, whose sampled rows depend on the sharding) and with a fixed α = 0.5 (SmoothQuant
then needs only per-channel |max|, an exact merge), where every range must be identical.

    python benchmarks/distributed_calibration.py [--samples 128] [--rounds 5] [--eval-dir ../shared/eval]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from qcompile.api import compile_model
from qcompile.config import CalibrationConfig, CompileConfig, SmoothQuantConfig, WorkersConfig

VARIANTS = {
    "in-process": None,
    "ray, 1 worker": WorkersConfig(shards=1, threads=1),
    "ray, 2 workers": WorkersConfig(shards=2, threads=1),
}


def cycled_folder(calib: Path, count: int, folder: Path) -> Path:
    files = sorted(calib.glob("*.npz"))
    for i in range(count):
        shutil.copyfile(files[i % len(files)], folder / f"item_{i:05d}.npz")
    return folder


def calibration_seconds(model: Path, calib: Path, workers: WorkersConfig | None,
                        smoothquant: SmoothQuantConfig = SmoothQuantConfig()) -> tuple[float, dict]:
    config = CompileConfig(fidelity_samples=0, calibration=CalibrationConfig(workers=workers),
                           smoothquant=smoothquant)
    report = compile_model(model, calib, config).report.data
    seconds = sum(p["seconds"] for p in report["passes"] if p["name"] == "calibration")
    return seconds, report["tensor_ranges"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", type=Path,
                        default=Path(os.environ.get("QCOMPILE_EVAL_DIR", Path(__file__).parents[2] / "shared/eval")))
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    case = args.eval_dir / "minilm"
    with tempfile.TemporaryDirectory(prefix="qcompile-bench-") as tmp:
        calib = cycled_folder(case / "calib", args.samples, Path(tmp))
        n_files = len(list((case / "calib").glob("*.npz")))
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
        startup = time.perf_counter() - start
        try:
            times: dict[str, list[float]] = {name: [] for name in VARIANTS}
            ranges: dict[str, dict] = {}
            fixed: dict[str, dict] = {}
            for name, workers in VARIANTS.items():  # warm-up round: worker processes import qcompile + ORT
                ranges[name] = calibration_seconds(case / "model.onnx", calib, workers)[1]
                fixed[name] = calibration_seconds(case / "model.onnx", calib, workers, SmoothQuantConfig(alpha=0.5))[1]
            for _ in range(args.rounds):
                for name, workers in VARIANTS.items():
                    times[name].append(calibration_seconds(case / "model.onnx", calib, workers)[0])
        finally:
            ray.shutdown()
    base = statistics.median(times["ray, 1 worker"])
    print(f"minilm, {args.samples} calibration items ({n_files} files cycled), {os.cpu_count()} CPUs, "
          f"{args.rounds} interleaved rounds after one warm-up; local cluster start-up {startup:.1f} s "
          f"(not included); load average at the end {os.getloadavg()[0]:.1f}")
    print("| variant | ORT threads per worker | calibration wall time, median (min-max) | vs ray 1 worker "
          "| ranges equal to in-process (default / α=0.5) |")
    print("|---|---|---|---|---|")
    for name, workers in VARIANTS.items():
        t = times[name]
        threads = "ORT default (all cores)" if workers is None else str(workers.threads)
        print(f"| {name} | {threads} | {statistics.median(t):.2f} s ({min(t):.2f}-{max(t):.2f}) | "
              f"{statistics.median(t) / base:.2f} | {_agreement(ranges, name)} / {_agreement(fixed, name)} |")


def _agreement(ranges: dict[str, dict], name: str) -> str:
    reference, got = ranges["in-process"], ranges[name]
    equal = sum(1 for key in reference if got.get(key) == reference[key])
    return f"{equal}/{len(reference)}" + ("" if set(got) == set(reference) else " (other tensors)")


if __name__ == "__main__":
    main()
