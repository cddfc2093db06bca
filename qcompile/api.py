"""compile_model: FP32 ONNX + calibration data -> quantised ONNX + report. The CLI is a thin layer over this.

    load → check (arguments, input model) → prepare (target defaults, opset: qcompile/preparation.py)
         → calibrate and emit (the pipeline's steps) → analyse (per-layer, accuracy fallback)
         → verify (ORT fusions, fidelity) → report
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import shutil
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import load_external_data_for_model

from qcompile.version import __version__
from qcompile.accuracy.budget import check_budget_arguments
from qcompile.accuracy.classifier import choose_classifier_precision, measures_classifier
from qcompile.accuracy.classifier import float_kernel_by_design as classifier_float_kernel
from qcompile.accuracy.decode import measure_decode
from qcompile.accuracy.fallback import Outcome, analyse_compile
from qcompile.accuracy.fidelity import Metric, measure_fidelity
from qcompile.accuracy.latency_check import latency_check, not_faster, slow_cause
from qcompile.calibrators import distributed
from qcompile.calibrators.collector import collect_statistics
from qcompile.config import CalibrationProvider, CompileConfig
from qcompile.data import CalibrationSource, model_input_specs
from qcompile.data.spool import open_calibration
from qcompile.data.holdout import split_holdout
from qcompile.accuracy.fidelity_items import FidelityItems, fidelity_items, items_wanted
from qcompile.data.kv_cache import detect_kv_cache
from qcompile.data.readers import data_file_paths
from qcompile.accuracy.optimizer_check import DIVERGENCE_TOLERANCE, optimizer_divergence
from qcompile.config.static_formats import static_format
from qcompile.emitter import Emission, Emitter, StatisticsRecorder
from qcompile.errors import ConfigError, ModelSaveError, QCompileError, UnsupportedModelError
from qcompile.io import (EXTERNAL_DATA_THRESHOLD, SERIALISABLE_BYTES, LoadedModel, StagedFiles, load_model,
                         model_size_bytes, save_model, write_text_atomic)
from qcompile.graph.scopes import proto_graphs
from qcompile.io.output_guard import OutputGuard
from qcompile.io.validate import check_model_structure
from qcompile.pass_infra import Collector, NodeStatus, PassContext, run_steps
from qcompile.selection import CLASSIFIER_KEPT_FLOAT
from qcompile.passes.quantize.quantize_recurrent import float_kernel_by_design
from qcompile.pipeline import build_steps
from qcompile.progress import phase, progress_bar
from qcompile.preparation import Preparation, prepare_compile
from qcompile.report.compile_report import REPORT_VERSION, CompileReport, node_entries, pass_entries
from qcompile.runtime_ext.fusion import FusionReport, check_fusion
from qcompile.runtime_ext.matmul_nbits import choose_form
from qcompile.stream_compile import (compile_opened, copy_external_model, new_work_dir, open_for_streaming,
                                     streaming_config_reason)
from qcompile.runtime_ext.session import LARGE_MODEL_BYTES, GraphOptimization, has_cuda, make_session

logger = logging.getLogger(__name__)

ModelSource = str | Path | bytes | onnx.ModelProto
CalibSource = str | Path | Iterable[Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class CompileResult:
    model: onnx.ModelProto
    report: CompileReport
    inputs: OutputGuard = field(default_factory=OutputGuard)   # the files the compile read
    # the streaming weight-only path keeps the weights of a large model in this file (the model's external data)
    external_data: Path | None = None

    def save(self, path: str | Path, report_path: str | Path | None = None, *, overwrite: bool = False,
             protected: Iterable[Path] = ()) -> tuple[Path, Path]:
        """Write the model and its JSON report atomically; nothing is left behind if either write fails.

        Never onto a file the compile read (model, external data, calibration and eval files, ``protected``);
        an existing file only with ``overwrite=True`` (qcompile/io/output_guard.py)."""
        path = Path(path)
        report_path = Path(report_path) if report_path else default_report_path(path)
        guard = OutputGuard(self.inputs.reads, overwrite).reading("protected file", protected)
        guard = guard.reading("input model", _input_paths(self.report))
        guard.check([(path, "output model"), (report_path, "report")])
        protected = guard.protected
        staging = StagedFiles()   # both files (and a data file) are renamed into place together, or none
        try:
            written = copy_external_model(self.model, self.external_data, staging, path.absolute(), protected) \
                if self.external_data is not None else save_model(self.model, path, protected=protected, staging=staging)
            write_text_atomic(report_path, self.report.to_json(), protected=protected + tuple(written),
                              staging=staging)
            staging.commit()
        except OSError as e:   # a rename refused (permissions, a folder removed meanwhile)
            staging.cleanup()
            raise ModelSaveError(f"cannot save {path}: {e.strerror or e}") from e
        except BaseException:
            staging.cleanup()
            raise
        return path, report_path


def _input_paths(report: CompileReport) -> list[Path]:
    path = report.data.get("input", {}).get("path")
    return [Path(path)] if path else []


def default_output_path(model_path: Path) -> Path:
    name = model_path.name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return model_path.with_name(f"{stem}.qdq.onnx")


def default_report_path(output_path: Path) -> Path:
    name = output_path.name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return output_path.with_name(f"{stem}.report.json")


def compile_model(model: ModelSource, calib: CalibSource, config: CompileConfig | None = None, *,
                  progress: bool = False, eval_data: Any = None, metric: Metric | None = None,
                  guard: OutputGuard | None = None, outputs: Sequence[tuple[str | Path, str]] = (),
                  inline_weights: bool = True) -> CompileResult:
    """Quantise ``model`` with ranges calibrated on ``calib`` (a folder or an iterable of feed dicts).

    With ``config.accuracy_budget``, the most sensitive nodes fall back to float until the budget holds on
    ``eval_data`` (folder, .npz file or iterable of feed dicts; default: the first calibration items), and
    ``metric(fp32_outputs, quantised_outputs) -> float`` (lists of {output: array} per eval item, higher is
    better) is bounded by ``accuracy_budget.min_metric`` (see qcompile/accuracy/budget.py).

    ``outputs`` ((path, what) pairs the caller will save to) are checked by the output guard (``guard`` plus
    every file this compile reads) as soon as those files are known, before any work.

    The streaming weight-only path writes the weights to a temporary data file; with ``inline_weights`` they are
    read back into ``result.model`` when they fit protobuf's 2 GB, so the model runs from bytes like any other
    result. ``False`` keeps them in ``result.external_data`` (the CLI: ``save`` copies the file beside the
    output without holding the weights in memory)."""
    config = config or CompileConfig()
    check_arguments(config, eval_data, metric)
    started = time.perf_counter()
    streamed = _compile_streaming(model, calib, config, started, guard or OutputGuard(), outputs, inline_weights)
    if streamed is not None:
        return streamed
    with phase("load and check the model", progress):
        loaded = load_model(model)
        check_input_model(loaded, config.custom_op_library)
    with contextlib.ExitStack() as stack:
        source = open_calibration(calib, loaded.model, config, stack)
        reads = _files_read(guard or OutputGuard(), loaded, source, eval_data)
        reads.check(outputs)
        held_out = None
        if eval_data is None:   # honest fidelity: part of the folder is held out of calibration (holdout.py)
            source, held_out = split_holdout(source, items_wanted(config))
        result = _compile(loaded, source, config, progress, started,
                          eval_data if eval_data is not None else held_out, metric)
        return replace(result, inputs=reads)


def _files_read(guard: OutputGuard, loaded: LoadedModel, source: CalibrationSource, eval_data: Any) -> OutputGuard:
    folder = source.folder_files
    guard = guard.reading("input model", [loaded.path] if loaded.path else [])
    guard = guard.reading("external data file", loaded.external_data_files)
    guard = guard.reading("calibration file", folder.paths if folder is not None else ())
    return guard.reading("eval data file", data_file_paths(eval_data) if isinstance(eval_data, (str, Path)) else ())


def _compile_streaming(model: ModelSource, calib: CalibSource, config: CompileConfig, started: float,
                       guard: OutputGuard, outputs: Sequence[tuple[str | Path, str]],
                       inline_weights: bool) -> CompileResult | None:
    """The weight-only presets' streaming path (qcompile/stream_compile.py); None where the graph pipeline is
    needed (the reason is logged)."""
    reason = streaming_config_reason(config)
    if reason:
        if config.preset.weight_only_bits is not None:
            logger.info("weight-only compile on the graph pipeline: %s", reason)
        return None
    opened = open_for_streaming(model)
    if opened is None:
        return None
    work_dir = new_work_dir()
    with contextlib.ExitStack() as stack:
        source = open_calibration(calib, opened.skeleton, config, stack, runnable=opened.reference)
        folder = source.folder_files
        reads = guard.reading("input model or its external data", opened.lazy.source_files).reading(
            "calibration file", folder.paths if folder is not None else ())
        reads.check(outputs)
        try:
            streamed = compile_opened(opened, source, config, started, work_dir)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
    data_file = streamed.external_data
    if inline_weights and data_file is not None and data_file.stat().st_size <= EXTERNAL_DATA_THRESHOLD:
        load_external_data_for_model(streamed.model, str(work_dir))
        data_file = None
    result = CompileResult(streamed.model, streamed.report, inputs=reads, external_data=data_file)
    if data_file is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    else:
        weakref.finalize(result, shutil.rmtree, work_dir, True)   # the data file lives as long as the result
    return result


def check_arguments(config: CompileConfig, eval_data: Any, metric: Metric | None) -> None:
    """Arguments that cannot work, found before any work: a missing extra or EP is a one-line error."""
    if not isinstance(config, CompileConfig):
        raise ConfigError(f"config must be a CompileConfig, not {type(config).__name__}"
                          + ("; build one with CompileConfig.from_dict(...)" if isinstance(config, Mapping) else ""))
    check_budget_arguments(config, eval_data, metric)
    if config.calibration.workers is not None:
        distributed.require_ray()
    if config.calibration.provider is CalibrationProvider.CUDA and not has_cuda():
        raise ConfigError("--calib-provider cuda needs onnxruntime's CUDA execution provider: "
                          "pip install 'qcompile[gpu]' (onnxruntime-gpu) on a machine with an NVIDIA GPU")
    if config.custom_op_library is not None and not Path(config.custom_op_library).is_file():
        raise ConfigError(f"custom op library {config.custom_op_library} does not exist or is not a file")


def check_input_model(loaded: LoadedModel, custom_op_library: str | None = None) -> None:
    """Reject a malformed input before any work: data flow and onnx.checker (validate.py), then ONNX Runtime
    must be able to load it (types and shapes of every node), since calibration and fidelity run it."""
    name = str(loaded.path) if loaded.path else "<input>"
    serialized = check_model_structure(loaded.model, name, loaded.size_bytes)
    if serialized is None:
        return
    try:
        make_session(serialized, optimization=GraphOptimization.DISABLED, log_severity=4,
                     custom_op_library=custom_op_library)
    except QCompileError as exc:
        detail = str(exc).split(": ", 1)[-1]
        raise UnsupportedModelError(f"onnxruntime cannot load the input model {name}: {detail}") from None


def _compile(loaded: LoadedModel, source: CalibrationSource, config: CompileConfig, progress: bool,
             started: float, eval_data: Any = None, metric: Metric | None = None) -> CompileResult:
    """calibrate → emit → analyse (and fall back) → verify → report, on a checked model and an open source."""
    prepared = prepare_compile(loaded.model, config)      # target defaults, opset
    measure_classifier = measures_classifier(prepared.config)
    with phase("calibrate and emit", progress):
        baseline, recorder, collect = _calibrate_and_emit(prepared, source, progress, reuse=measure_classifier)
    classifier = None
    # only where the selection rule kept a final classifier float: a second emission costs a compile's time
    measure_classifier = measure_classifier and any(
        d.status is NodeStatus.SKIPPED and d.reason == CLASSIFIER_KEPT_FLOAT for d in baseline.ctx.decisions.values())
    if measure_classifier:   # the same compile with the classifier int8, measured against it (accuracy/classifier.py)
        with phase("classifier precision", progress):
            int8 = dataclasses.replace(prepared.config, quantize_classifier=True)
            choice = choose_classifier_precision(
                reference=loaded.model, kept_float=baseline, calibration=source, settings=prepared.config.classifier,
                fused=prepared.profile.cpu_fusion_check,
                int8_emitter=Emitter(prepared.model, int8, prepared.profile, recorder.wrap(collect), _export))
            # the re-emission's passes start afresh: what the first one noted (an opset upgrade) still holds
            choice.emission.ctx.warnings[:0] = [w for w in baseline.ctx.warnings
                                                if w not in choice.emission.ctx.warnings]
            baseline, classifier = choice.emission, choice.report
    with phase("per-layer analysis and fallback", progress and _analyses(config)):
        analysis = analyse_compile(reference=loaded.model, working=prepared.model, profile=prepared.profile,
                                   calibration=source, baseline=baseline, recorder=recorder, collect=collect,
                                   export=_export, eval_data=eval_data, metric=metric)
    final = analysis.emission if analysis is not None else baseline
    with phase("verify (ORT fusions, fidelity, latency)", progress):
        verification = _verify(loaded, final, prepared.profile,
                               fidelity_items(loaded.model, source, eval_data, config))
    return CompileResult(model=final.model, report=_report(loaded, source, prepared, final, verification,
                                                           analysis, time.perf_counter() - started, classifier))


def _analyses(config: CompileConfig) -> bool:
    return config.accuracy_budget is not None or config.analysis.layers.value != "none"


def _calibrate_and_emit(prepared: Preparation, source: CalibrationSource, progress: bool,
                        reuse: bool = False) -> tuple[Emission, StatisticsRecorder, Collector]:
    """The pipeline's steps on the prepared model, statistics gathered on ``source`` (or Ray workers)."""
    config = prepared.config
    try:
        graph = gs.import_onnx(prepared.model).toposort()  # valid graphs may list nodes out of order
    except Exception as exc:  # malformed attributes or tensors the checks above did not see (models > 2 GiB)
        raise UnsupportedModelError(f"cannot import the model graph: {type(exc).__name__}: {exc}") from exc
    ctx = PassContext(config=config, target=prepared.profile)
    if prepared.opset_note:
        ctx.warnings.append(prepared.opset_note)

    steps = build_steps(config)
    recorder = StatisticsRecorder(reuse=reuse or config.accuracy_budget is not None)
    memory_budget_bytes = config.calibration.memory_budget_mb << 20
    with progress_bar(len(steps), "compile", progress, "step") as bar, \
            distributed.connect(config.calibration.workers) as cluster:
        def collect(g: gs.Graph, requests):
            with progress_bar(source.num_samples, "calibrate", progress, "sample") as calib_bar:
                if cluster is not None:  # shards on Ray workers, merged here
                    return distributed.collect_distributed(g, requests, source, cluster, progress=calib_bar,
                                                           memory_budget_bytes=memory_budget_bytes)
                return collect_statistics(g, requests, source, progress=calib_bar,
                                          memory_budget_bytes=memory_budget_bytes,
                                          providers=config.calibration.provider.ort_providers,
                                          custom_op_library=config.custom_op_library,
                                          sample_time_limit_s=config.calibration.sample_time_limit_s)

        records = run_steps(graph, steps, ctx, recorder.wrap(collect),
                            on_step=(lambda _s: bar.update(1)) if bar else None)
    baseline = Emission(_export(graph, prepared.model), ctx, tuple(records), config, ())
    return baseline, recorder, collect


@dataclass(frozen=True)
class Verification:
    """What the emitted model does in ORT: the quantised nodes, the CPU EP's fusions, fidelity vs FP32."""

    quantized: tuple[str, ...]
    fusion: FusionReport | None
    fidelity: Mapping[str, Any]
    latency: Mapping[str, Any]


def _verify(loaded: LoadedModel, emission: Emission, profile, evaluation: FidelityItems) -> Verification:
    """Warn about what stayed float, check ORT's fusions, and measure fidelity on held-out items if there are."""
    ctx, config = emission.ctx, emission.config
    quantized_names = [n for n, d in ctx.decisions.items() if d.status is NodeStatus.QUANTIZED]
    if not quantized_names:
        skipped = [d for d in ctx.decisions.values() if d.status is NodeStatus.SKIPPED]
        _warn(ctx, "no node was quantised: " + (
            f"{len(skipped)} compute node(s) skipped (e.g. {skipped[0].name}: {skipped[0].reason}), see "
            "nodes[].reason" if skipped
            else "the graph has no Conv/ConvTranspose/MatMul/Gemm/LSTM/GRU/RNN with a constant weight"))
    # the CPU EP's fusions say nothing about TensorRT; a model needing a custom-op library is not checked
    # a recurrent node with DequantizeLinear weights runs its float kernel by design: nothing to fuse
    integer_names = [n for n in quantized_names if not float_kernel_by_design(ctx.decisions[n])
                     and not classifier_float_kernel(ctx.decisions[n])]
    fusion = check_fusion(emission.model, integer_names) \
        if integer_names and profile.cpu_fusion_check and config.custom_op_library is None else None
    if fusion is not None and fusion.unfused:
        _warn(ctx, f"{len(fusion.unfused)} quantised node(s) stayed float in ORT: {list(fusion.unfused)[:5]}")
    for pair in (fusion.unfused_qdq_pairs if fusion is not None else ()):
        _warn(ctx, f"Q/DQ pair left unfused by ORT (slower than FP32): {pair}")
    if static_format(config.preset) is not None:   # no fused kernel: ORT must compute the graph as written
        _check_optimizer(ctx, emission.model, evaluation.items, config.custom_op_library)
    # a model over 2 GB is read by ORT from its own files rather than copied from memory once more
    large_on_disk = loaded.path is not None and loaded.size_bytes > LARGE_MODEL_BYTES
    reference = Path(loaded.path) if large_on_disk else loaded.model
    fidelity = measure_fidelity(reference, emission.model, evaluation.items, config.fidelity_samples,
                                custom_op_library=config.custom_op_library,
                                sample_time_limit_s=config.calibration.sample_time_limit_s,
                                fused=profile.cpu_fusion_check)
    if fidelity.get("items"):
        fidelity = {**fidelity, "source": evaluation.source, "held_out": evaluation.held_out}
    layout = detect_kv_cache(loaded.model)
    if layout is not None and config.fidelity_samples:   # teacher-forced logits are not enough for a decoder
        fidelity = {**fidelity, "decode": measure_decode(reference, emission.model, layout, evaluation.items,
                                                         custom_op_library=config.custom_op_library)}
    latency = _check_latency(loaded, emission, profile, evaluation, fusion) if config.latency_check else \
        {"skipped": "latency_check is off"}
    return Verification(tuple(quantized_names), fusion, fidelity, latency)


def _check_latency(loaded: LoadedModel, emission: Emission, profile, evaluation: FidelityItems,
                   fusion: FusionReport | None) -> dict[str, Any]:
    feed = next(iter(evaluation.items), None)
    latency = latency_check(loaded.model, emission.model, feed, custom_op_library=emission.config.custom_op_library,
                            cpu_target=profile.providers[0] == "CPUExecutionProvider" and not profile.float16)
    if not_faster(latency):
        cause = slow_cause(len(fusion.unfused) if fusion else 0, len(fusion.unfused_qdq_pairs) if fusion else 0,
                           profile.cpu)
        _warn(emission.ctx, f"the quantised model is not faster than FP32 ({latency['ratio']:.2f}x its latency, "
                            f"batch {latency['batch']}, 1 thread); likely cause: {cause}")
    return latency


def _check_optimizer(ctx: PassContext, model: onnx.ModelProto, source: Iterable,
                     custom_op_library: str | None) -> None:
    """Warn where ORT's graph optimiser changes the outputs (qcompile/accuracy/optimizer_check.py)."""
    divergence, problem = optimizer_divergence(model, source, custom_op_library=custom_op_library)
    if problem:
        _warn(ctx, f"could not compare ORT's optimised and unoptimised runs: {problem}")
    elif divergence is not None and divergence > DIVERGENCE_TOLERANCE:
        _warn(ctx, f"ORT's graph optimiser changes this model's outputs by {divergence:.3g} (relative L2): "
                   "the model as written and ORT_ENABLE_ALL disagree")


def _warn(ctx: PassContext, message: str) -> None:
    logger.warning(message)
    ctx.warnings.append(message)


def _report(loaded: LoadedModel, source: CalibrationSource, prepared: Preparation, final: Emission,
            verification: Verification, analysis: Outcome | None, seconds: float,
            classifier: Mapping[str, Any] | None = None) -> CompileReport:
    ctx, config, fusion = final.ctx, final.config, verification.fusion
    output_bytes = model_size_bytes(final.model)
    return CompileReport({
        "report_version": REPORT_VERSION,
        "qcompile_version": __version__,
        "input": _describe_input(loaded, source),
        "config": config.to_json(),
        "target": {**prepared.profile.describe(), **_weight_only_form(config), "note": prepared.target_note},
        "summary": {
            "quantized_nodes": len(verification.quantized),
            "skipped_compute_nodes": sum(1 for d in ctx.decisions.values() if d.status is NodeStatus.SKIPPED),
            "unfused_nodes": len(fusion.unfused) if fusion else 0,
            "input_bytes": loaded.size_bytes,
            "output_bytes": output_bytes,
            "size_ratio": output_bytes / max(loaded.size_bytes, 1),
            "compile_seconds": seconds,
        },
        "fidelity": verification.fidelity,
        "latency": verification.latency,
        "nodes": node_entries(ctx.decisions, dict(fusion.node_kernels) if fusion else {},
                              fusion.unfused if fusion else ()),
        "tensor_ranges": ctx.tensor_ranges,
        "ort": fusion.as_json() if fusion else None,
        "passes": pass_entries(analysis.records if analysis is not None else final.records),
        "warnings": list(ctx.warnings),
        "layers": analysis.layers if analysis else None,
        "fallback": analysis.fallback if analysis else None,
        "classifier": classifier,
    })


def _weight_only_form(config: CompileConfig) -> dict[str, Any]:
    """The weight-only form the target picked and why (runtime_ext/matmul_nbits.choose_form), for the report."""
    if config.preset.weight_only_bits is None:
        return {}
    choice = choose_form(config.target, config.weight_only)
    return {"weight_only_form": choice.form.value, "weight_only_accuracy_level": choice.accuracy_level,
            "weight_only_form_reason": choice.reason}


def _export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    # intermediate shapes are an annotation ORT recomputes; they cost bytes on small models
    del model.graph.value_info[:]
    model.ir_version = original.ir_version
    model.producer_name = "qcompile"
    model.producer_version = __version__
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    if any(n.domain == "com.microsoft" for g in proto_graphs(model.graph) for n in g.node) and \
            not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.add(domain="com.microsoft", version=1)   # contrib ops (MatMulNBits, ...)
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    if model_size_bytes(model) <= SERIALISABLE_BYTES:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise UnsupportedModelError(f"the quantised model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return model


def _describe_input(loaded: LoadedModel, source: CalibrationSource) -> dict[str, Any]:
    model = loaded.model
    digest = hashlib.sha256(model.SerializeToString()).hexdigest() if loaded.size_bytes <= SERIALISABLE_BYTES else None
    return {
        "path": str(loaded.path) if loaded.path else None,
        "bytes": loaded.size_bytes,
        "sha256": digest,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "nodes": len(model.graph.node),
        "inputs": [{"name": s.name, "dtype": str(s.dtype), "shape": list(s.shape) if s.shape is not None else None}
                   for s in model_input_specs(model)],
        "calibration": {"source": source.description, "samples": source.num_samples},
    }
