"""Compile worker for Intel Neural Compressor's ONNX path (onnx-neural-compressor), run by benchmarks/compare.py.

    /tmp/incvenv/bin/python benchmarks/inc_worker.py METHOD MODEL.onnx CALIB_DIR OUT_DIR

It runs under a *separate* interpreter (onnx-neural-compressor 1.0 needs numpy<2, this project needs numpy 2), so
it imports only the standard library, numpy, onnx, onnxruntime and onnx_neural_compressor: never qcompile, never
compare.py. It writes OUT_DIR/model.onnx and OUT_DIR/worker.json with the same keys compare.py's own worker
writes (ok, error, seconds, peak_rss_kb, rss_source, baseline_rss_kb), plus ``unavailable`` when the INC import
itself fails (the parent then reports the method as "not available", not as a failed compile).

METHOD:
    inc_static       config.StaticQuantConfig(reader) with INC's defaults: QOperator format, activations QUInt8
                     (asymmetric), weights QInt8 (symmetric), per tensor, MinMax, reduce_range False, INC's CPU
                     op list; calibration_sampling_size = number of calibration files (INC's default is 100:
                     set so every quantiser sees the same data).
    inc_smoothquant  config.SmoothQuantConfig(alpha=0.5, folding=False, ...) with extra_options SmoothQuant=True
                     (what quantize() dispatches on), per_channel=True, otherwise as inc_static. alpha 0.5 and
                     per-channel weights are the settings of INC's SmoothQuant documentation and LLM examples;
                     folding=False because INC's default folding=True crashes on MiniLM (see below).
                     Calibration samples are zero-padded to a common shape (see _make_reader), since INC's
                     SmoothQuant calibrator cannot take samples of different sequence lengths.

Both go through onnx_neural_compressor.quantization.quantize, which first runs ORT's basic graph optimisations
on the model (its default optimization_level), then calibrates and quantises.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

INC_METHODS = ("inc_static", "inc_smoothquant")


def _peak_rss_kb() -> tuple[int, str]:
    """VmHWM of this process (see compare.py's _peak_rss_kb for why not ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]), "VmHWM"
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def _model_input_names(model_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in inits]


def _make_reader(calib: Path, input_names: list[str], pad_to_common_shape: bool = False):
    """One feed dict per calib/*.npz (sorted), restricted to the model's inputs: the same data as compare.py's
    ORT reader. With ``pad_to_common_shape`` every input is zero-padded at the end of each axis to the largest
    shape over the files (for token models: input ids / masks padded with 0 to the longest sample)."""
    import numpy as np
    from onnx_neural_compressor.data_reader import CalibrationDataReader

    files = sorted(Path(calib).glob("*.npz"))
    target: dict[str, tuple[int, ...]] = {}
    if pad_to_common_shape:
        for path in files:
            with np.load(path) as z:
                for k in input_names:
                    if k in z.files:
                        shape = z[k].shape
                        target[k] = tuple(max(a, b) for a, b in zip(target.get(k, shape), shape))

    def padded(name: str, value):
        if name not in target or value.shape == target[name]:
            return value
        return np.pad(value, [(0, t - s) for s, t in zip(value.shape, target[name])])

    class NpzFolderReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.files = files
            self._it = iter(self.files)

        def get_next(self):
            path = next(self._it, None)
            if path is None:
                return None
            with np.load(path) as z:
                return {k: padded(k, z[k]) for k in input_names if k in z.files}

        def rewind(self) -> None:
            self._it = iter(self.files)

    return NpzFolderReader()


def quantize_with_inc(method: str, model: Path, calib: Path, out_model: Path) -> None:
    from onnx_neural_compressor.quantization import config, quantize

    # INC's SmoothQuant calibrator np.stack()s each activation over the samples, so samples of different sequence
    # lengths fail ("all input arrays must have the same shape"); its transformer examples pad to a fixed length.
    reader = _make_reader(calib, _model_input_names(model), pad_to_common_shape=method == "inc_smoothquant")
    samples = max(1, len(reader.files))
    if method == "inc_static":
        quant_config = config.StaticQuantConfig(calibration_data_reader=reader, calibration_sampling_size=samples)
    elif method == "inc_smoothquant":
        # folding=False: INC 1.0's default folding=True raises "Number of values (N) does not match tensor
        # dimensions requiring 1 elements" on MiniLM and tiny_transformer (it folds the per-channel scale into a
        # parent Mul's scalar constant); unfolded, the smoothing Muls stay in the graph as float ops.
        quant_config = config.SmoothQuantConfig(alpha=0.5, folding=False, calib_iter=samples,
                                                calibration_data_reader=reader, calibration_sampling_size=samples,
                                                per_channel=True,
                                                extra_options={"SmoothQuant": True, "SmoothQuantAlpha": 0.5})
    else:
        raise ValueError(f"unknown INC method {method!r}; known: {', '.join(INC_METHODS)}")
    quantize(str(model), str(out_model), quant_config)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    method, model, calib, out_dir = argv[0], Path(argv[1]), Path(argv[2]), Path(argv[3])
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"method": method}
    code = 1
    try:
        import onnx_neural_compressor  # noqa: F401 - availability check
        from onnx_neural_compressor.quantization import config, quantize  # noqa: F401
    except BaseException as exc:  # noqa: BLE001 - any import failure means "not available here"
        traceback.print_exc()
        result.update(ok=False, unavailable=True, error=f"cannot import onnx_neural_compressor: "
                                                         f"{type(exc).__name__}: {exc}")
    else:
        try:
            import numpy as np
            import onnxruntime
            from onnx_neural_compressor import version

            result["versions"] = {"onnx_neural_compressor": version.__version__,
                                  "numpy": np.__version__, "onnxruntime": onnxruntime.__version__}
            result["baseline_rss_kb"], _ = _peak_rss_kb()
            started = time.perf_counter()
            quantize_with_inc(method, model, calib, out_dir / "model.onnx")
            result["seconds"] = time.perf_counter() - started
            result["peak_rss_kb"], result["rss_source"] = _peak_rss_kb()
            result["ok"] = True
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which records it in the table
            traceback.print_exc()
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    (out_dir / "worker.json").write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
