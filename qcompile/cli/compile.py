"""`qcompile compile MODEL --calib DATA`: flags -> CompileConfig -> compile_model -> the model and its report.

    qcompile model.onnx --calib data/        -> model.qdq.onnx + model.qdq.report.json

Errors are raised, not printed: main.py turns them into one line and an exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qcompile.api import compile_model, default_output_path, default_report_path
from qcompile.cli.build import CompileFlags, build_config
from qcompile.cli.options import (accuracy_options, calibration_options, debug_option, progress_options,
                                  selection_options, target_options, transformer_options, weight_only_options)
from qcompile.errors import ModelSaveError


@click.command("compile")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--calib", required=True, help="Folder of .npz/.npy/image files (one sample or batch per file).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output model path (default: MODEL.qdq.onnx beside the input).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Report path (default: OUTPUT with .report.json).")
@selection_options
@target_options
@calibration_options
@weight_only_options
@accuracy_options
@transformer_options
@progress_options
@debug_option
def compile_command(model: Path, calib: str, output: Path | None, report_path: Path | None, eval_data: str | None,
                    no_progress: bool, verbose: int, quiet: bool, debug: bool, **flags: Any) -> None:
    """Quantise MODEL with activation ranges calibrated on --calib data."""
    config = build_config(CompileFlags(**flags))
    output = output or default_output_path(model)
    report_path = report_path or default_report_path(output)
    refuse_overwrite(model, output, report_path)
    result = compile_model(model, calib, config, progress=not no_progress and not quiet, eval_data=eval_data)
    out_path, out_report = result.save(output, report_path, protected=(model,))
    if quiet:
        return
    summary = result.report.data["summary"]
    fidelity = result.report.fidelity.get("outputs", {})
    fid_text = ", ".join(f"{name}: cos {v['cosine_mean']:.4f}" + _argmax_text(v) for name, v in fidelity.items())
    click.echo(f"wrote {out_path} ({summary['quantized_nodes']} nodes quantised, "
               f"size {summary['size_ratio']:.2f}x; {fid_text or 'fidelity not measured'})")
    click.echo(f"report {out_report}")
    if result.report.data.get("fallback"):
        click.echo(fallback_summary(result.report.data["fallback"]))


def _argmax_text(entry: dict) -> str:
    """Top-1 for logits, per-step top-1 for sequences; nothing for embeddings and other tensors (output_roles)."""
    if "top1_agreement" not in entry:
        return ""
    label = "per-step top1" if entry.get("role") == "sequence" else "top1"
    return f" {label} {entry['top1_agreement']:.3f}"


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


def refuse_overwrite(model: Path, output: Path, report: Path) -> None:
    """Before the compile, not after minutes of work: neither output may be the input, nor each other, nor
    anything but a regular file in an existing folder."""
    def same(a: Path, b: Path) -> bool:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    if same(output, model) or same(report, model):
        raise ModelSaveError(f"refusing to overwrite the input model {model}; choose another -o/--output")
    if output.resolve() == report.resolve():
        raise ModelSaveError("the output model and the report must be different files")
    for path in (output, report):
        if not path.parent.is_dir():
            raise ModelSaveError(f"cannot write {path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise ModelSaveError(f"cannot write {path}: it is a directory")
        if path.exists() and not path.is_file():
            raise ModelSaveError(f"cannot write {path}: it exists and is not a regular file")
