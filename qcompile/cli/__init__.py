"""The command line: flags build a CompileConfig and call the API; QCompileError becomes one line + exit 2.

    qcompile model.onnx --calib data/        -> model.qdq.onnx + model.qdq.report.json
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from qcompile import __version__
from qcompile.config import (Preset, WeightOnlyAlgorithm, WeightOnlyForm, weight_only_from_mapping,
                             CalibrationMethod, CompileConfig, ImageLayout, Target, WorkersConfig,
                             from_toml)
from qcompile.config import AccuracyBudget, CalibrationProvider, LayerAnalysis
from qcompile.config import SmoothScope, parse_alpha
from qcompile.errors import ConfigError, ModelSaveError, QCompileError

logger = logging.getLogger("qcompile")

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3


def _split_csv(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, got {text!r}") from None


def _image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--image-size must be N or HxW, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ConfigError(f"--image-size must be N or HxW, got {text!r}")
    return values[0], values[1]


def build_config(config_path: str | None, op_types, exclude, num_samples, batch_size, image_size, mean, std,
                 layout, target, method, percentile, quantize_classifier, fidelity_samples,
                 workers: str | None = None) -> CompileConfig:
    config = from_toml(config_path) if config_path else CompileConfig()
    changes: dict = {}
    if op_types:
        changes["op_types"] = _split_csv(op_types)
    if exclude:
        changes["exclude"] = config.exclude + _split_csv(exclude)
    if quantize_classifier:
        changes["quantize_classifier"] = True
    if target:
        changes["target"] = Target(target)
    if fidelity_samples is not None:
        changes["fidelity_samples"] = fidelity_samples
    if method or percentile is not None:
        activation = config.activation
        if method:
            activation = dataclasses.replace(activation, method=CalibrationMethod(method))
        if percentile is not None:
            activation = dataclasses.replace(activation, percentile=percentile)
        changes["activation"] = activation
    calibration = config.calibration
    if num_samples is not None:
        calibration = dataclasses.replace(calibration, num_samples=num_samples)
    if batch_size is not None:
        calibration = dataclasses.replace(calibration, batch_size=batch_size)
    image = calibration.image
    image_changes = {k: v for k, v in {"size": _image_size(image_size), "mean": _floats(mean, "--mean"),
                                       "std": _floats(std, "--std")}.items() if v is not None}
    if layout:
        image_changes["layout"] = ImageLayout(layout)
    if image_changes:
        calibration = dataclasses.replace(calibration, image=dataclasses.replace(image, **image_changes))
    if workers is not None:  # the address only: shards/threads/retries come from the recipe or defaults
        calibration = dataclasses.replace(calibration, workers=dataclasses.replace(
            calibration.workers or WorkersConfig(), address=workers))
    changes["calibration"] = calibration
    return dataclasses.replace(config, **changes)


_WEIGHT_ONLY_OPTIONS = (
    click.option("--preset", type=click.Choice([p.value for p in Preset]),
                 help="w8a8 (static INT8, default) or weight-only w4a16 / w8a16 (LLM-sized MatMuls)."),
    click.option("--block-size", type=int, help="Weight-only: block size along K (32, 64, 128; default 32)."),
    click.option("--algorithm", type=click.Choice([a.value for a in WeightOnlyAlgorithm]),
                 help="Weight-only: rtn, gptq or awq (default gptq)."),
    click.option("--form", type=click.Choice([f.value for f in WeightOnlyForm]),
                 help="Weight-only: dequantize_linear (standard), matmul_nbits (ORT contrib) or auto (target)."),
    click.option("--accuracy-level", type=click.IntRange(0, 4), help="MatMulNBits accuracy_level (4 = int8 compute)."),
    click.option("--symmetric/--asymmetric", default=None, help="Weight-only: symmetric blocks (no zero points)."),
    click.option("--act-order/--no-act-order", default=None,
                 help="GPTQ: visit K by decreasing Hessian diagonal (default on)."),
    click.option("--clip-search/--no-clip-search", default=None,
                 help="Weight-only: search a clip ratio per block (default on)."),
)
_WEIGHT_ONLY_KEYS = {"block_size": "block_size", "algorithm": "algorithm", "form": "form",
                     "accuracy_level": "accuracy_level", "symmetric": "symmetric", "act_order": "act_order",
                     "clip_search": "clip_search"}


def weight_only_options(func):
    """Adds the weight-only flags and hands them to ``func`` as one ``weight_only_flags`` dict."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        flags = {key: kwargs.pop(key) for key in ("preset", *_WEIGHT_ONLY_KEYS)}
        return func(*args, weight_only_flags=flags, **kwargs)
    for option in reversed(_WEIGHT_ONLY_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def apply_weight_only_flags(config: CompileConfig, flags: dict) -> CompileConfig:
    """--preset and the weight-only flags over the config (unset flags leave the TOML/default values)."""
    table = {_WEIGHT_ONLY_KEYS[k]: v for k, v in flags.items() if k in _WEIGHT_ONLY_KEYS and v is not None}
    changes: dict = {}
    if flags.get("preset"):
        changes["preset"] = Preset(flags["preset"])
    if table:
        changes["weight_only"] = weight_only_from_mapping(table, config.weight_only)
    return dataclasses.replace(config, **changes) if changes else config


def apply_runtime_flags(config: CompileConfig, calib_provider: str | None,
                        custom_op_library: str | None) -> CompileConfig:
    """--calib-provider and the opt-in --custom-op-library over the config."""
    changes: dict = {}
    if calib_provider:
        changes["calibration"] = dataclasses.replace(config.calibration,
                                                     provider=CalibrationProvider(calib_provider))
    if custom_op_library:
        changes["custom_op_library"] = str(custom_op_library)
    return dataclasses.replace(config, **changes) if changes else config


_TRANSFORMER_OPTIONS = (
    click.option("--smoothquant", metavar="ALPHA|auto|off", is_flag=False, flag_value="auto",
                 help="SmoothQuant on every MatMul/Gemm input: a fixed α in [0, 1], 'auto' (search α per layer, "
                      "the value without an argument) or 'off'. Default: auto α on graphs with LayerNormalization."),
    click.option("--split-outliers", type=click.Choice(["weights", "activations", "both"]),
                 help="Outlier-channel splitting of MatMul/Gemm inputs (off by default)."),
    click.option("--split-ratio", type=float, help="Outlier splitting: extra channels per layer, as a fraction "
                                                    "of its input channels (default 0.02)."),
    click.option("--quantize-attention", is_flag=True,
                 help="Quantise MatMuls of two activations too (attention QK^T, P*V; float by default)."),
    click.option("--float-embeddings", is_flag=True, help="Keep Gather tables (embeddings) float."),
)
_TRANSFORMER_KEYS = ("smoothquant", "split_outliers", "split_ratio", "quantize_attention", "float_embeddings")


def transformer_options(func):
    """Adds the transformer flags and hands them to ``func`` as one ``transformer_flags`` dict."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, transformer_flags={key: kwargs.pop(key) for key in _TRANSFORMER_KEYS}, **kwargs)
    for option in reversed(_TRANSFORMER_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def apply_transformer_flags(config: CompileConfig, flags: dict) -> CompileConfig:
    """SmoothQuant, outlier splitting, attention and embedding flags over the config (unset flags keep it)."""
    changes: dict = {}
    if flags.get("smoothquant") is not None:
        value = str(flags["smoothquant"]).strip().lower()
        scope = SmoothScope.OFF if value == "off" else SmoothScope.ALL
        alpha = config.smoothquant.alpha if value == "off" else parse_alpha(value, "--smoothquant")
        changes["smoothquant"] = dataclasses.replace(config.smoothquant, scope=scope, alpha=alpha)
    split = config.outlier_split
    if flags.get("split_outliers"):
        which = flags["split_outliers"]
        split = dataclasses.replace(split, weights=which in ("weights", "both"),
                                    activations=which in ("activations", "both"))
    if flags.get("split_ratio") is not None:
        split = dataclasses.replace(split, expand_ratio=flags["split_ratio"])
    if split != config.outlier_split:
        changes["outlier_split"] = split
    if flags.get("quantize_attention"):
        changes["quantize_activation_matmuls"] = True
    if flags.get("float_embeddings"):
        changes["embedding"] = dataclasses.replace(config.embedding, enabled=False)
    return dataclasses.replace(config, **changes) if changes else config


class _DefaultToCompile(click.Group):
    """`qcompile MODEL --calib DIR` runs the compile command; named subcommands run themselves."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["compile", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToCompile, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qcompile")
def main() -> None:
    """qcompile: FP32 ONNX + calibration data -> INT8 ONNX that ONNX Runtime runs fast.

    Usage: qcompile MODEL.onnx --calib DATA_DIR [options]   (see `qcompile compile --help`)
    """


_ACCURACY_OPTIONS = (
    click.option("--min-cosine", type=float, help="Accuracy budget: mean cosine vs FP32 of every output (e.g. "
                                                  "0.99); the most sensitive nodes fall back to float until it holds."),
    click.option("--max-error", type=float, help="Accuracy budget: relative L2 error vs FP32 of every output."),
    click.option("--min-top1-agreement", type=float, help="Accuracy budget: top-1 agreement with FP32 on logits."),
    click.option("--eval-data", help="Held-out data for the budget: a folder (like --calib) or an .npz of arrays "
                                     "keyed by input name (default: the first calibration items, not held out)."),
    click.option("--eval-samples", type=int, help="Eval items the budget is checked on (default 100)."),
    click.option("--layer-analysis", type=click.Choice([m.value for m in LayerAnalysis]),
                 help="Per-layer error in the report: none, sqnr (default) or sensitivity (one run per node)."),
    click.option("--analysis-samples", type=int, help="Calibration items for the per-layer analysis (default 8)."),
)
_ACCURACY_KEYS = ("min_cosine", "max_error", "min_top1_agreement", "eval_data", "eval_samples", "layer_analysis",
                  "analysis_samples")


def accuracy_options(func):
    """Adds the accuracy-budget and analysis flags and hands them to ``func`` as one ``accuracy_flags`` dict."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, accuracy_flags={key: kwargs.pop(key) for key in _ACCURACY_KEYS}, **kwargs)
    for option in reversed(_ACCURACY_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def apply_accuracy_flags(config: CompileConfig, flags: dict) -> CompileConfig:
    """The budget and analysis flags over the config (unset flags keep the TOML/default values)."""
    changes: dict = {}
    bounds = {k: flags[k] for k in ("min_cosine", "max_error", "min_top1_agreement") if flags.get(k) is not None}
    if flags.get("eval_samples") is not None:
        bounds["eval_samples"] = flags["eval_samples"]
    if bounds:
        if config.accuracy_budget is None and set(bounds) == {"eval_samples"}:
            raise ConfigError("--eval-samples needs a budget: --min-cosine, --max-error or --min-top1-agreement")
        changes["accuracy_budget"] = (dataclasses.replace(config.accuracy_budget, **bounds)
                                      if config.accuracy_budget else AccuracyBudget(**bounds))
    analysis = {}
    if flags.get("layer_analysis"):
        analysis["layers"] = LayerAnalysis(flags["layer_analysis"])
    if flags.get("analysis_samples") is not None:
        analysis["samples"] = flags["analysis_samples"]
    if analysis:
        changes["analysis"] = dataclasses.replace(config.analysis, **analysis)
    return dataclasses.replace(config, **changes)


def fallback_summary(fallback: dict) -> str:
    """One line: how many nodes fell back, fidelity before -> after, size and latency cost."""
    before, after = fallback["before"], fallback["after"]
    parts = [f"{label} {before[key]:.4f} -> {after[key]:.4f}" for key, label in
             (("cosine_mean", "cosine"), ("relative_error", "error"), ("top1_agreement", "top-1"), ("metric", "metric"))
             if before.get(key) is not None and after.get(key) is not None]
    size, latency = fallback["size"], fallback["latency"]
    return (f"accuracy budget met on {fallback['eval']['items']} eval item(s): {len(fallback['nodes'])} node(s) fell "
            f"back to float; {', '.join(parts)}; size {size['before_bytes']:,} -> {size['after_bytes']:,} bytes; "
            f"latency {latency['before_vs_fp32']:.2f}x -> {latency['after_vs_fp32']:.2f}x of FP32")


@main.command("compile")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--calib", required=True, help="Folder of .npz/.npy/image files (one sample or batch per file).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output model path (default: MODEL.qdq.onnx beside the input).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Report path (default: OUTPUT with .report.json).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML recipe; flags override it.")
@click.option("--op-types", multiple=True, help="Op types to quantise, comma-separated (default Conv,ConvTranspose,MatMul,Gemm).")
@click.option("--exclude", multiple=True, help="Node names or regexes to keep float (repeatable, comma-separated).")
@click.option("--num-samples", type=int, help="Use at most this many calibration samples.")
@click.option("--batch-size", type=int, help="Calibration batch size.")
@click.option("--image-size", help="Image calibration: resize to N or HxW (default: the model's input size).")
@click.option("--mean", help="Image calibration: per-channel mean after x/255, e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Image calibration: per-channel std after x/255, e.g. 0.229,0.224,0.225.")
@click.option("--layout", type=click.Choice([m.value for m in ImageLayout]), help="Image tensor layout.")
@click.option("--target", type=click.Choice([m.value for m in Target]),
              help="Runtime target (default cpu): cpu (static INT8 ORT's CPU EP fuses), cuda (weight-only INT4 "
                   "MatMulNBits + float16), tensorrt (symmetric INT8 Q/DQ on Conv/MatMul/Gemm inputs).")
@click.option("--calib-provider", type=click.Choice([m.value for m in CalibrationProvider]),
              help="Execution provider calibration runs on (default cpu; cuda needs qcompile[gpu]).")
@click.option("--custom-op-library", type=click.Path(dir_okay=False),
              help="Opt-in: load this ORT custom-op shared library into qcompile's sessions (runs its code).")
@click.option("--method", type=click.Choice([m.value for m in CalibrationMethod]),
              help="Activation calibration method (default minmax).")
@click.option("--percentile", type=float, help="Percentile for --method percentile (e.g. 99.999).")
@click.option("--quantize-classifier", is_flag=True, help="Quantise the final classifier too (float by default).")
@click.option("--fidelity-samples", type=int, help="Calibration items used to measure fidelity vs FP32 (default 8).")
@click.option("--workers", help="Calibrate on Ray tasks, one per shard of --calib: 'ray' (local cluster) or "
                                "ray://HOST:PORT; needs qcompile[distributed].")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@weight_only_options
@accuracy_options
@transformer_options
def compile_command(model: Path, calib: str, output: Path | None, report_path: Path | None, config_path, op_types,
                    exclude, num_samples, batch_size, image_size, mean, std, layout, target, method, percentile,
                    quantize_classifier, fidelity_samples, workers, no_progress, verbose, quiet, debug,
                    weight_only_flags=None, accuracy_flags=None, calib_provider=None,
                    custom_op_library=None, transformer_flags=None) -> None:
    """Quantise MODEL with activation ranges calibrated on --calib data."""
    _configure_logging(verbose, quiet)
    _terminate_like_interrupt()
    try:
        config = build_config(config_path, op_types, exclude, num_samples, batch_size, image_size, mean, std,
                              layout, target, method, percentile, quantize_classifier, fidelity_samples,
                              workers=workers)
        config = apply_weight_only_flags(config, weight_only_flags or {})
        config = apply_accuracy_flags(config, accuracy_flags or {})
        config = apply_runtime_flags(config, calib_provider, custom_op_library)
        config = apply_transformer_flags(config, transformer_flags or {})
        output = output or _default_output(model)
        report_path = report_path or _default_report(output)
        _refuse_overwrite(model, output, report_path)
        from qcompile.api import compile_model
        result = compile_model(model, calib, config, progress=not no_progress and not quiet,
                               eval_data=(accuracy_flags or {}).get("eval_data"))
        out_path, out_report = result.save(output, report_path, protected=(model,))
    except QCompileError as exc:
        _fail(str(exc), EXIT_USER_ERROR)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        _fail(f"{'terminated' if terminated else 'interrupted'}; nothing was written", 143 if terminated else 130)
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            raise
        _fail(f"internal error ({type(exc).__name__}: {_first_line(exc)}); rerun with --debug and report it",
              EXIT_INTERNAL_ERROR)
    summary = result.report.data["summary"]
    fidelity = result.report.fidelity.get("outputs", {})
    fid_text = ", ".join(
        f"{name}: cos {v['cosine_mean']:.4f}" + (f" top1 {v['top1_agreement']:.3f}" if "top1_agreement" in v else "")
        for name, v in fidelity.items())
    if not quiet:
        click.echo(f"wrote {out_path} ({summary['quantized_nodes']} nodes quantised, "
                   f"size {summary['size_ratio']:.2f}x; {fid_text or 'fidelity not measured'})")
        click.echo(f"report {out_report}")
        if result.report.data.get("fallback"):
            click.echo(fallback_summary(result.report.data["fallback"]))


def _run_tool(body, debug: bool):
    """``body()`` for a tool command: QCompileError -> one line + exit 2, a bug -> one line + exit 3 (or raise)."""
    try:
        return body()
    except QCompileError as exc:
        _fail(str(exc), EXIT_USER_ERROR)
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            raise
        _fail(f"internal error ({type(exc).__name__}: {_first_line(exc)}); rerun with --debug and report it",
              EXIT_INTERNAL_ERROR)


@main.command("report")
@click.argument("report_json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write (default: REPORT_JSON with .html).")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def report_command(report_json: Path, output: Path | None, debug: bool) -> None:
    """Render a compile report (model.qdq.report.json) as a self-contained HTML page."""
    _configure_logging(0, False)

    def write() -> Path:
        from qcompile.report.html import default_html_path, load_report, render_html
        from qcompile.io import write_text_atomic
        target = output or default_html_path(report_json)
        if target.resolve() == report_json.resolve():
            raise ModelSaveError("refusing to overwrite the report with its HTML page; choose another -o")
        write_text_atomic(target, render_html(load_report(report_json)), protected=(report_json,))
        return target
    click.echo(f"wrote {_run_tool(write, debug)}")


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML recipe; flags override it.")
@click.option("--op-types", multiple=True, help="Op types to quantise, comma-separated.")
@click.option("--exclude", multiple=True, help="Node names or regexes to keep float (repeatable, comma-separated).")
@click.option("--quantize-classifier", is_flag=True, help="Quantise the final classifier too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def inspect_command(model: Path, config_path, op_types, exclude, quantize_classifier, as_json: bool,
                    debug: bool) -> None:
    """Op histogram of MODEL and what would be quantised with the current config (and why not)."""
    _configure_logging(0, False)

    def inspect() -> str:
        import json
        from qcompile.tools.inspect_model import format_inspection, inspect_model
        config = build_config(config_path, op_types, exclude, None, None, None, None, None, None, None, None, None,
                              quantize_classifier, None)
        result = inspect_model(model, config)
        return json.dumps(result, indent=2) if as_json else format_inspection(result)
    click.echo(_run_tool(inspect, debug))


@main.command("compare")
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, help="Eval data: a folder (like --calib) or an .npz of arrays keyed by input.")
@click.option("--samples", type=click.IntRange(min=1), default=100, show_default=True, help="Eval items to use.")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True, help="Timed runs per round.")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True, help="Interleaved rounds.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="ORT intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def compare_command(reference: Path, candidate: Path, data: str, samples: int, runs: int, rounds: int, threads: int,
                    as_json: bool, debug: bool) -> None:
    """Fidelity and latency of CANDIDATE (e.g. q.onnx) against REFERENCE (e.g. fp32.onnx) on --data."""
    _configure_logging(0, False)

    def compare() -> str:
        import json
        from qcompile.tools.compare_models import compare_models, format_comparison
        result = compare_models(reference, candidate, data, samples=samples, rounds=rounds, runs=runs, threads=threads)
        return json.dumps(result, indent=2) if as_json else format_comparison(result)
    click.echo(_run_tool(compare, debug))


def _default_output(model: Path) -> Path:
    from qcompile.api import default_output_path
    return default_output_path(model)


def _default_report(output: Path) -> Path:
    from qcompile.api import default_report_path
    return default_report_path(output)


def _refuse_overwrite(model: Path, output: Path, report: Path) -> None:
    def same(a: Path, b: Path) -> bool:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    if same(output, model) or same(report, model):
        raise ModelSaveError(f"refusing to overwrite the input model {model}; choose another -o/--output")
    if output.resolve() == report.resolve():
        raise ModelSaveError("the output model and the report must be different files")
    for path in (output, report):  # before the compile, not after minutes of work
        if not path.parent.is_dir():
            raise ModelSaveError(f"cannot write {path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise ModelSaveError(f"cannot write {path}: it is a directory")
        if path.exists() and not path.is_file():
            raise ModelSaveError(f"cannot write {path}: it exists and is not a regular file")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("onnx_graphsurgeon").setLevel(max(level, logging.ERROR))
    from onnx_graphsurgeon.logger import G_LOGGER  # prints to stdout; its errors reach us as exceptions
    G_LOGGER.severity = G_LOGGER.WARNING if verbose >= 2 else G_LOGGER.CRITICAL + 1


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a pipeline's timeout or kill) unwinds like Ctrl-C, so no temporary file is left behind."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _terminate_like_interrupt() -> None:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)
