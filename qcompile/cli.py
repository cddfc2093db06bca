"""The command line: flags build a CompileConfig and call the API; QCompileError becomes one line + exit 2.

    qcompile model.onnx --calib data/        -> model.qdq.onnx + model.qdq.report.json
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import click

from qcompile import __version__
from qcompile.config import (CalibrationMethod, CompileConfig, ImageLayout, ImageOptions, Target, from_toml)
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
                 layout, target, method, percentile, quantize_classifier, fidelity_samples) -> CompileConfig:
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
    changes["calibration"] = calibration
    return dataclasses.replace(config, **changes)


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
@click.option("--target", type=click.Choice([m.value for m in Target]), help="Runtime target (default cpu).")
@click.option("--method", type=click.Choice([m.value for m in CalibrationMethod]),
              help="Activation calibration method (default minmax).")
@click.option("--percentile", type=float, help="Percentile for --method percentile (e.g. 99.999).")
@click.option("--quantize-classifier", is_flag=True, help="Quantise the final classifier too (float by default).")
@click.option("--fidelity-samples", type=int, help="Calibration items used to measure fidelity vs FP32 (default 8).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def compile_command(model: Path, calib: str, output: Path | None, report_path: Path | None, config_path, op_types,
                    exclude, num_samples, batch_size, image_size, mean, std, layout, target, method, percentile,
                    quantize_classifier, fidelity_samples, no_progress, verbose, quiet, debug) -> None:
    """Quantise MODEL with activation ranges calibrated on --calib data."""
    _configure_logging(verbose, quiet)
    try:
        config = build_config(config_path, op_types, exclude, num_samples, batch_size, image_size, mean, std,
                              layout, target, method, percentile, quantize_classifier, fidelity_samples)
        output = output or _default_output(model)
        report_path = report_path or _default_report(output)
        _refuse_overwrite(model, output, report_path)
        from qcompile.api import compile_model
        result = compile_model(model, calib, config, progress=not no_progress and not quiet)
        out_path, out_report = result.save(output, report_path, protected=(model,))
    except QCompileError as exc:
        _fail(str(exc), EXIT_USER_ERROR)
    except KeyboardInterrupt:
        _fail("interrupted; nothing was written", 130)
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
