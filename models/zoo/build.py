"""Build the zoo: wheel -> ``<cache>/<case>/model.onnx`` + ``calib/sample_NNNN.npz`` + ``eval.npz`` +
``metadata.json``, re-runnable (a complete case folder is reused; delete it to rebuild).

    python -m models.zoo.build [--only NAME ...] [--cache DIR] [--calib-samples 16] [--eval-samples 32]

Calibration and eval samples come from disjoint seeded generators (seed = crc32(case name), split 0 or 1), so
two builds give identical data.  eval.npz stacks the batch-1 samples on axis 0 (``{input: [N, ...]}``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.zoo.cases import CASES, CASES_BY_NAME, ZooCase
from models.zoo.fetch import fetch_member, sha256, zoo_dir
from models.zoo.inputs import SKIMAGE, Sources, load_sources

LOG = logging.getLogger(__name__)
CALIB_SAMPLES, EVAL_SAMPLES = 16, 32
CALIB_SPLIT, EVAL_SPLIT = 0, 1


def _rng(case: ZooCase, split: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(case.name.encode()), split])


def make_samples(case: ZooCase, sources: Sources, split: int, count: int) -> list[np.ndarray]:
    rng = _rng(case, split)
    return [case.make_input(sources, rng, index) for index in range(count)]


def _metadata(case: ZooCase, model: Path, calib: int, evals: int) -> dict:
    return {"name": case.name, "what": case.what, "task": case.task.value, "metric": case.metric_name,
            "floor": case.floor, "source": {"package": case.wheel.package, "version": case.wheel.version,
                                            "member": case.member, "sha256": sha256(model)},
            "inputs": {"images": f"{SKIMAGE.requirement} skimage/data", "fonts": "Debian fonts-dejavu-core",
                       "text": "Debian /usr/share/common-licenses"},
            "input_name": case.input_name, "calib_samples": calib, "eval_samples": evals}


def build_case(case: ZooCase, cache: Path | None = None, sources: Sources | None = None,
               calib_samples: int = CALIB_SAMPLES, eval_samples: int = EVAL_SAMPLES) -> Path:
    """The case folder, built on first use. Raises ZooFetchError when a wheel cannot be fetched."""
    cache = cache or zoo_dir()
    folder = cache / case.name
    metadata_path = folder / "metadata.json"
    if metadata_path.is_file():
        recorded = json.loads(metadata_path.read_text())
        if recorded.get("calib_samples") == calib_samples and recorded.get("eval_samples") == eval_samples:
            return folder
    model = fetch_member(case.wheel, case.member, folder / "model.onnx", cache)
    sources = sources or load_sources(cache, photos=case.needs_photos)
    LOG.info("%s: rendering %d calibration + %d eval samples", case.name, calib_samples, eval_samples)
    calib = folder / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    for stale in calib.glob("*.npz"):
        stale.unlink()
    for index, sample in enumerate(make_samples(case, sources, CALIB_SPLIT, calib_samples)):
        np.savez(calib / f"sample_{index:04d}.npz", **{case.input_name: sample})
    evals = make_samples(case, sources, EVAL_SPLIT, eval_samples)
    np.savez(folder / "eval.npz", **{case.input_name: np.concatenate(evals)})
    metadata_path.write_text(json.dumps(_metadata(case, model, calib_samples, eval_samples), indent=2) + "\n")
    return folder


def read_eval(folder: Path, case: ZooCase) -> list[dict[str, np.ndarray]]:
    stacked = np.load(folder / "eval.npz")[case.input_name]
    return [{case.input_name: stacked[i:i + 1]} for i in range(stacked.shape[0])]


def session(model, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_outputs(model, feeds: list[dict[str, np.ndarray]], threads: int = 0) -> list[list[np.ndarray]]:
    runner = session(model, threads)
    return [runner.run(None, feed) for feed in feeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES_BY_NAME), help="cases to build (default: all)")
    parser.add_argument("--cache", type=Path, default=None, help="zoo folder (default $QCOMPILE_ZOO_DIR or "
                                                                  "~/.cache/qcompile-zoo)")
    parser.add_argument("--calib-samples", type=int, default=CALIB_SAMPLES)
    parser.add_argument("--eval-samples", type=int, default=EVAL_SAMPLES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = args.cache or zoo_dir()
    sources = load_sources(cache)
    for case in [CASES_BY_NAME[n] for n in args.only] if args.only else CASES:
        folder = build_case(case, cache, sources, args.calib_samples, args.eval_samples)
        LOG.info("%s -> %s", case.name, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
