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
from qcompile.cli.guard import compile_guard
from qcompile.errors import ConfigError, ModelSaveError
from qcompile.progress import phase, show_phases


@click.command("compile")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--calib", required=True, help="Folder of .npz/.npy/image files (one sample or batch per file).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output model path (default: MODEL.qdq.onnx beside the input).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Report path (default: OUTPUT with .report.json).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output model or report (never an input).")
@selection_options
@target_options
@calibration_options
@weight_only_options
@accuracy_options
@transformer_options
@progress_options
@debug_option
def compile_command(model: Path, calib: str, output: Path | None, report_path: Path | None, overwrite: bool,
                    eval_data: str | None, no_progress: bool, verbose: int, quiet: bool, debug: bool,
                    **flags: Any) -> None:
    """Quantise MODEL with activation ranges calibrated on --calib data."""
    show_phases(not no_progress and not quiet)   # without a terminal, a line on stdout per phase (progress.py)
    if not calib.strip():
        raise ConfigError("--calib is empty; name the folder of calibration files")
    config = build_config(CompileFlags(**flags))
    output = output or default_output_path(model)
    report_path = report_path or default_report_path(output)
    check_output_paths(output, report_path)
    guard = compile_guard(model, calib, flags.get("config_path"), eval_data, overwrite)
    outputs = [(output, "output model"), (report_path, "report")]
    guard.check(outputs)
    result = compile_model(model, calib, config, progress=not no_progress and not quiet, eval_data=eval_data,
                           guard=guard, outputs=outputs, inline_weights=False)
    with phase("save", not no_progress and not quiet):
        out_path, out_report = result.save(output, report_path, overwrite=overwrite, protected=guard.protected)
    if quiet:
        return
    summary = result.report.data["summary"]
    fid_text = fidelity_summary(result.report.fidelity)
    click.echo(f"wrote {out_path} ({summary['quantized_nodes']} nodes quantised, "
               f"size {summary['size_ratio']:.2f}x; {fid_text or 'fidelity not measured'})")
    click.echo(f"report {out_report}")
    if result.report.data.get("fallback"):
        click.echo(fallback_summary(result.report.data["fallback"]))


def fidelity_summary(fidelity: dict) -> str:
    """``y: cos 0.9903 (worst 0.8180) top1 0.958 on 24 held-out items`` (or "... calibration items, not held
    out"), then a KV-cache decoder's greedy-decode check."""
    outputs = fidelity.get("outputs") or {}
    decode = fidelity.get("decode")
    if decode:   # a KV-cache decoder: its cache outputs are inputs of the next step, the decode check covers them
        outputs = {name: v for name, v in outputs.items() if not name.startswith("present")}
    if not outputs:
        return ""
    text = ", ".join(f"{name}: {task_fidelity_text(v)}" for name, v in outputs.items())
    items = fidelity.get("items", 0)
    noun = "item" if items == 1 else "items"
    kind = f"held-out {noun}" if fidelity.get("held_out") else f"calibration {noun}, not held out"
    text += f" on {items} {kind}"
    if decode and decode.get("prompts"):
        text += (f"; greedy decode vs FP32: first token {decode['first_token']:.2f}, "
                 f"matching prefix {decode['matching_prefix']:.2f} of {decode['new_tokens']}")
    return text


def task_fidelity_text(entry: dict) -> str:
    """Cosine, then what the output's role reads (accuracy/output_roles.py): top-1, sequences, detections."""
    text = f"cos {entry['cosine_mean']:.4f}" + (f" (worst {entry['cosine_min']:.4f})" if "cosine_min" in entry
                                                 else "")
    if "sequence_agreement" in entry:
        return text + f" steps {entry['top1_agreement']:.3f} sequences {entry['sequence_agreement']:.3f}"
    if "candidate_agreement" in entry:
        boxes = f", box error {entry['box_relative_error']:.3f}" if "box_relative_error" in entry else ""
        return text + (f" detections {entry['candidate_agreement']:.3f} (score error "
                       f"{entry['score_abs_error']:.3f}{boxes})")
    if "top1_agreement" in entry:
        return text + f" top1 {entry['top1_agreement']:.3f}"
    return text


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


def check_output_paths(output: Path, report: Path) -> None:
    """Before the compile, not after minutes of work: each output is a regular file in an existing folder (what
    it may not alias is the output guard's rule, qcompile/io/output_guard.py)."""
    for path in (output, report):
        if not path.parent.is_dir():
            raise ModelSaveError(f"cannot write {path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise ModelSaveError(f"cannot write {path}: it is a directory")
        if path.exists() and not path.is_file():
            raise ModelSaveError(f"cannot write {path}: it exists and is not a regular file")
